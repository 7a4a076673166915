"""Sink: write the tables as Parquet, exactly once per video.

The protocol (why no Ray `write_parquet`: a table row may need every window of its video, e.g. stitched
tracks, and `write_parquet` appends duplicates on rerun):

1. Finished videos are buffered and flushed together as one *part*. A part's files in every table share
   one name, `part-<key>.parquet`, under `<table>/run_date=<date>/`.
2. Each file appears atomically: local files are written under a temporary name and renamed; S3 objects
   are written with one PUT (visible only once complete).
3. The `videos` file is written last: it is the part's commit record. A video is done exactly when its
   `videos` row exists, so a rerun skips it and does no model work for it.
4. On start, any part file without its `videos` file (a run killed mid-flush) is deleted: those videos
   are not done and are processed again, so no row is ever duplicated.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schemas import COMMIT_TABLE, TABLES, to_table
from pipeline.storage import get_fs, join_url

log = logging.getLogger(__name__)
_PART_RE = re.compile(r"part-([0-9a-f]{24})\.parquet$")


def _retry(fn: Any, what: str, attempts: int = 5, base_delay: float = 0.5) -> Any:
    """Retry transient storage errors with exponential backoff and jitter."""
    import random

    for attempt in range(attempts):
        try:
            return fn()
        except (OSError, TimeoutError, ConnectionError) as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)) or attempt == attempts - 1:
                raise
            delay = base_delay * 2**attempt * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class TableSink:
    """Buffers finished videos' rows and writes them as committed parts."""

    def __init__(self, output: str, *, run_date: str, endpoint_url: str | None = None) -> None:
        self.output = output.rstrip("/")
        self.run_date = run_date
        self.fs, self.root = get_fs(self.output, endpoint_url)
        self.root = self.root.rstrip("/")
        self._local = (self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]) in ("file", "local")
        self._buffer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._buffered_videos: list[str] = []
        self.parts_written = 0
        self.rows_written: dict[str, int] = defaultdict(int)

    # -- start-up ---------------------------------------------------------------------------------

    def _parts(self, table: str) -> dict[str, str]:
        base = f"{self.root}/{table}"
        if not self.fs.exists(base):
            return {}
        found: dict[str, str] = {}
        for path in self.fs.find(base):
            m = _PART_RE.search(path)
            if m:
                found[path] = m.group(1)
        return found

    def recover(self) -> int:
        """Delete part files whose commit record is missing; return how many were removed."""
        self.fs.invalidate_cache()
        committed = set(self._parts(COMMIT_TABLE).values())
        removed = 0
        for table in TABLES:
            if table == COMMIT_TABLE:
                continue
            for path, key in self._parts(table).items():
                if key not in committed:
                    _retry(lambda p=path: self.fs.rm(p), f"delete orphan {path}")
                    removed += 1
        # Temporary files of an interrupted local write.
        if self._local and self.fs.exists(self.root):
            for path in self.fs.find(self.root):
                if os.path.basename(path).startswith(".tmp-"):
                    self.fs.rm(path)
        return removed

    def done_video_ids(self, *, statuses: Sequence[str] | None = None) -> set[str]:
        """Video ids with a committed `videos` row (optionally only with these statuses)."""
        parts = self._parts(COMMIT_TABLE)
        done: set[str] = set()
        for path in parts:
            table = _retry(lambda p=path: self._read(p, ["video_id", "status"]), f"read {path}")
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
        if not rows.get(COMMIT_TABLE):
            raise ValueError(f"video {video_id} has no {COMMIT_TABLE} row")
        for table, table_rows in rows.items():
            if table not in TABLES:
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
        # The key is derived from the content's video ids (plus a nonce, so two runs never collide).
        key = hashlib.sha256(
            ("\n".join(sorted(self._buffered_videos)) + uuid.uuid4().hex).encode()
        ).hexdigest()[:24]
        # Tables a video declared (even with zero rows) are written too, so every table the run's tasks
        # produce exists and can be queried, even when no answer held a point.
        order = [t for t in TABLES if t != COMMIT_TABLE and t in self._buffer] + [COMMIT_TABLE]
        for table in order:
            data = to_table(table, self._buffer[table])
            self._write(table, key, data)
            self.rows_written[table] += data.num_rows
        self._buffer.clear()
        self._buffered_videos.clear()
        self.parts_written += 1

    def _write(self, table: str, key: str, data: pa.Table) -> None:
        folder = f"{self.root}/{table}/run_date={self.run_date}"
        path = f"{folder}/part-{key}.parquet"
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        payload = buf.getvalue()
        if self._local:
            os.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.tmp-{key}-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the whole file or none
        else:
            _retry(lambda: self.fs.pipe_file(path, payload), f"write {path}")

    def table_url(self, table: str) -> str:
        return join_url(self.output, table)
