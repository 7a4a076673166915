"""Two runs writing to one output at the same time, as a nightly job and an ad-hoc run do: every video
ends with all its rows exactly once, on a local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import build_config
from pipeline.run.driver import run_pipeline
from pipeline.run.summary import RunSummary
from pipeline.tables.reader import open_tables

pytestmark = pytest.mark.integration

WINDOWS = {"street_short": 1, "store_aisle": 1, "parking_long": 3, "portrait_phone": 1}  # 10 s windows


def _config(videos: Path, model: Path, out: str, run_id: str, include: list[str], **output: Any) -> Any:
    return build_config({
        "source": {"input": str(videos), "include": include, **output.pop("source", {})},
        "model": {"model": str(model), "max_new_tokens": 8, "batch_size": 2, "model_num_cpus": 0.5},
        "decode": {"decode_num_cpus": 0.5, "decode_concurrency": 1},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "sampling": {"num_frames": 4, "max_fps": 2.0},
        "tasks": {"tasks": "caption"},
        "output": {"output": out, "flush_videos": 1, "run_id": run_id, **output},
        "ray": {"progress": "off"},
    })


def _run_together(*configs: Any) -> list[RunSummary]:
    results: dict[int, RunSummary] = {}
    errors: list[BaseException] = []

    def one(i: int, config: Any) -> None:
        try:
            results[i] = run_pipeline(config, echo=lambda _m: None)
        except BaseException as exc:  # surfaced below, with the other run's outcome
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(configs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return [results[i] for i in range(len(configs))]


def _integrity(out: str, endpoint: str | None = None) -> dict[str, int]:
    """Committed rows as a reader sees them: one `videos` row per video, all its captions, no duplicate."""
    t = open_tables(out, endpoint_url=endpoint)
    videos = t.sql("SELECT video_id, uri FROM videos").to_pylist()
    per_video = Counter(v["video_id"] for v in videos)
    assert set(per_video.values()) == {1}, per_video
    stems = {v["video_id"]: Path(v["uri"]).stem for v in videos}
    captions = t.sql("SELECT video_id, window_index FROM captions").to_pylist()
    keys = Counter((c["video_id"], c["window_index"]) for c in captions)
    assert set(keys.values()) == {1}, keys  # no caption twice
    got = Counter(stems[c["video_id"]] for c in captions)
    assert got == {stems[v]: WINDOWS[stems[v]] for v in per_video}  # every committed video has all its rows
    return dict(got)


def test_two_runs_on_the_same_input_and_output_write_each_video_once(
    ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "tables")
    a, b = _run_together(
        _config(sample_videos, tiny_model_dir, out, "nightly", ["*.mp4"]),
        _config(sample_videos, tiny_model_dir, out, "adhoc", ["*.mp4"]),
    )
    assert _integrity(out) == WINDOWS
    # Between them they processed the four videos at least once; what one wrote the other did not.
    assert a.processed + b.processed - a.videos_committed_elsewhere - b.videos_committed_elsewhere == 4
    again = run_pipeline(_config(sample_videos, tiny_model_dir, out, "rerun", ["*.mp4"]), echo=lambda _m: None)
    assert (again.videos_listed, again.processed) == (4, 0)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapping", "disjoint"])
def test_concurrent_runs_on_s3(
    ray_local: None, tiny_model_dir: Path, sample_videos: Path, seaweed: Any, overlap: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in seaweed.client_env().items():
        monkeypatch.setenv(key, value)
    out = f"s3://{seaweed.make_bucket()}/tables"
    first = ["street_short.mp4", "store_aisle.mp4", "parking_long.mp4"]
    second = ["store_aisle.mp4", "parking_long.mp4", "portrait_phone.mp4"] if overlap else ["portrait_phone.mp4"]
    extra = {"source": {"s3_endpoint_url": seaweed.endpoint}}
    _run_together(
        _config(sample_videos, tiny_model_dir, out, "run-1", first, **dict(extra)),
        _config(sample_videos, tiny_model_dir, out, "run-2", second, **dict(extra)),
    )
    expected = {Path(n).stem: WINDOWS[Path(n).stem] for n in {*first, *second}}
    assert _integrity(out, seaweed.endpoint) == expected
