"""Sink: write the tables as Parquet, each video's rows exactly once, beside any number of other writers.

The protocol (why no Ray `write_parquet`: a table row may need every window of its video, e.g. stitched
tracks, and `write_parquet` appends duplicates on rerun):

1. A sink is a *writer* with a lease on the output (`pipeline.tables.leases.WriterLease`, taken by `start()`,
   given back by `close()`); its id is the run id (a job's own tables: the run id plus a suffix).
2. Finished videos are buffered and flushed together as one *part*. A part's files in every table share
   one name, `part-<key>.parquet`, under `<table>/run_date=<date>/`, the key starting with the writer's
   token (the names: `pipeline.tables.layout`).
3. A flush holds the output's commit lock (`leases.CommitLock`): it reads the commit records that appeared
   since this writer started and drops every buffered video another writer committed meanwhile (counted in
   `committed_elsewhere`), writes the data files, checks that its lease and lock are still safely held, and
   writes the commit table's file (`videos`) last: it is the part's commit record. A video is done exactly
   when its commit row exists, so a rerun skips it and does no model work for it.
4. Each file appears atomically (`layout.atomic_write`): local files are written under a temporary name and
   renamed; S3 objects are written with one PUT (visible only once complete).
5. On start, `recover()` deletes part files without a commit record whose writer holds no live lease (a
   crashed or killed writer's; never a running writer's in-flight files), then the expired leases.
6. Every storage call retries transient errors with backoff and jitter within a budget (`pipeline.io.retry`).
   A write that still fails raises: its part stays uncommitted, so the tables never show half a part, and a
   later run deletes the orphans (once this writer's lease is gone) and redoes those videos.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.secrets import redact
from pipeline.io.storage import get_fs, join_url
from pipeline.results.work import DoneQuery, DoneRow, work_done
from pipeline.tables import layout
from pipeline.tables.leases import (
    CommitLock,
    CommitTicket,
    LeaseError,
    WriterLease,
    read_leases,
    remove_lease,
)
from pipeline.tables.schemas import COMMIT_TABLE, TABLES, to_table

log = logging.getLogger(__name__)


def _retry(fn: Any, what: str, policy: RetryPolicy = DEFAULT_POLICY) -> Any:
    """Retry transient storage errors with exponential backoff and jitter, within `policy`'s budget."""
    return retry_call(fn, redact(what), policy)


# What the sink reads of a commit-table row: the work-identity columns (`pipeline.results.work.DoneRow`).
CommitRow = DoneRow


def _commit_rows(table: pa.Table) -> list[CommitRow]:
    cols = {name: table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
            for name in CommitRow._fields}
    return [CommitRow(*values) for values in zip(*(cols[f] for f in CommitRow._fields), strict=True)]


