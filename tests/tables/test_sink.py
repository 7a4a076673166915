"""The sink's exactly-once promise, through its public API only (`add_video`, `flush`, `recover`,
`done_video_ids`) and the reader: a committed video is done for every later run, a rerun writes
nothing twice, and a writer that dies at any write of a flush leaves each video done once or not at all.

The output is an in-memory fsspec store (no disk, no Ray): every write the sink makes goes through
`CrashingFS`, which can fail them from the n-th on, as a writer killed mid-flush would."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.io.retry import RetryPolicy
from pipeline.results.collect import RowContext, video_tables
from pipeline.results.tasks import build_tasks
from pipeline.tables.reader import open_tables
from pipeline.tables.sink import TableSink

TASKS = build_tasks(["caption", "count:person", "track:person"])
CTX = RowContext(run_id="r1", model_id="m", max_new_tokens=32, sampling_mode="native", num_frames=8, max_fps=2.0)
ANSWERS = {
    "caption": "A person walks past a cart.",
    "count": '<points coords="1.0 1 100 200 2 300 400">person</points>',
    "track": '<tracks coords="1.0 1 100 200;1.5 1 110 200">person</tracks>',
}
NO_RETRY = RetryPolicy(attempts=1)


class CrashingFS(MemoryFileSystem):
    """`crashing://`: the in-memory store, whose writes fail from the `fail_from`-th on (0-based)."""

    protocol = "crashing"
    fail_from: ClassVar[int | None] = None
    writes: ClassVar[int] = 0

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if any(m in mode for m in "wax"):
            if CrashingFS.fail_from is not None and CrashingFS.writes >= CrashingFS.fail_from:
                raise PermissionError(13, f"injected: the writer died before writing {path}")
            CrashingFS.writes += 1
        return super()._open(path, mode, *args, **kwargs)


@pytest.fixture
def output() -> Any:
    fsspec.register_implementation("crashing", CrashingFS, clobber=True)
    CrashingFS.fail_from, CrashingFS.writes = None, 0
    root = f"crashing://sink-{uuid.uuid4().hex[:8]}"
    yield root
    CrashingFS.fail_from = None
    fs = CrashingFS()
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _window_row(video_id: str, task: str, *, failed: bool) -> dict[str, Any]:
    kind, _, query = task.partition(":")
    return {
        "video_id": video_id, "uri": f"s3://b/{video_id}.mp4", "size_bytes": 10, "duration_s": 10.0, "fps": 10.0,
        "width": 640, "height": 360, "codec": "h264", "rotation": 0, "num_windows": 1, "window_index": 0,
        "t_start": 0.0, "t_end": 10.0, "frame_times": [0.5 * i for i in range(20)], "decoder": "pyav",
        "decode_status": "ok", "error_stage": None, "error_type": None, "error_message": None,
        "task": kind, "query": query, "prompt": f"prompt {task}", "answer": "" if failed else ANSWERS[kind],
        "prompt_tokens": 100, "generated_tokens": 10, "hit_max_new_tokens": False, "latency_s": 0.5,
        "frames_used": 8, "infer_error_type": "RuntimeError" if failed else None,
        "infer_error_message": "boom" if failed else None,
    }


def _video(video_id: str, status: str = "ok") -> dict[str, list[dict[str, Any]]]:
    """A video's rows of every table, made by collect from window answers that give it `status`."""
    failed = {"ok": set(), "partial": {"caption"}, "failed": {t.name for t in TASKS}}[status]
    rows = [_window_row(video_id, t.name, failed=t.name in failed) for t in TASKS]
    tables = video_tables(rows, TASKS, CTX)
    assert tables["videos"][0]["status"] == status
    return tables


def _committed_rows(output: str, *, every_file: bool = False) -> dict[str, list[str]]:
    """Table -> the video_id of every committed row, as a reader sees them (`every_file`: of every part
    file, as a plain Parquet reader such as Spark or Athena would see the folders)."""
    tables = open_tables(output, include_uncommitted=every_file)
    out = {}
    for name in ("videos", "errors", "captions", "counts", "points", "tracks", "video_counts"):
        if tables.present(name):
            out[name] = sorted(tables.sql(f"SELECT video_id FROM {name}").column("video_id").to_pylist())
    return out


