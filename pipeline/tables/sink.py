"""Sink: write the tables as Parquet, exactly once per video.

The protocol (why no Ray `write_parquet`: a table row may need every window of its video, e.g. stitched
tracks, and `write_parquet` appends duplicates on rerun):

1. Finished videos are buffered and flushed together as one *part*. A part's files in every table share
   one name, `part-<key>.parquet`, under `<table>/run_date=<date>/` (the names: `pipeline.tables.layout`).
2. Each file appears atomically (`layout.atomic_write`): local files are written under a temporary name
   and renamed; S3 objects are written with one PUT (visible only once complete).
3. The `videos` file is written last: it is the part's commit record. A video is done exactly when its
   `videos` row exists, so a rerun skips it and does no model work for it.
4. On start, any part file without its `videos` file (a run killed mid-flush) is deleted: those videos
   are not done and are processed again, so no row is ever duplicated.
5. Every storage call (list, read, write, delete) retries transient errors with backoff and jitter
   within a budget (`pipeline.io.retry`). A write that still fails raises: its part stays uncommitted, so
   the tables never show half a part, and the next run deletes the orphans and redoes those videos.

One run writes to one output at a time: `recover()` would delete a concurrent run's uncommitted parts.
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.secrets import redact
from pipeline.io.storage import get_fs, join_url
from pipeline.tables import layout
from pipeline.tables.schemas import COMMIT_TABLE, TABLES, to_table

log = logging.getLogger(__name__)


def _retry(fn: Any, what: str, policy: RetryPolicy = DEFAULT_POLICY) -> Any:
    """Retry transient storage errors with exponential backoff and jitter, within `policy`'s budget."""
    return retry_call(fn, redact(what), policy)


class TableSink:
    """Buffers finished videos' rows and writes them as committed parts."""

    def __init__(
        self,
        output: str,
        *,
        run_date: str,
        endpoint_url: str | None = None,
        tables: Mapping[str, pa.Schema] | None = None,
        commit_table: str = COMMIT_TABLE,
        retry: RetryPolicy = DEFAULT_POLICY,
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
        self._buffer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._buffered_videos: list[str] = []
        self.parts_written = 0
        self.rows_written: dict[str, int] = defaultdict(int)

    # -- start-up ---------------------------------------------------------------------------------

    def _parts(self, table: str) -> dict[str, str]:
        """Part files of `table`, path -> key."""
        base = f"{self.root}/{table}"
        found: dict[str, str] = _retry(lambda: layout.list_parts(self.fs, self.root, table), f"list {base}", self.retry)
        return found

    def recover(self) -> int:
        """Delete part files whose commit record is missing; return how many were removed."""
        self.fs.invalidate_cache()
        committed = set(self._parts(self.commit_table).values())
        removed = 0
        for table in self.tables:
            if table == self.commit_table:
                continue
            for path in self._parts(table):
                if layout.is_uncommitted(path, committed):
                    _retry(lambda p=path: self.fs.rm(p), f"delete orphan {path}", self.retry)
                    removed += 1
        # Temporary files of an interrupted local write.
        if self._local:
            for path in layout.temporary_files(self.fs, self.root):
                self.fs.rm(path)
        return removed

    def done_video_ids(self, *, statuses: Sequence[str] | None = None) -> set[str]:
        """Video ids with a committed `videos` row (optionally only with these statuses)."""
        parts = self._parts(self.commit_table)
        done: set[str] = set()
        for path in parts:
            table = _retry(lambda p=path: self._read(p, ["video_id", "status"]), f"read {path}", self.retry)
            ids = table.column("video_id").to_pylist()
            st = table.column("status").to_pylist()
            done.update(v for v, s in zip(ids, st, strict=True) if statuses is None or s in statuses)
        return done

    def _read(self, path: str, columns: list[str]) -> pa.Table:
        with self.fs.open(path, "rb") as fh:
            return pq.read_table(fh, columns=columns)

    # -- writing ---------------------------------------------------------------------------------

    def add_video(self, video_id: str, rows: Mapping[str, Sequence[dict[str, Any]]]) -> None:
        """Buffer one finished video's rows (table name -> rows); it must include its `videos` row."""
        if not rows.get(self.commit_table):
            raise ValueError(f"video {video_id} has no {self.commit_table} row")
        for table, table_rows in rows.items():
            if table not in self.tables:
                raise KeyError(f"unknown table {table}")
            self._buffer[table].extend(table_rows)
        self._buffered_videos.append(video_id)

    @property
    def pending_videos(self) -> int:
        return len(self._buffered_videos)

    def flush(self) -> None:
        """Write the buffered videos as one committed part."""
        if not self._buffered_videos:
            return
        key = layout.new_part_key(self._buffered_videos)
        # Tables a video declared (even with zero rows) are written too, so every table the run's tasks
        # produce exists and can be queried, even when no answer held a point.
        order = [t for t in self.tables if t != self.commit_table and t in self._buffer]
        tables = {t: to_table(t, self._buffer[t], schema=self.tables[t]) for t in [*order, self.commit_table]}
        for table in order:
            self._write(table, key, tables[table])
        faults.event("flush-data-written")
        pauses = faults.get("FLUSH_PAUSE_S")
        if pauses:  # TEST-ONLY: widen the window between data files and the commit file (kill tests)
            values = [float(v) for v in pauses.split(",")]
            time.sleep(values[min(self.parts_written, len(values) - 1)])
        # The commit record goes last: until it exists, the files above are orphans a rerun deletes.
        self._write(self.commit_table, key, tables[self.commit_table])
        faults.event("flush-committed")
        for table, data in tables.items():
            self.rows_written[table] += data.num_rows
        self._buffer.clear()
        self._buffered_videos.clear()
        self.parts_written += 1

    def _write(self, table: str, key: str, data: pa.Table) -> None:
        path = layout.part_path(self.root, table, self.run_date, key)
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        payload = buf.getvalue()
        _retry(lambda: layout.atomic_write(self.fs, path, payload), f"write {path}", self.retry)

    def table_url(self, table: str) -> str:
        return join_url(self.output, table)
