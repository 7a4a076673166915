"""Many writers on one output (pipeline.tables.leases + the sink's commit protocol), without Ray.

Each test reproduces a way two writers lost or duplicated rows before writers had leases and a commit lock:
recovery deleting a live writer's in-flight files, two writers committing one video twice, a writer
committing after others presumed it dead, and a reused run id overwriting history.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.tables import layout
from pipeline.tables.leases import CommitLock, LeaseError, WriterLease, read_leases
from pipeline.tables.schemas import PIPELINE_GROUP
from pipeline.tables.sink import TableSink
from pipeline.tables.views import views_sql

DAY = "2026-01-01"


def _rows(vid: str, writer: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "videos": [{"video_id": vid, "uri": f"/x/{vid}.mp4", "status": "ok", "run_id": writer}],
        "errors": [{"video_id": vid, "stage": "model", "error_type": "Demo", "message": f"{vid} by {writer}",
                    "run_id": writer}],
    }


def _table(out: Path, name: str) -> list[dict[str, Any]]:
    """Rows of `name` from committed parts only (what `pipeline query` shows)."""
    paths = layout.committed_parts(LocalFileSystem(), str(out), name, "videos")
    return [row for p in paths for row in pq.read_table(p).to_pylist()]


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class PausedFlush:
    """Holds a sink's flush right after its data files (the `errors` file in these tests), before the
    checks and the commit record that follow, until released."""

    def __init__(self, sink: TableSink) -> None:
        self.data_written = threading.Event()
        self.go = threading.Event()
        self.dies = False  # released with `die()`: the flush ends there, as in a killed process
        original = sink._write

        def write(table: str, key: str, data: Any) -> None:
            original(table, key, data)
            if table == "errors":
                self.data_written.set()
                assert self.go.wait(30), "the test never released the flush"
                if self.dies:
                    raise SystemExit("killed")

        sink._write = write  # type: ignore[method-assign]

    def die(self) -> None:
        self.dies = True
        self.go.set()


def test_recovery_never_takes_a_live_writers_in_flight_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a")
    a.add_video("v1", _rows("v1", "run-a"))
    paused = PausedFlush(a)
    flushing = threading.Thread(target=a.flush)
    flushing.start()
    assert paused.data_written.wait(30)
    assert len(_files(out, "errors")) == 1  # A's data file, not committed yet

    b = TableSink(str(out), run_date=DAY, writer_id="run-b")
    assert b.recover() == 0  # A holds a live lease: its files stay
    assert len(_files(out, "errors")) == 1
    paused.go.set()
    flushing.join(30)
    assert [r["message"] for r in _table(out, "errors")] == ["v1 by run-a"]
    assert b.done_video_ids() == {"v1"}
    a.close()
    b.close()


def test_a_dead_writers_orphans_are_deleted_once_its_lease_expires(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a", lease_ttl_s=1.0)
    a.add_video("v1", _rows("v1", "run-a"))

    def dies_before_commit(table: str, key: str, data: Any) -> None:
        if table == a.commit_table:
            a.lease._stop.set()  # the process "dies": no more heartbeats, nothing released
            raise KeyboardInterrupt("killed")
        TableSink._write(a, table, key, data)

    a._write = dies_before_commit  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        a.flush()
    b = TableSink(str(out), run_date=DAY, writer_id="run-b")
    assert b.recover() == 0 and len(_files(out, "errors")) == 1  # A's lease has not expired yet
    _wait_for(lambda: not any(i.live() for i in read_leases(b.fs, b.root) if i.writer_id == "run-a"),
              "run-a's lease to expire")
    assert b.recover() == 1 and _files(out, "errors") == []
    assert [i.writer_id for i in read_leases(b.fs, b.root)] == ["run-b"]  # the expired lease is gone too
    b.close()


def test_two_writers_committing_one_video_write_it_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a")
    b = TableSink(str(out), run_date=DAY, writer_id="run-b")
    for sink in (a, b):
        sink.start()
        sink.done_video_ids()  # both started before either committed: neither skips anything
        for vid in ("v1", "v2", "v3"):
            sink.add_video(vid, _rows(vid, sink.writer_id))
    b.add_video("v4", _rows("v4", "run-b"))
    threads = [threading.Thread(target=s.flush) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    videos = Counter(r["video_id"] for r in _table(out, "videos"))
    assert videos == {"v1": 1, "v2": 1, "v3": 1, "v4": 1}
    captions = Counter(r["video_id"] for r in _table(out, "errors"))
    assert captions == videos
    assert a.committed_elsewhere + b.committed_elsewhere == 3  # the loser dropped the three shared videos
    assert a.videos_committed + b.videos_committed == 4
    a.close()
    b.close()


def test_a_flush_reads_others_commits_from_the_lock_not_by_listing_the_commit_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    listings: list[str] = []
    real_list_parts = layout.list_parts
    monkeypatch.setattr(layout, "list_parts", lambda fs, root, table: listings.append(table) or real_list_parts(fs, root, table))
    a = TableSink(str(out), run_date=DAY, writer_id="run-a").start()
    b = TableSink(str(out), run_date=DAY, writer_id="run-b").start()
    for vid in ("v1", "v2"):  # two parts
        b.add_video(vid, _rows(vid, "run-b"))
        b.flush()
    listings.clear()
    assert a.done_video_ids() == {"v1", "v2"} and listings == []  # what is done: read the same way
    b.add_video("v5", _rows("v5", "run-b"))
    b.flush()
    a.add_video("v1", _rows("v1", "run-a"))
    a.add_video("v3", _rows("v3", "run-a"))
    a.flush()
    assert listings == []  # the generations in between named b's commit records
    assert (a.committed_elsewhere, a.videos_committed) == (1, 1)

    # A generation that does not say what it committed (a writer that failed, or an older version): the
    # next flush lists the commit table instead, and still writes nothing twice.
    b.add_video("v4", _rows("v4", "run-b"))
    real_release = b.lock.release
    monkeypatch.setattr(b.lock, "release", lambda ticket, committed=None: real_release(ticket, None))
    b.flush()
    a.add_video("v4", _rows("v4", "run-a"))
    a.flush()
    assert listings == ["videos"]
    assert (a.committed_elsewhere, a.videos_committed) == (2, 1)
    assert Counter(r["video_id"] for r in _table(out, "videos")) == {"v1": 1, "v2": 1, "v3": 1, "v4": 1, "v5": 1}
    a.close()
    b.close()


def test_a_writer_that_lost_its_lease_commits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a", lease_ttl_s=1.0)
    a.start()

    original = layout.atomic_write

    def lease_writes_fail(fs: Any, path: str, payload: bytes) -> None:
        if "/_writers/leases/" in path:
            raise ConnectionRefusedError("store down")
        original(fs, path, payload)

    import pipeline.tables.leases as leases_module

    leases_module.layout.atomic_write = lease_writes_fail  # type: ignore[assignment]
    try:
        _wait_for(lambda: not a.lease.valid(), "the lease to be presumed lost")
    finally:
        leases_module.layout.atomic_write = original  # type: ignore[assignment]
    a.add_video("v1", _rows("v1", "run-a"))
    with pytest.raises(LeaseError, match="stops committing"):
        a.flush()
    assert _table(out, "videos") == []
    assert not a.lease.valid()  # a late successful heartbeat never revives it
    a.close()


def test_a_writer_id_in_use_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = TableSink(str(out), run_date=DAY, writer_id="nightly-1").start()
    with pytest.raises(LeaseError, match="already holds a lease"):
        TableSink(str(out), run_date=DAY, writer_id="nightly-1").start()
    first.close()
    TableSink(str(out), run_date=DAY, writer_id="nightly-1").start().close()  # given back: free again


def test_commit_lock_lets_one_holder_in_at_a_time(tmp_path: Path) -> None:
    fs, root = LocalFileSystem(), str(tmp_path / "out")
    inside: list[int] = []
    overlaps: list[int] = []
    entries = Counter[str]()

    def worker(name: str) -> None:
        lock = CommitLock(fs, root, name, ttl_s=30)
        for _ in range(5):
            with lock.held():
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                entries[name] += 1
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps == [] and sum(entries.values()) == 20


def test_an_expired_commit_lock_is_taken_over(tmp_path: Path) -> None:
    fs, root = LocalFileSystem(), str(tmp_path / "out")
    stuck = CommitLock(fs, root, "stuck", ttl_s=0.5).acquire()  # its holder never releases
    assert stuck.generation == 1
    ticket = CommitLock(fs, root, "next", ttl_s=30).acquire(timeout_s=30)
    assert ticket.generation == 2 and not stuck.valid()


def test_store_without_conditional_create_is_refused(tmp_path: Path) -> None:
    class IgnoresCondition(LocalFileSystem):
        def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kw: Any) -> None:
            super().pipe_file(path, value, **kw)  # writes whatever the mode asked

        protocol = ("s3",)

    lease = WriterLease(IgnoresCondition(auto_mkdir=True), str(tmp_path / "out"), "run-a")
    with pytest.raises(layout.ConditionalWriteUnsupported, match="second exclusive create"):
        lease.acquire()


def test_reader_views_show_committed_rows_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a")
    a.add_video("v1", _rows("v1", "run-a"))
    a.flush()
    a.add_video("v2", _rows("v2", "run-a"))
    paused = PausedFlush(a)
    flushing = threading.Thread(target=a.flush)
    flushing.start()
    assert paused.data_written.wait(30)  # v2's caption file exists, its commit record does not
    con = duckdb.connect()
    raw = con.sql(f"SELECT count(*) FROM read_parquet('{out}/errors/**/*.parquet')").fetchall()
    assert raw == [(2,)]  # what a plain read_parquet sees: the orphan too
    con.execute(views_sql(str(out), [PIPELINE_GROUP], ["videos", "errors"]))
    assert con.sql("SELECT video_id FROM errors").fetchall() == [("v1",)]
    assert con.sql("SELECT video_id, run_date FROM videos").fetchall()[0][0] == "v1"
    paused.go.set()
    flushing.join(30)
    assert sorted(con.sql("SELECT video_id FROM errors").fetchall()) == [("v1",), ("v2",)]  # live, not frozen
    a.close()


def _files(out: Path, table: str) -> list[Path]:
    return sorted((out / table).rglob("part-*.parquet"))


def test_operator_lists_writers_and_ends_a_dead_ones_lease(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="stuck-run")
    a.add_video("v1", _rows("v1", "stuck-run"))
    paused = PausedFlush(a)
    outcome: list[BaseException] = []

    def flush() -> None:
        try:
            a.flush()
        except LeaseError as exc:
            outcome.append(exc)

    flushing = threading.Thread(target=flush, daemon=True)
    flushing.start()
    assert paused.data_written.wait(30)  # the "stuck" writer: data files written, commit never comes
    assert main(["writers", "--output", str(out)]) == 0
    assert "stuck-run (writer" in capsys.readouterr().out
    b = TableSink(str(out), run_date=DAY, writer_id="operator-run")
    assert b.recover() == 0  # alive as far as anyone can tell
    assert main(["writers", "--output", str(out), "--end", "stuck-run"]) == 0
    assert b.recover() == 1 and _files(out, "errors") == []
    assert main(["writers", "--output", str(out), "--end", "stuck-run"]) == 2  # already gone
    paused.go.set()  # it was not dead after all: it finds its lease ended and commits nothing
    flushing.join(30)
    assert [type(e) for e in outcome] == [LeaseError] and _table(out, "videos") == []
    b.close()


def test_a_writer_killed_on_this_machine_is_recovered_at_once(tmp_path: Path) -> None:
    """A run killed here (SIGKILL) and rerun at once: its process is gone, so its lease no longer counts."""
    import subprocess
    import sys

    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="killed-run")
    a.add_video("v1", _rows("v1", "killed-run"))
    paused = PausedFlush(a)
    def flush_until_killed() -> None:
        with contextlib.suppress(SystemExit):
            a.flush()

    killed = threading.Thread(target=flush_until_killed, daemon=True)
    killed.start()
    assert paused.data_written.wait(30)
    a.lease._stop.set()  # no more heartbeats; now make the lease name a process that has exited
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = json.loads(Path(a.lease.path).read_text())
    Path(a.lease.path).write_text(json.dumps({**lease, "pid": int(gone.stdout)}))
    b = TableSink(str(out), run_date=DAY, writer_id="rerun")
    assert b.recover() == 1 and _files(out, "errors") == []  # no wait for the 300 s TTL
    paused.die()
    killed.join(30)
    b.close()


def _dies_before_commit(sink: TableSink) -> None:
    """Flush `sink` so that it writes its data files and then "dies" (no heartbeat, no commit, no release)."""
    def write(table: str, key: str, data: Any) -> None:
        if table == sink.commit_table:
            sink.lease._stop.set()
            raise KeyboardInterrupt("killed")
        TableSink._write(sink, table, key, data)

    sink._write = write  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        sink.flush()


def test_recovery_lists_only_a_dead_writers_own_files_not_the_outputs_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    out = tmp_path / "out"
    for night, day in enumerate(("2026-01-01", "2026-01-02")):  # history: committed parts of earlier nights
        old = TableSink(str(out), run_date=day, writer_id=f"night-{night}")
        for vid in (f"n{night}a", f"n{night}b"):
            old.add_video(vid, _rows(vid, old.writer_id))
            old.flush()
        old.close()
    history = _files(out, "errors")
    dead = TableSink(str(out), run_date="2026-01-03", writer_id="run-dead", lease_ttl_s=1.0)
    dead.add_video("v1", _rows("v1", "run-dead"))
    _dies_before_commit(dead)
    listings: list[str] = []
    real_list_parts = layout.list_parts
    monkeypatch.setattr(layout, "list_parts", lambda fs, root, table: listings.append(table) or real_list_parts(fs, root, table))
    b = TableSink(str(out), run_date="2026-01-04", writer_id="run-b")
    _wait_for(lambda: not any(i.live() for i in read_leases(b.fs, b.root) if i.writer_id == "run-dead"),
              "run-dead's lease to expire")
    b.start()  # (its start-up snapshot of the commit records is not recovery's business)
    listings.clear()
    assert b.recover() == 1
    assert listings == []  # no table's whole history was listed: only run-dead's own files in its partition
    assert _files(out, "errors") == history and [i.writer_id for i in read_leases(b.fs, b.root)] == ["run-b"]

    # A file no lease accounts for (its writer's lease was cleaned up while it still wrote): recovery does not
    # look for it; the operator's sweep, which lists everything, deletes it.
    stray = layout.part_path(str(out), "errors", "2026-01-02", layout.new_part_key(["x"], layout.writer_token("gone")))
    Path(stray).write_bytes(Path(history[0]).read_bytes())
    assert b.recover() == 0 and Path(stray) in _files(out, "errors")
    assert main(["writers", "--output", str(out), "--sweep"]) == 0
    assert "removed 1 uncommitted part file(s)" in capsys.readouterr().out
    assert _files(out, "errors") == history

    # A lease written by an older version does not say where its files are: recovery sweeps instead.
    older = TableSink(str(out), run_date="2026-01-05", writer_id="run-older", lease_ttl_s=1.0)
    older.add_video("v2", _rows("v2", "run-older"))
    _dies_before_commit(older)
    lease_file = Path(older.lease.path)
    lease_file.write_text(json.dumps({k: v for k, v in json.loads(lease_file.read_text()).items()
                                      if k not in ("partition", "commit_table")}))
    _wait_for(lambda: not any(i.live() for i in read_leases(b.fs, b.root) if i.writer_id == "run-older"),
              "run-older's lease to expire")
    listings.clear()
    assert b.recover() == 1 and "errors" in listings and _files(out, "errors") == history
    b.close()


def test_a_writer_whose_flush_failed_leaves_its_lease_expired_for_recovery(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = TableSink(str(out), run_date=DAY, writer_id="run-a")
    a.add_video("v1", _rows("v1", "run-a"))
    original = a._write

    def fails_at_commit(table: str, key: str, data: Any) -> None:
        if table == a.commit_table:
            raise PermissionError("the store refused the commit record")
        original(table, key, data)

    a._write = fails_at_commit  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        a.flush()
    a.close()  # a clean exit after the failure: the lease stays, expired, pointing at the leftovers
    (info,) = read_leases(a.fs, a.root)
    assert (info.writer_id, info.live(), info.partition) == ("run-a", False, DAY)
    b = TableSink(str(out), run_date="2026-02-01", writer_id="run-b")
    assert b.recover() == 1 and _files(out, "errors") == []
    b.close()
