"""Collect: gather a video's window answers and turn them into table rows (pure: no Ray, no torch).

Rows leave the model stage in any order and interleaved across videos. `VideoCollector` holds each
video's rows until every window (x every task) has arrived, then `video_tables` parses the answers,
converts points to source pixels and absolute seconds, stitches tracks across overlapping windows,
and returns the rows of every table for that video. A video is therefore written whole or not at all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.results.grounding import absolute_time, match_frame_time, normalized, to_pixels
from pipeline.results.parse import ParsedAnswer, parse_answer
from pipeline.results.stitch import WindowTrackPoint, stitch_tracks
from pipeline.results.tasks import Task


@dataclass(frozen=True)
class RowContext:
    """Run-level values written on every row."""

    run_id: str
    model_id: str
    max_new_tokens: int
    sampling_mode: str
    num_frames: int
    max_fps: float
    stitch_max_distance: float = 0.1
    frame_match_tolerance: float | None = None  # default: half the sampling interval (1 / (2 max_fps))
    work_keys: Mapping[str, str] = field(default_factory=dict)  # task name -> its work key this run

    def provenance(self, prompt: str | None, task: Task | None = None) -> dict[str, Any]:
        """What a row records about how it was made; a task with its own sampling records that."""
        return {
            "run_id": self.run_id,
            "model_id": self.model_id,
            "prompt": prompt,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "sampling_mode": self.sampling_mode,
            "num_frames": (task.num_frames if task else None) or self.num_frames,
            "max_fps": self.rate(task),
            "work_key": self.work_keys.get(task.name) if task else None,
        }

    def rate(self, task: Task | None) -> float:
        """The sampling rate of `task`'s frames (its own, else the run's)."""
        return (task.max_fps if task else None) or self.max_fps


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """Undo columnar batching artefacts: Ray Data turns None into NaN in numeric columns that mix
    missing and present values, and hands numpy scalars/arrays; rows here are plain Python."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


@dataclass
class _Pending:
    rows: list[dict[str, Any]] = field(default_factory=list)
    error_row: dict[str, Any] | None = None
    windows_seen: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    expected_windows: int | None = None
    num_tasks: int = 0  # tasks asked of this video (0: all of the run's)


class VideoCollector:
    """Accumulates model-stage rows per video; `add` returns a video's rows once it is complete."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self._pending: dict[str, _Pending] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        row = clean_row(row)
        vid = row["video_id"]
        p = self._pending.setdefault(vid, _Pending())
        if int(row["window_index"]) < 0:
            p.error_row = row
            p.expected_windows = int(row["num_windows"])  # windows emitted before decoding failed
        else:
            p.rows.append(row)
            p.windows_seen[int(row["window_index"])] += 1
            if p.error_row is None:
                p.expected_windows = int(row["num_windows"])
        # A video asked only its missing tasks (a rerun with a new task) carries their indexes.
        if row.get("task_ids"):
            p.num_tasks = len(row["task_ids"])
        needed = p.num_tasks or self.num_tasks
        complete_windows = sum(1 for n in p.windows_seen.values() if n >= needed)
        # Without an error row, the window count on window rows is final; with one, it is the number
        # of windows emitted before the failure.
        if (
            p.expected_windows is not None
            and complete_windows >= p.expected_windows
            and (p.error_row is not None or p.expected_windows > 0)
        ):
            del self._pending[vid]
            out = sorted(p.rows, key=lambda r: (int(r["window_index"]), str(r.get("task")), str(r.get("query"))))
            return out + ([p.error_row] if p.error_row is not None else [])
        return None

    def drain(self) -> dict[str, list[dict[str, Any]]]:
        """Whatever is left (only after the stream ended early): incomplete videos, not to be written."""
        left = {vid: p.rows for vid, p in self._pending.items()}
        self._pending.clear()
        return left


def _tokens(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "frames_used": row.get("frames_used"),
        "prompt_tokens": row.get("prompt_tokens"),
        "generated_tokens": row.get("generated_tokens"),
        "latency_s": row.get("latency_s"),
    }


def _window(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "video_id": row["video_id"],
        "window_index": int(row["window_index"]),
        "t_start": float(row["t_start"]),
        "t_end": float(row["t_end"]),
    }


def _error(row: dict[str, Any], ctx: RowContext, *, stage: str, etype: str, message: str | None, window: int | None, task: str | None) -> dict[str, Any]:
    return {
        "video_id": row["video_id"],
        "uri": row.get("uri"),
        "window_index": window,
        "task": task,
        "stage": stage,
        "error_type": etype,
        "message": message,
        "run_id": ctx.run_id,
    }


def object_keys(object_ids: Sequence[int | None]) -> list[int]:
    """The one rule for "distinct objects" within one answer: the object each point belongs to.

    Points that share an ID are one object (the model follows an object across frames by its ID); a
    point without an ID (the model wrote ``X Y`` pairs) is an object of its own, since nothing says it
    is the same as any other point. Such points get keys -1, -2, ..., which no written ID can equal
    (IDs are unsigned). Counts, video_counts and tracks all go through this function.

    Args:
        object_ids: each point's ID as parsed (``None`` when the model wrote none), in answer order.

    Returns:
        One key per point, in the same order; the number of distinct keys is the number of objects.
    """
    keys: list[int] = []
    next_anonymous = -1
    for object_id in object_ids:
        if object_id is None:
            keys.append(next_anonymous)
            next_anonymous -= 1
        else:
            keys.append(int(object_id))
    return keys


def count_objects(object_ids: Sequence[int | None]) -> int:
    """How many distinct objects one answer's points show (see :func:`object_keys`)."""
    return len(set(object_keys(object_ids)))