def _expected_rows(videos: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in ("videos", "errors", "captions", "counts", "points", "tracks", "video_counts"):
        out[name] = sorted(r["video_id"] for rows in videos.values() for r in rows.get(name, []))
    return out


def test_committed_videos_are_done_for_every_later_sink(output: str) -> None:
    first = TableSink(output, run_date="2026-01-01", retry=NO_RETRY)
    a, b, c = _video("a"), _video("b"), _video("c")
    first.add_video("a", a)
    first.add_video("b", b)
    assert first.done_video_ids() == set()  # buffered is not done
    first.flush()
    first.add_video("c", c)  # buffered, never flushed: the process "dies" here

    rerun = TableSink(output, run_date="2026-01-02", retry=NO_RETRY)
    assert rerun.recover() == 0
    assert rerun.done_video_ids() == {"a", "b"}
    # The rerun skips what is done and writes the rest: every row exactly once.
    for vid, rows in (("a", a), ("b", b), ("c", c)):
        if vid not in rerun.done_video_ids():
            rerun.add_video(vid, rows)
    assert rerun.pending_videos == 1
    rerun.flush()
    assert TableSink(output, run_date="2026-01-03").done_video_ids() == {"a", "b", "c"}
    assert _committed_rows(output) == _expected_rows({"a": a, "b": b, "c": c})


def test_done_video_ids_filters_by_status(output: str) -> None:
    sink = TableSink(output, run_date="2026-01-01", retry=NO_RETRY)
    for vid, status in (("ok1", "ok"), ("part1", "partial"), ("fail1", "failed"), ("fail_then_ok", "failed")):
        sink.add_video(vid, _video(vid, status))
    sink.flush()
    later = TableSink(output, run_date="2026-01-02", retry=NO_RETRY)
    later.add_video("fail_then_ok", _video("fail_then_ok", "ok"))  # retried the next night, and it worked
    later.flush()

    assert later.done_video_ids() == {"ok1", "part1", "fail1", "fail_then_ok"}
    assert later.done_video_ids(statuses=["ok", "partial"]) == {"ok1", "part1", "fail_then_ok"}
    assert later.done_video_ids(statuses=["ok"]) == {"ok1", "fail_then_ok"}
    assert later.done_video_ids(statuses=["failed"]) == {"fail1", "fail_then_ok"}  # every row counts: history
    assert later.done_video_ids(statuses=[]) == set()


def test_a_video_without_its_videos_row_is_refused(output: str) -> None:
    sink = TableSink(output, run_date="2026-01-01", retry=NO_RETRY)
    rows = _video("a")
    with pytest.raises(ValueError, match="no videos row"):
        sink.add_video("a", {k: v for k, v in rows.items() if k != "videos"})
    with pytest.raises(KeyError, match="unknown table"):
        sink.add_video("a", {**rows, "nonsense": []})


def test_a_writer_that_dies_at_any_write_leaves_its_part_whole_or_absent(output: str) -> None:
    videos = {"a": _video("a"), "b": _video("b", "partial")}
    expected = _expected_rows(videos)
    # How many writes one flush makes (the protocol's business, not this test's).
    probe = TableSink(f"{output}-count", run_date="2026-01-01", retry=NO_RETRY)
    for vid, rows in videos.items():
        probe.add_video(vid, rows)
    probe.flush()
    writes = CrashingFS.writes
    assert writes >= 2, "a flush writes its rows and then commits them"

    for crash_at in range(writes):
        root = f"{output}-crash{crash_at}"
        CrashingFS.fail_from, CrashingFS.writes = crash_at, 0
        # A short commit-lock TTL: a writer that dies holding the lock blocks the others' commits only that long.
        dying = TableSink(root, run_date="2026-01-01", retry=NO_RETRY, commit_lock_ttl_s=1.0)
        for vid, rows in videos.items():
            dying.add_video(vid, rows)
        with pytest.raises(PermissionError, match="injected"):
            dying.flush()
        CrashingFS.fail_from = None
        dying.close()  # the writer is gone (its lease with it): what it left uncommitted is anyone's to clean

        rerun = TableSink(root, run_date="2026-01-02", retry=NO_RETRY)
        rerun.recover()
        done = rerun.done_video_ids()
        # A part is all or nothing: both videos done with all their rows, or neither with none.
        assert done in (set(), {"a", "b"}), (crash_at, done)
        if crash_at == 0:
            assert done == set()  # nothing was written
        want = _expected_rows({v: rows for v, rows in videos.items() if v in done})
        if CrashingFS().exists(root):
            for every_file in (False, True):  # recover() removed what the dead writer left uncommitted
                seen = _committed_rows(root, every_file=every_file)
                assert {t: r for t, r in seen.items() if r} == {t: r for t, r in want.items() if r}, crash_at
        for vid, rows in videos.items():
            if vid not in done:
                rerun.add_video(vid, rows)
        rerun.flush()
        assert rerun.done_video_ids() == {"a", "b"}
        assert _committed_rows(root) == expected, crash_at  # every row exactly once
        assert _committed_rows(root, every_file=True) == expected, crash_at