class TableSink:
    """Buffers finished videos' rows and writes them as committed parts (see the module docstring).

    Args:
        writer_id: this writer's id on the output (a run id); a fresh one when not given.
        lease_ttl_s: how long after its last heartbeat others may presume this writer dead.
        commit_lock_ttl_s: how long one commit may hold the output's commit lock.
        on_wait: called with the holder's id when a commit has to wait for another writer's.
    """

    def __init__(
        self,
        output: str,
        *,
        run_date: str,
        endpoint_url: str | None = None,
        tables: Mapping[str, pa.Schema] | None = None,
        commit_table: str = COMMIT_TABLE,
        retry: RetryPolicy = DEFAULT_POLICY,
        writer_id: str | None = None,
        purpose: str = "",
        lease_ttl_s: float = 300.0,
        commit_lock_ttl_s: float = 120.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.output = output.rstrip("/")
        self.run_date = run_date
        # The pipeline's tables by default; a job (e.g. jobs.retail_counting) passes its own tables (e.g.
        # `jobs.retail_tables.RETAIL_TABLES`) with its own commit table, and gets the same part protocol.
        self.tables: dict[str, pa.Schema] = dict(tables) if tables is not None else dict(TABLES)
        if commit_table not in self.tables:
            raise ValueError(f"commit table {commit_table!r} is not one of the sink's tables")
        self.commit_table = commit_table
        self.retry = retry
        self.fs, self.root = get_fs(self.output, endpoint_url)
        self.root = self.root.rstrip("/")
        self._local = layout.is_local(self.fs)
        self.writer_id = writer_id or f"writer-{uuid.uuid4().hex[:12]}"
        self.lease = WriterLease(self.fs, self.root, self.writer_id, ttl_s=lease_ttl_s, purpose=purpose,
                                 partition=run_date, commit_table=commit_table)
        self.lock = CommitLock(self.fs, self.root, self.writer_id, ttl_s=commit_lock_ttl_s)
        self.on_wait = on_wait
        self._videos: dict[str, dict[str, list[dict[str, Any]]]] = {}  # video id -> table -> rows, in order
        # Commit records read so far: path -> rows (video_id, status, work_keys, tasks, model_id); a flush
        # reads only the new ones.
        self._commits: dict[str, list[CommitRow]] = {}
        self._own_keys: set[str] = set()
        # Videos other writers committed after this one started (read after `start()`'s snapshot): never
        # written again by this writer, whenever they reach its buffer.
        self._elsewhere: set[str] = set()
        self._snapshot_taken = False
        self._indexed: frozenset[str] = frozenset()
        self._lock_seen = 0  # the newest commit-lock generation whose commit this writer has read
        self._start_listing: dict[str, str] | None = None  # the commit records at start (`list_commits`)
        self._failed_flush = False  # a flush raised: it may have left data files without their commit record
        self.parts_written = 0
        self.videos_committed = 0
        self.committed_elsewhere = 0  # buffered videos dropped: another writer committed them meanwhile
        self.rows_written: dict[str, int] = {}

    # -- start and end -----------------------------------------------------------------------------

    def start(self) -> TableSink:
        """Take this writer's lease and read the commit records (once); a writer id already in use on the
        output raises LeaseError. Commits that appear after this snapshot are other writers' work."""
        if not self.lease.held:
            _retry(self.lease.acquire, f"take the writer lease on {self.output}", self.retry)
        if not self._snapshot_taken:
            self._read_commit_files([p for p in self.list_commits() if p not in self._commits])
            self._snapshot_taken = True
        return self

    def list_commits(self, since: int | None = None) -> dict[str, str]:
        """The commit records (path -> key) as of this writer's start, found once: what `start()` reads and
        what a caller may look at first (e.g. to decide on the done index). The commit lock's settled
        generation is noted first, so a commit that lands after it is read at the next flush.

        `since`: a commit-lock generation up to which every commit is accounted for elsewhere (the done
        index's `lock_generation`): then only the records of the generations after it, which name them,
        are returned (a GET each), and the commit table, which grows every night, is not listed; when one
        of those generations does not say (pruned, or its writer died holding it), the table is listed."""
        if self._start_listing is None:
            self._lock_seen = _retry(self.lock.settled_generation, f"read the commit lock of {self.output}", self.retry)
            named = None
            if since is not None and since <= self._lock_seen:
                named = _retry(lambda: self.lock.committed_since(since, self._lock_seen + 1),
                               f"read the commit lock of {self.output}", self.retry)
            if named is not None:
                self._start_listing = {p: k for p in named if (k := layout.part_key(p)) is not None}
            else:
                self.fs.invalidate_cache()
                self._start_listing = self._parts(self.commit_table)
        return self._start_listing

    @property
    def lock_seen(self) -> int:
        """The newest commit-lock generation up to which this writer knows every commit (see `list_commits`)."""
        return self._lock_seen

    def known_commits(self) -> tuple[dict[str, str], int]:
        """The commit records this writer knows (path -> key: those found at start and every one since,
        read now up to the lock's settled generation) and that generation: together with what the start
        snapshot left out (`list_commits(since=...)`), every commit up to it. For the done index's compaction;
        call before `close()`."""
        self.start()
        self._read_commits()
        return {p: k for p in self._commits if (k := layout.part_key(p)) is not None}, self._lock_seen

    def close(self) -> None:
        """Give the lease back (call after the last flush; uncommitted buffered rows are dropped). After a
        flush that failed, the lease stays behind, expired: recovery cleans up after writers with leases."""
        self.lease.release(left_files=self._failed_flush)

    def __enter__(self) -> TableSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the output ------------------------------------------------------------------------

    def _parts(self, table: str) -> dict[str, str]:
        """Part files of `table`, path -> key."""
        base = f"{self.root}/{table}"
        found: dict[str, str] = _retry(lambda: layout.list_parts(self.fs, self.root, table), f"list {base}", self.retry)
        return found

    def recover(self) -> int:
        """Delete the uncommitted part files of writers of this group of tables whose lease expired, then
        those leases; return how many files were removed.

        Each lease names its writer's token, run-date partition and commit table, so this lists, per dead
        writer, only its own files in that partition (prefix listings), however large the output's history;
        a lease that does not say (written by an older version) makes it `sweep()` the whole output instead."""
        self.start()
        self.fs.invalidate_cache()
        leases = _retry(lambda: read_leases(self.fs, self.root), "read the writers' leases", self.retry)
        now = time.time()
        dead = [info for info in leases if not info.live(now) and info.token != self.lease.token]
        if any(not info.partition or not info.commit_table for info in dead):
            return self.sweep()
        # Another group's writers (a job's own tables) are left to that group's next writer: only it knows
        # their tables.
        dead = [info for info in dead if info.commit_table == self.commit_table]
        removed = 0
        for info in dead:
            removed += self._remove_uncommitted(info.token, info.partition)
            _retry(lambda i=info: remove_lease(self.fs, self.root, i.writer_id), "remove an expired lease", self.retry)
        if self._local and dead:
            folders = [layout.table_folder(self.root, t, d) for d in {i.partition for i in dead}
                       for t in [*self.tables, "runs"]]
            for path in layout.temporary_files(self.fs, self.root, older_than_s=self.lease.ttl_s, folders=folders):
                self.fs.rm(path)
        return removed

    def _remove_uncommitted(self, token: str, partition: str) -> int:
        """Delete the data part files a dead writer left in its partition without their commit record."""
        def parts(table: str) -> dict[str, str]:
            return _retry(lambda: layout.writer_parts(self.fs, self.root, table, partition, token),
                          f"list {self.root}/{table}/{layout.PARTITION}={partition}", self.retry)

        data = {t: parts(t) for t in self.tables if t != self.commit_table}
        committed = set(parts(self.commit_table).values())
        removed = 0
        for found in data.values():
            for path, key in found.items():
                if key in committed:
                    continue
                _retry(lambda p=path: self.fs.rm(p), f"delete orphan {path}", self.retry)
                removed += 1
        return removed

    def sweep(self) -> int:
        """Delete every uncommitted part file in the output whose writer holds no live lease, then the expired
        leases; return how many files were removed. Lists every table's whole history: `recover()` does
        this only when a lease does not name its partition; an operator runs it (`pipeline writers
        --sweep`) for files no lease accounts for (a writer presumed dead whose lease was cleaned up while
        it still wrote)."""
        self.start()
        self.fs.invalidate_cache()
        # Order matters: data parts, then commit records, then leases. A part listed here was written after
        # its writer took its lease, so that lease shows below unless the writer has gone.
        data = {t: self._parts(t) for t in self.tables if t != self.commit_table}
        committed = set(self._parts(self.commit_table).values())
        leases = _retry(lambda: read_leases(self.fs, self.root), "read the writers' leases", self.retry)
        now = time.time()
        live = {info.token for info in leases if info.live(now)} | {self.lease.token}
        removed = 0
        for table, parts in data.items():
            for path, key in parts.items():
                if key in committed or layout.token_of_key(key) in live:
                    continue
                # Checked again just before deleting: a commit that landed after the listing keeps its files.
                commit = layout.sibling_part(path, table, self.commit_table)
                if _retry(lambda c=commit: self.fs.exists(c), f"check {commit}", self.retry):
                    continue
                _retry(lambda p=path: self.fs.rm(p), f"delete orphan {path}", self.retry)
                removed += 1
        for info in leases:  # expired leases: their writers' leftovers are gone now
            if not info.live(now) and info.token != self.lease.token:
                _retry(lambda i=info: remove_lease(self.fs, self.root, i.writer_id), "remove an expired lease", self.retry)
        # Temporary files of an interrupted local write (a live writer's exist for seconds only).
        if self._local:
            for path in layout.temporary_files(self.fs, self.root, older_than_s=self.lease.ttl_s):
                self.fs.rm(path)
        return removed

    def skip_indexed(self, keys: Set[str]) -> None:
        """Commit parts with these keys are in the output's done index (`pipeline.tables.done_index`): never
        read them here (call before `start()`); their videos are looked up in the index instead."""
        self._indexed = frozenset(keys)

    def _read_commits(self) -> list[str]:
        """Read the commit records not read yet (except those in the done index); return their paths."""
        # First the start snapshot (found, not read yet, when no `start()` came first); then the commit lock's
        # generations since the last look name the records to read (a GET each): no listing of the commit
        # table, which grows every night. When one is not known (pruned, a writer that died holding it),
        # list the table.
        self._read_commit_files([p for p in self.list_commits() if p not in self._commits])
        settled = _retry(self.lock.settled_generation, f"read the commit lock of {self.output}", self.retry)
        new = self._read_commits_before(settled + 1)
        self._lock_seen = max(self._lock_seen, settled)
        return new

    def _read_commits_before(self, generation: int) -> list[str]:
        """Read the commit records of the lock's generations after the last one read and before `generation`
        (they name them), or, when one of them does not say, those a listing of the commit table finds (made
        after `generation - 1` settled: it holds every record up to it)."""
        paths = _retry(lambda: self.lock.committed_since(self._lock_seen, generation),
                       f"read the commit lock of {self.output}", self.retry)
        if paths is None:
            self.fs.invalidate_cache()
            paths = list(self._parts(self.commit_table))
        return self._read_commit_files([p for p in paths if p not in self._commits])

    def _read_commits_since(self, ticket: CommitTicket) -> None:
        """Under the lock: read what other writers committed since this one last looked. The lock's
        generations in between name their commit records, so this costs a GET per commit, not a listing of
        the whole commit table (which grows every night); when one of them is not known, list it."""
        self._read_commits_before(ticket.generation)

    def _read_commit_files(self, new: list[str]) -> list[str]:
        for path in new:
            if layout.part_key(path) in self._indexed:  # committed before this writer started: not elsewhere
                self._commits[path] = []
                continue
            table = _retry(lambda p=path: self._read(p, list(CommitRow._fields)), f"read {path}", self.retry)
            self._commits[path] = _commit_rows(table)
            if self._snapshot_taken and layout.part_key(path) not in self._own_keys:
                self._elsewhere.update(r.video_id for r in self._commits[path])
        return new

    def done_video_ids(self, *, statuses: Sequence[str] | None = None) -> set[str]:
        """Video ids with a committed row (optionally only with these statuses)."""
        self._read_commits()
        return {r.video_id for rows in self._commits.values() for r in rows if statuses is None or r.status in statuses}

    def done_work(self, query: DoneQuery, *, any_status: bool = False) -> dict[str, set[str]]:
        """Per video, the work keys its committed rows (read here: not those in the done index) completed;
        see `pipeline.results.work.work_done`."""
        self._read_commits()
        return work_done((r for rows in self._commits.values() for r in rows), query, any_status=any_status)

    def _read(self, path: str, columns: list[str]) -> pa.Table:
        with self.fs.open(path, "rb") as fh:
            have = set(pq.read_schema(fh).names)
            fh.seek(0)
            return pq.read_table(fh, columns=[c for c in columns if c in have])

    # -- writing ---------------------------------------------------------------------------------

    def add_video(self, video_id: str, rows: Mapping[str, Sequence[dict[str, Any]]]) -> None:
        """Buffer one finished video's rows (table name -> rows); it must include its commit row."""
        if not rows.get(self.commit_table):
            raise ValueError(f"video {video_id} has no {self.commit_table} row")
        for table in rows:
            if table not in self.tables:
                raise KeyError(f"unknown table {table}")
        mine = self._videos.setdefault(video_id, {})
        for table, table_rows in rows.items():
            mine.setdefault(table, []).extend(table_rows)

    @property
    def pending_videos(self) -> int:
        return len(self._videos)

    def flush(self) -> None:
        """Write the buffered videos as one committed part (under the output's commit lock)."""
        if not self._videos:
            return
        self.start()
        # Taking and giving back the lock are storage calls like any other: retried through an outage.
        ticket = _retry(lambda: self.lock.acquire(on_wait=self.on_wait), f"take the commit lock of {self.output}",
                        self.retry)
        committed: list[str] | None = None  # unknown unless the flush ends normally
        try:
            committed = self._flush_locked(ticket)
        except BaseException:
            self._failed_flush = True
            raise
        finally:
            _retry(lambda: self.lock.release(ticket, committed), f"release the commit lock of {self.output}",
                   self.retry)
        self._lock_seen = ticket.generation

    def _flush_locked(self, ticket: CommitTicket) -> list[str]:
        """Write the part; return the commit record it wrote ([] when every video was committed elsewhere)."""
        # Commits that landed since this writer started: their videos are done, never written twice.
        self._read_commits_since(ticket)
        dropped = [v for v in self._videos if v in self._elsewhere]
        for video_id in dropped:
            del self._videos[video_id]
        if dropped:
            self.committed_elsewhere += len(dropped)
            log.info("%d video(s) were committed by another writer meanwhile; not written again", len(dropped))
        if not self._videos:
            return []
        key = layout.new_part_key(self._videos, self.lease.token)
        buffered: dict[str, list[dict[str, Any]]] = {}
        for rows in self._videos.values():
            for table, table_rows in rows.items():
                buffered.setdefault(table, []).extend(table_rows)
        # Tables a video declared (even with zero rows) are written too, so every table the run's tasks
        # produce exists and can be queried, even when no answer held a point.
        order = [t for t in self.tables if t != self.commit_table and t in buffered]
        tables = {t: to_table(t, buffered[t], schema=self.tables[t]) for t in [*order, self.commit_table]}
        for table in order:
            self._write(table, key, tables[table])
        faults.event("flush-data-written")
        pauses = faults.get("FLUSH_PAUSE_S")
        if pauses:  # TEST-ONLY: widen the window between data files and the commit file (kill tests)
            values = [float(v) for v in pauses.split(",")]
            time.sleep(values[min(self.parts_written, len(values) - 1)])
        # Past its lease or lock margin this writer may be presumed dead and its files cleaned up: stop here.
        self.lease.check()
        if not ticket.valid():
            raise LeaseError(f"writer {self.writer_id} held the commit lock too long; its part stays uncommitted")
        # The commit record goes last: until it exists, the files above are orphans a later run deletes.
        self._write(self.commit_table, key, tables[self.commit_table])
        self._own_keys.add(key)
        commit_path = layout.part_path(self.root, self.commit_table, self.run_date, key)
        self._commits[commit_path] = _commit_rows(tables[self.commit_table])
        faults.event("flush-committed")
        for table, data in tables.items():
            self.rows_written[table] = self.rows_written.get(table, 0) + data.num_rows
        self.videos_committed += len(self._videos)
        self._videos.clear()
        self.parts_written += 1
        return [commit_path]

    def _write(self, table: str, key: str, data: pa.Table) -> None:
        path = layout.part_path(self.root, table, self.run_date, key)
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        payload = buf.getvalue()
        _retry(lambda: layout.atomic_write(self.fs, path, payload), f"write {path}", self.retry)

    def table_url(self, table: str) -> str:
        return join_url(self.output, table)