@dataclass(frozen=True)
class _Grounded:
    """A `points` row of one answer and the object it belongs to within that answer (`object_keys`)."""

    row: dict[str, Any]
    object_key: int


def _point_rows(
    row: dict[str, Any], parsed: ParsedAnswer, ctx: RowContext, task_kind: str, task: Task | None = None
) -> list[_Grounded]:
    width, height = int(row.get("width") or 0), int(row.get("height") or 0)
    frame_times = [float(t) for t in (row.get("frame_times") or [])]
    tolerance = ctx.frame_match_tolerance if ctx.frame_match_tolerance is not None else 0.5 / ctx.rate(task)
    keys = object_keys([pt.object_id for pt in parsed.points])
    out = []
    for pt, key in zip(parsed.points, keys, strict=True):
        t_abs = absolute_time(float(row["t_start"]), pt.t)
        x_px, y_px = to_pixels(pt.x, pt.y, width, height)
        x_norm, y_norm = normalized(pt.x, pt.y)
        match = match_frame_time(t_abs, frame_times, tolerance=tolerance)
        point = {
            **_window(row),
            "task": task_kind,
            "query": row.get("query") or "",
            "object_index": pt.object_id,
            "t": t_abs,
            "x_px": x_px,
            "y_px": y_px,
            "x_norm": x_norm,
            "y_norm": y_norm,
            "frame_t": match.frame_time,
            "frame_dt": match.distance,
            "frame_matched": match.matched,
            "parse_status": parsed.status,
            **ctx.provenance(row.get("prompt"), task),
        }
        out.append(_Grounded(point, key))
    return out


def _distinct_objects(
    points: list[_Grounded], window_count: int, ctx: RowContext
) -> tuple[int, dict[tuple[int, int], int]]:
    """Objects across a video's windows: each window's objects (`object_keys`), joined across overlapping
    windows by stitching; return (count, (window, object key) -> video-wide id)."""
    track_points = [
        WindowTrackPoint(g.row["window_index"], g.object_key, g.row["t"], g.row["x_norm"], g.row["y_norm"])
        for g in points
    ]
    if not track_points:
        return 0, {}
    if window_count <= 1:
        ids = sorted({(tp.window, tp.local_id) for tp in track_points})
        return len(ids), {k: i for i, k in enumerate(ids)}
    result = stitch_tracks(track_points, max_distance=ctx.stitch_max_distance)
    return result.num_objects, dict(result.global_ids)


