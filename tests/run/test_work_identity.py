"""A rerun does exactly the missing (video, task, model) work: a new task or another model over an old
corpus processes only the new pairs, decoding each video once; an unchanged rerun does nothing."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import build_config
from pipeline.devtools.tiny_model import build_tiny_molmo2
from pipeline.run.driver import run_pipeline
from pipeline.tables.reader import open_tables

pytestmark = pytest.mark.integration


def _config(videos: Path, model: Path, out: Path, tasks: str, done_index_parts: int = 3) -> Any:
    return build_config({
        "source": {"input": str(videos)},
        "model": {"model": str(model), "max_new_tokens": 8, "batch_size": 3},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "sampling": {"num_frames": 4, "max_fps": 2.0},
        "tasks": {"tasks": tasks},
        "output": {"output": str(out), "flush_videos": 2, "done_index_parts": done_index_parts},
        "ray": {"progress": "off"},
    })


def test_new_task_then_new_model_do_only_the_new_pairs(
    ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tables"
    first = run_pipeline(_config(sample_videos, tiny_model_dir, out, "caption"), echo=lambda _m: None)
    assert (first.processed, first.windows, first.answers) == (4, 6, 6)

    messages: list[str] = []
    more = run_pipeline(_config(sample_videos, tiny_model_dir, out, "caption,count:person"), echo=messages.append)
    # Every video again, but only for the new task: one decode per video (6 windows), one answer a window.
    assert (more.processed, more.windows, more.answers) == (4, 6, 6)
    assert any("4 video(s) need only some of the tasks" in m for m in messages), messages
    t = open_tables(str(out))
    captions = t.sql("SELECT video_id, window_index FROM captions").to_pylist()
    assert len(captions) == 6 and len({(c["video_id"], c["window_index"]) for c in captions}) == 6  # not redone
    counts = t.sql("SELECT video_id, work_key FROM counts").to_pylist()
    assert len(counts) == 6 and len({c["work_key"] for c in counts}) == 1
    keys = t.sql("SELECT video_id, run_id, work_keys FROM videos ORDER BY processed_at").to_pylist()
    assert Counter(len(v["work_keys"]) for v in keys) == {1: 8}  # each run's row lists the work it did
    # 4 commit parts uncovered >= --done-index-parts 3: the run folded them into the done index at its end.
    assert any(m.startswith("done index: generation 1, 8 rows") for m in messages), messages
    assert (out / "_done" / "gen-00000001.json").exists()

    # Unchanged: nothing to do, and the run ends once its listing says so, without waiting for a model actor
    # to load (every model load is held here; Ray Data alone would wait for it: graph.StreamStop).
    events = tmp_path / "events"
    events.mkdir()
    (events / "model-load.hold").touch()
    monkeypatch.setenv("MOLMO_BATCH_TEST_EVENTS", str(events))
    rerun: dict[str, Any] = {}
    config = _config(sample_videos, tiny_model_dir, out, "caption,count:person")
    thread = threading.Thread(target=lambda: rerun.update(summary=run_pipeline(config, echo=lambda _m: None)))
    thread.start()
    thread.join(timeout=180)
    waited = thread.is_alive()
    (events / "model-load.hold").unlink()  # a run still waiting (the failure) goes on and ends
    thread.join(timeout=120)
    monkeypatch.delenv("MOLMO_BATCH_TEST_EVENTS")
    assert not waited, "an all-done rerun waited for a model actor to load"
    same = rerun["summary"]
    assert (same.videos_listed, same.processed, same.videos_skipped) == (4, 0, 4)  # all read from the index

    other_model = build_tiny_molmo2(tmp_path / "other-model", frame_size=112, seed=1)
    switched = run_pipeline(_config(sample_videos, other_model, out, "caption"), echo=lambda _m: None)
    assert (switched.processed, switched.answers) == (4, 6)
    latest = t.sql("""
        SELECT c.video_id, count(DISTINCT c.work_key) AS keys FROM captions c GROUP BY ALL""").to_pylist()
    fresh = open_tables(str(out)).sql("SELECT count(DISTINCT work_key) AS n FROM captions").to_pylist()
    assert fresh == [{"n": 2}] and all(r["keys"] == 1 for r in latest)

    # Its 2 parts are uncovered; allowed 1, the next run compacts at start, then finds everything done.
    messages.clear()
    again = run_pipeline(_config(sample_videos, other_model, out, "caption", done_index_parts=1), echo=messages.append)
    assert (again.processed, again.videos_skipped) == (0, 4)
    assert any(m.startswith("done index: compacting 2 commit part(s)") for m in messages), messages
    assert (out / "_done" / "gen-00000002.json").exists()
