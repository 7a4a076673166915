"""Output tables written by hand (no model): known rows for the query, render and plan tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.tables import layout
from pipeline.tables.reader import known_tables
from pipeline.tables.schemas import to_table

RUN_ID = "20260101T000000Z-handmade"
PROV: dict[str, Any] = {
    "run_id": RUN_ID,
    "model_id": "handmade",
    "prompt": "p",
    "decoding": "greedy",
    "max_new_tokens": 16,
    "sampling_mode": "native",
    "num_frames": 8,
    "max_fps": 2.0,
}


def video_row(video_id: str, uri: str, *, status: str = "ok", duration: float = 3.0, width: int = 160,
              height: int = 96, rotation: int = 0, error_summary: str | None = None, windows: int = 1,
              processed_at: datetime | None = None) -> dict[str, Any]:
    return {
        "video_id": video_id, "uri": uri, "size_bytes": 1000, "duration_s": duration, "fps": 10.0,
        "width": width, "height": height, "codec": "h264", "rotation": rotation, "windows": windows,
        "status": status, "error_summary": error_summary, "decoder": "pyav", "tasks": "caption",
        "run_id": RUN_ID, "model_id": "handmade",
        "processed_at": processed_at or datetime(2026, 1, 1, tzinfo=UTC),
    }


def track_row(video_id: str, query: str, track_id: int, t: float, x: float, y: float, width: int, height: int) -> dict[str, Any]:
    return {
        "video_id": video_id, "query": query, "track_id": track_id, "window_index": 0, "local_id": track_id,
        "t": t, "x_px": x, "y_px": y, "x_norm": x / width, "y_norm": y / height, "frame_matched": True,
        "parse_status": "ok", **PROV,
    }


def point_row(video_id: str, query: str, obj: int, t: float, x: float, y: float, width: int, height: int) -> dict[str, Any]:
    return {
        "video_id": video_id, "window_index": 0, "t_start": 0.0, "t_end": 3.0, "task": "point", "query": query,
        "object_index": obj, "t": t, "x_px": x, "y_px": y, "x_norm": x / width, "y_norm": y / height,
        "frame_t": t, "frame_dt": 0.0, "frame_matched": True, "parse_status": "ok", **PROV,
    }


def caption_row(video_id: str, window: int, text: str, t_start: float = 0.0, t_end: float = 3.0) -> dict[str, Any]:
    return {
        "video_id": video_id, "window_index": window, "t_start": t_start, "t_end": t_end, "caption": text,
        "truncated": False, "frames_used": 6, "prompt_tokens": 100, "generated_tokens": 10, "latency_s": 0.1,
        **PROV,
    }


def error_row(video_id: str, uri: str, stage: str, etype: str, message: str, window: int | None = None) -> dict[str, Any]:
    return {"video_id": video_id, "uri": uri, "window_index": window, "task": None, "stage": stage,
            "error_type": etype, "message": message, "run_id": RUN_ID}


def write_tables(out: Path, tables: dict[str, list[dict[str, Any]]], *, key: str = "a" * 24,
                 run_date: str = "2026-01-01", commit: bool = True, commit_table: str = "videos") -> None:
    """Write one part (same key in every table, the commit table last) like `TableSink.flush`."""
    names = [t for t in tables if t != commit_table] + ([commit_table] if commit and commit_table in tables else [])
    schemas = known_tables()  # the pipeline's tables and the registered jobs' (e.g. retail_hourly)
    for name in names:
        folder = Path(layout.table_folder(str(out), name, run_date))
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(name, tables[name], schema=schemas[name]), folder / layout.part_name(key))