TASK_TABLES: dict[str, tuple[str, ...]] = {
    "caption": ("captions",),
    "count": ("counts", "points", "video_counts"),
    "point": ("points",),
    "track": ("tracks", "video_counts"),
    "ask": ("answers", "points"),
}


def tables_for_tasks(tasks: Sequence[Task]) -> list[str]:
    """The tables a run with these tasks writes (always videos and errors)."""
    names = {"videos", "errors"}
    for t in tasks:
        names.update(TASK_TABLES[t.kind])
    return sorted(names)


def video_tables(rows: Sequence[dict[str, Any]], tasks: Sequence[Task], ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """All table rows for one complete video (its window rows, plus its decode error row if any)."""
    tables: dict[str, list[dict[str, Any]]] = defaultdict(list)
    first = rows[0]
    error_row = next((r for r in rows if int(r["window_index"]) < 0), None)
    window_rows = [r for r in rows if int(r["window_index"]) >= 0]
    problems: list[str] = []

    if error_row is not None:
        stage = error_row.get("error_stage") or "decode"
        tables["errors"].append(
            _error(error_row, ctx, stage=stage, etype=error_row.get("error_type") or "Error",
                   message=error_row.get("error_message"), window=None, task=None)
        )
        problems.append(f"{stage}: {error_row.get('error_type')}: {error_row.get('error_message')}")

    task_of: dict[tuple[str, str], Task] = {(t.kind, t.query): t for t in tasks}
    partial_windows = set()
    failed_answers = 0
    grounded: dict[tuple[str, str], list[_Grounded]] = defaultdict(list)
    window_counts: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for r in window_rows:
        w = int(r["window_index"])
        if r.get("decode_status") == "partial" and w not in partial_windows:
            partial_windows.add(w)
            tables["errors"].append(
                _error(r, ctx, stage="decode", etype=r.get("error_type") or "PartialDecode",
                       message=r.get("error_message"), window=w, task=None)
            )
            problems.append(f"decode: window {w}: {r.get('error_message')}")
        kind, query = r.get("task"), r.get("query") or ""
        if r.get("infer_error_type"):
            failed_answers += 1
            name = kind if kind == "caption" else f"{kind}:{query}"
            tables["errors"].append(
                _error(r, ctx, stage="infer", etype=r["infer_error_type"], message=r.get("infer_error_message"), window=w, task=name)
            )
            problems.append(f"infer: window {w} {name}: {r['infer_error_type']}")
            continue
        answer = r.get("answer") or ""
        truncated = bool(r.get("hit_max_new_tokens"))
        task = task_of.get((str(kind), query))
        prov = ctx.provenance(r.get("prompt"), task)
        if kind == "caption":
            tables["captions"].append({**_window(r), "caption": answer, "truncated": truncated, **_tokens(r), **prov})
            continue
        parsed = parse_answer(answer, hit_max_new_tokens=truncated)
        if kind == "count":
            if parsed.points:
                count, method = count_objects([p.object_id for p in parsed.points]), "points"
            elif parsed.number is not None:
                count, method = parsed.number, "text_number"
            else:
                count, method = None, "none"
            tables["counts"].append(
                {**_window(r), "query": query, "count": count, "count_method": method, "parse_status": parsed.status,
                 "answer": answer, "unparsed": parsed.unparsed, **_tokens(r), **prov}
            )
            if count is not None:
                window_counts[("count", query)][w] = count
            pts = _point_rows(r, parsed, ctx, "count", task)
            tables["points"].extend(g.row for g in pts)
            if pts:  # only points are stitched: a video none of whose windows pointed has nothing to count
                grounded[("count", query)].extend(pts)
        elif kind == "point":
            tables["points"].extend(g.row for g in _point_rows(r, parsed, ctx, "point", task))
        elif kind == "ask":
            pts = _point_rows(r, parsed, ctx, "ask", task)
            tables["points"].extend(g.row for g in pts)
            tables["answers"].append(
                {**_window(r), "question": query, "answer": answer, "num_points": len(pts),
                 "parse_status": parsed.status, "truncated": truncated, **_tokens(r), **prov}
            )
        elif kind == "track":
            pts = _point_rows(r, parsed, ctx, "track", task)
            if pts:
                grounded[("track", query)].extend(pts)
            window_counts[("track", query)][w] = len({g.object_key for g in pts})

    num_windows = len({int(r["window_index"]) for r in window_rows})
    for (kind, query), pts in sorted(grounded.items()):
        distinct: int | None
        distinct, ids = _distinct_objects(pts, num_windows, ctx)
        if kind == "count" and num_windows > 1:
            # A count answer points each object once, at a frame of its own choosing: one person is pointed
            # at different times in two overlapping windows, so its points cannot be joined. Across windows
            # only tracks say which objects are the same (`track:`); max_window_count is the lower bound.
            distinct = None
        if kind == "track":
            for g in pts:
                p = g.row
                tables["tracks"].append(
                    {"video_id": p["video_id"], "query": query, "track_id": ids[(p["window_index"], g.object_key)],
                     "window_index": p["window_index"], "local_id": p["object_index"], "t": p["t"],
                     "x_px": p["x_px"], "y_px": p["y_px"], "x_norm": p["x_norm"], "y_norm": p["y_norm"],
                     "frame_matched": p["frame_matched"], "parse_status": p["parse_status"],
                     **ctx.provenance(p["prompt"], task_of.get((kind, query)))}
                )
        prompt = next((t.prompt for t in tasks if t.kind == kind and t.query == query), None)
        counts = window_counts.get((kind, query), {})
        tables["video_counts"].append(
            {"video_id": first["video_id"], "query": query, "task": kind, "distinct_objects": distinct,
             "max_window_count": max(counts.values()) if counts else None, "windows": num_windows,
             **ctx.provenance(prompt, task_of.get((kind, query)))}
        )
    # Counting tasks whose answers had no points still get a per-video row: distinct_objects is null (no
    # point to stitch; a count stated in words shows in max_window_count), not 0 objects.
    for t in tasks:
        if t.kind in ("count", "track") and (t.kind, t.query) not in grounded and window_rows:
            counts = window_counts.get((t.kind, t.query), {})
            tables["video_counts"].append(
                {"video_id": first["video_id"], "query": t.query, "task": t.kind, "distinct_objects": None,
                 "max_window_count": max(counts.values()) if counts else None, "windows": num_windows,
                 **ctx.provenance(t.prompt, t)}
            )

    expected_answers = num_windows * len(tasks)
    if not window_rows or (expected_answers and failed_answers == expected_answers):
        status = "failed"
    elif error_row is not None or partial_windows or failed_answers:
        status = "partial"
    else:
        status = "ok"
    src = window_rows[0] if window_rows else first
    decoders = sorted({str(r.get("decoder")) for r in window_rows if r.get("decoder")})
    tables["videos"].append(
        {
            "video_id": first["video_id"],
            "uri": first["uri"],
            "size_bytes": first.get("size_bytes"),
            "duration_s": src.get("duration_s"),
            "fps": src.get("fps"),
            "width": src.get("width"),
            "height": src.get("height"),
            "codec": src.get("codec"),
            "rotation": src.get("rotation"),
            "windows": num_windows,
            "status": status,
            "error_summary": "; ".join(problems)[:2000] or None,
            "decoder": ",".join(decoders) or None,
            "tasks": ",".join(t.name for t in tasks),
            "source_metadata": first.get("source_metadata"),
            "run_id": ctx.run_id,
            "model_id": ctx.model_id,
            "processed_at": datetime.now(UTC),
            "work_keys": [ctx.work_keys[t.name] for t in tasks if t.name in ctx.work_keys] or None,
        }
    )
    for table in tables_for_tasks(tasks):
        tables.setdefault(table, [])
    return dict(tables)
