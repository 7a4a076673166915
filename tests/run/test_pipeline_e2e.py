"""The pipeline end to end on a local Ray: generated mp4s -> decode tasks -> Molmo2 actor (tiny, real
transformers classes, loaded through the production path) -> Parquet tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.config import build_config
from pipeline.run.driver import run_pipeline
from pipeline.tables.schemas import TABLES

pytestmark = pytest.mark.integration


def _read(out: Path, table: str) -> list[dict]:
    ds = pads.dataset(str(out / table), format="parquet", partitioning="hive")
    return ds.to_table().to_pylist()


def _config(videos: Path, model: Path, out: Path, tasks: str, **extra: dict) -> object:
    data = {
        "source": {"input": str(videos)},
        "model": {"model": str(model), "max_new_tokens": 24, "batch_size": 3},
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
        assert c["decoding"] == "greedy" and c["max_new_tokens"] == 24 and c["num_frames"] == 8
        assert 0 < c["frames_used"] <= 9 and c["prompt_tokens"] > c["frames_used"] * 9
        assert 0 < c["generated_tokens"] <= 24 and c["latency_s"] > 0
        assert c["truncated"] == (c["generated_tokens"] == 24)
    assert _read(out, "errors") == [] if (out / "errors").exists() else True

    # Decode and the model ran as separate Ray Data stages: decode as tasks, Molmo2Host as an actor pool.
    assert "MapBatches(decode_batch)" in summary.stats and "MapBatches(Molmo2Host)" in summary.stats

    # A rerun recognises every video and does no model work; the tables are unchanged.
    again = run_pipeline(_config(sample_videos, tiny_model_dir, out, "caption"), echo=messages.append)
    assert again.videos_skipped == 4 and again.processed == 0 and again.exit_code == 0
    assert len(_read(out, "captions")) == len(captions)
    assert len(_read(out, "videos")) == 4


def test_schemas_match_written_files(ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    summary = run_pipeline(
        _config(sample_videos, tiny_model_dir, out, "caption,count:person,point:cart,track:person,ask:What is moving?",
                source={"include": ["parking_long.mp4", "portrait_phone.mp4"]}),
        echo=lambda _m: None,
    )
    assert summary.exit_code == 0, summary.render()
    for table in ("videos", "captions", "counts", "answers", "video_counts"):
        ds = pads.dataset(str(out / table), format="parquet", partitioning="hive")
        for name in TABLES[table].names:
            assert ds.schema.field(name).type == TABLES[table].field(name).type, (table, name)
    counts = _read(out, "counts")
    assert len(counts) == 3 + 1  # one per window of each video
    for c in counts:
        assert c["query"] == "person" and c["parse_status"] in ("ok", "partial", "no_tags", "truncated", "invalid")
        assert c["count_method"] in ("points", "text_number", "none")
    vc = _read(out, "video_counts")
    assert {(r["task"], r["query"]) for r in vc} == {("count", "person"), ("track", "person")}
    assert len(_read(out, "answers")) == 4
