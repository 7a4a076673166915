"""The pipeline end to end on a local Ray: generated mp4s -> decode tasks -> Molmo2 actor (tiny, real
transformers classes, loaded through the production path) -> Parquet tables.

The tiny model's weights are random but seeded (`tiny_model_dir`: seed 0) and decoding is greedy, so what
it writes is fixed, and these tests say exactly what that is: it never stops before `max_new_tokens` (every
answer is cut: parse status `truncated`), never writes a `<points>`/`<tracks>` tag (the points and tracks
tables are empty, with their schema), and its count answers are gibberish with numbers in them, read as
`text_number` counts. A change to the model builder, the prompt, sampling or parsing shows here."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.config import build_config
from pipeline.run.driver import run_pipeline
from pipeline.tables.schemas import TABLES

MAX_NEW_TOKENS = 24

pytestmark = pytest.mark.integration


def _read(out: Path, table: str) -> list[dict]:
    ds = pads.dataset(str(out / table), format="parquet", partitioning="hive")
    return ds.to_table().to_pylist()


def _config(videos: Path, model: Path, out: Path, tasks: str, **extra: dict) -> object:
    data = {
        "source": {"input": str(videos)},
        "model": {"model": str(model), "max_new_tokens": MAX_NEW_TOKENS, "batch_size": 3},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "sampling": {"num_frames": 8, "max_fps": 2.0},
        "tasks": {"tasks": tasks},
        "output": {"output": str(out), "flush_videos": 2},
        "ray": {"progress": "off"},
    }
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    return build_config(data)


def test_captions_end_to_end(ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    messages: list[str] = []
    summary = run_pipeline(_config(sample_videos, tiny_model_dir, out, "caption"), echo=messages.append)
    assert summary.exit_code == 0, summary.render()
    assert (summary.ok, summary.failed, summary.partial) == (4, 0, 0)

    videos = {Path(v["uri"]).stem: v for v in _read(out, "videos")}
    assert set(videos) == {"street_short", "store_aisle", "parking_long", "portrait_phone"}
    assert all(v["status"] == "ok" and v["error_summary"] is None for v in videos.values())
    long = videos["parking_long"]
    assert long["windows"] == 3 and long["duration_s"] == pytest.approx(26.0)
    assert (long["width"], long["height"], long["codec"], long["fps"]) == (320, 180, "h264", 25.0)
    portrait = videos["portrait_phone"]
    assert (portrait["width"], portrait["height"], portrait["rotation"]) == (180, 320, 90)

    captions = _read(out, "captions")
    assert len(captions) == 1 + 1 + 3 + 1
    by_video: dict[str, list[dict]] = {}
    for c in captions:
        by_video.setdefault(c["video_id"], []).append(c)
    windows = sorted((c["window_index"], c["t_start"], c["t_end"]) for c in by_video[long["video_id"]])
    assert windows == [(0, 0.0, 10.0), (1, 8.0, 18.0), (2, 16.0, 26.0)]
    for c in captions:
        assert isinstance(c["caption"], str) and c["caption"]
        assert c["prompt"] == "Describe this video in detail."
        assert c["model_id"] == str(tiny_model_dir) and c["run_id"] == summary.run_id
        assert c["decoding"] == "greedy" and c["max_new_tokens"] == MAX_NEW_TOKENS and c["num_frames"] == 8
        # Every window is >= 4 s at 2 fps: 8 frames each. The random model never stops early: every caption
        # is cut at max_new_tokens and says so.
        assert (c["frames_used"], c["generated_tokens"], c["truncated"]) == (8, MAX_NEW_TOKENS, True)
        assert c["prompt_tokens"] > c["frames_used"] * 9 and c["latency_s"] > 0
    assert _read(out, "errors") == []  # written (every run has an errors table), and empty
    _assert_schemas(out, ["captions", "errors", "runs", "videos"])

    # Decode and the model ran as separate Ray Data stages: decode as tasks, Molmo2Host as an actor pool.
    assert "MapBatches(decode_batch)" in summary.stats and "MapBatches(Molmo2Host)" in summary.stats

    # A rerun recognises every video and does no model work; the tables are unchanged.
    again = run_pipeline(_config(sample_videos, tiny_model_dir, out, "caption"), echo=messages.append)
    assert again.videos_skipped == 4 and again.processed == 0 and again.exit_code == 0
    assert len(_read(out, "captions")) == len(captions)
    assert len(_read(out, "videos")) == 4


def _assert_schemas(out: Path, tables: list[str]) -> None:
    """Exactly these tables were written, each with exactly its declared columns, in order, and types."""
    # Table folders; `_writers/` holds the writers' leases and the commit lock (readers skip `_` names).
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "_writers") == sorted(tables)
    assert (out / "_writers" / "leases").is_dir() and not list((out / "_writers" / "leases").iterdir())
    for table in tables:
        ds = pads.dataset(str(out / table), format="parquet", partitioning="hive")
        written = [(f.name, f.type) for f in ds.schema if f.name != "run_date"]
        assert written == [(f.name, f.type) for f in TABLES[table]], table


def test_every_table_of_every_task(ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    summary = run_pipeline(
        _config(sample_videos, tiny_model_dir, out, "caption,count:person,point:cart,track:person,ask:What is moving?",
                source={"include": ["parking_long.mp4", "portrait_phone.mp4"]}),
        echo=lambda _m: None,
    )
    assert summary.exit_code == 0, summary.render()
    _assert_schemas(out, ["answers", "captions", "counts", "errors", "points", "runs", "tracks", "video_counts",
                          "videos"])
    stem = {v["video_id"]: Path(v["uri"]).stem for v in _read(out, "videos")}
    assert sorted(stem.values()) == ["parking_long", "portrait_phone"]
    assert all(v["status"] == "ok" for v in _read(out, "videos"))

    # No answer holds a tag: no points, no tracks, no errors (the tables exist, with their schema, above).
    assert (_read(out, "points"), _read(out, "tracks"), _read(out, "errors")) == ([], [], [])
    counts = {(stem[c["video_id"]], c["window_index"]): (c["query"], c["parse_status"], c["count_method"], c["count"])
              for c in _read(out, "counts")}
    # Every answer cut at max_new_tokens (parse status truncated); the first standalone number of each is
    # its count (text_number): what the seeded random model writes, answer by answer.
    assert counts == {
        ("parking_long", 0): ("person", "truncated", "text_number", 273),
        ("parking_long", 1): ("person", "truncated", "text_number", 296),
        ("parking_long", 2): ("person", "truncated", "text_number", 70),
        ("portrait_phone", 0): ("person", "truncated", "text_number", 339),
    }
    # No window pointed: nothing to stitch, so distinct_objects is null; the largest stated count is kept.
    video_counts = {(stem[r["video_id"]], r["task"], r["query"]): (r["distinct_objects"], r["max_window_count"], r["windows"])
                    for r in _read(out, "video_counts")}
    assert video_counts == {
        ("parking_long", "count", "person"): (None, 296, 3),
        ("parking_long", "track", "person"): (None, 0, 3),
        ("portrait_phone", "count", "person"): (None, 339, 1),
        ("portrait_phone", "track", "person"): (None, 0, 1),
    }
    answers = sorted((stem[a["video_id"]], a["window_index"], a["question"], a["num_points"], a["parse_status"],
                      a["truncated"]) for a in _read(out, "answers"))
    assert answers == [
        ("parking_long", 0, "What is moving?", 0, "truncated", True),
        ("parking_long", 1, "What is moving?", 0, "truncated", True),
        ("parking_long", 2, "What is moving?", 0, "truncated", True),
        ("portrait_phone", 0, "What is moving?", 0, "truncated", True),
    ]
    (run,) = _read(out, "runs")
    assert (run["status"], run["windows"], run["generated_tokens"]) == ("ok", 4, 4 * 5 * MAX_NEW_TOKENS)
