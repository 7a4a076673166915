"""The done index: the commit table's work columns, compacted and sorted by URI, so neither a run's start nor
its done step reads the output's whole history, and the driver's memory does not grow with the corpus.

What is done lives in the commit table (`videos`): one part per flush, every night adding more. Reading all
of them serially on the driver at each start costs one GET per part and memory per video ever committed
(100k done videos: 34 s and 1,565 GETs; 10M: ~1 h). Instead:

- A *generation* of the index holds, sorted by `uri`, one row per distinct (video, status, work) of the
  commit parts it *covers*, in files of at most `ROWS_PER_FILE` rows, each file a URI range:

      _done/gen-00000007.json                   manifest: covered part keys, files with their URI ranges
      _done/gen-00000007-<token>/part-00000.parquet ...   rows (uri, video_id, status, work_keys, tasks, model_id)

  The manifest is created exclusively (`layout.create_exclusive`): it is the generation's publish point, and
  of two writers compacting at once one wins, the other removes its files and reads the winner's.
- A run reads the newest manifest (one GET) and, on the driver, only the commit parts the index does not
  cover yet (at most `--done-index-parts` of them, else it compacts first). Its done step (a Ray Data step
  of the listing stream, `pipeline.source.stream.skip_done`) looks each batch of listed videos up in the
  index files whose URI range holds them, and in those only the row groups (`ROWS_PER_GROUP` rows, sorted
  by URI) whose URI statistics overlap the batch: a listing streams in key order, so a batch reads one or
  two groups (ranged GETs), kept in small per-process caches (`FILES_CACHED`, `GROUPS_CACHED`).
- Compaction is a Ray Data job (read the last generation's files and the uncovered parts, sort by URI,
  write files): at a run's start when too many parts are uncovered, and at its end so the next run starts
  from a fresh index. Data files and commit records are never changed: the index is derived, and deleting
  `_done/` only makes the next start slower (it rebuilds it).
- Older generations are deleted once superseded for `KEEP_S` (a run that started before keeps reading its
  generation's files; a run longer than that fails its done step with a message naming the generation).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import itertools
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import MolmoBatchError
from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.storage import get_fs
from pipeline.results.work import DoneQuery, DoneRow, work_done
from pipeline.tables import layout
from pipeline.tables.leases import CommitLock

log = logging.getLogger(__name__)

INDEX_FOLDER = "_done"
ROWS_PER_FILE = 100_000  # ~3-8 MB a file
# A file's rows are sorted by URI and written in row groups of this many: a lookup reads (ranged GETs) and
# turns into Python rows only the groups whose URI statistics overlap its batch, not the file's 100k rows.
ROWS_PER_GROUP = 2_000
FILES_CACHED = 8  # open index files (their footers) a worker process keeps
GROUPS_CACHED = 64  # row groups a worker process keeps as rows (a listing batch needs one or two)
READ_BLOCK = 1 << 20  # bytes an index file is read by (a row group is ~100-300 KB)
KEEP_S = 24 * 3600.0  # how long a superseded generation stays for the runs still reading it
INDEX_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("work_keys", pa.list_(pa.string())),
        pa.field("tasks", pa.string()),
        pa.field("model_id", pa.string()),
    ]
)
_MANIFEST = re.compile(r"gen-(\d{8})\.json$")


class DoneIndexError(MolmoBatchError, RuntimeError):
    """The done index cannot be read (e.g. a generation deleted while a very long run still used it)."""


@dataclass(frozen=True)
class IndexFile:
    """One index file: its path (protocol-less, as the output's filesystem takes it) and URI range."""

    path: str
    first: str
    last: str
    rows: int


@dataclass(frozen=True)
class DoneGeneration:
    """One published generation of the index."""

    number: int
    files: tuple[IndexFile, ...]
    covers: frozenset[str]  # commit part keys whose rows it holds
    created_at: float = 0.0
    # It holds every commit of the output's commit-lock generations up to this one (None: not known, an
    # older version's index): a run starts from the lock's generations after it, which name their commit
    # records, instead of listing the commit table (`TableSink.list_commits(since=...)`).
    lock_generation: int | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def index_folder(root: str) -> str:
    return f"{root.rstrip('/')}/{INDEX_FOLDER}"


def _manifest_path(root: str, number: int) -> str:
    return f"{index_folder(root)}/gen-{number:08d}.json"


def _manifests(fs: Any, root: str) -> dict[int, str]:
    folder = index_folder(root)
    if not fs.exists(folder):
        return {}
    found = {}
    for path in fs.ls(folder, detail=False):
        m = _MANIFEST.search(path.rstrip("/"))
        if m:
            found[int(m.group(1))] = path
    return found


def _parse_manifest(root: str, blob: Mapping[str, Any]) -> DoneGeneration:
    folder = f"{index_folder(root)}/{blob['folder']}"
    files = tuple(IndexFile(f"{folder}/{f['name']}", f["first"], f["last"], int(f["rows"])) for f in blob["files"])
    lock = blob.get("lock_generation")
    return DoneGeneration(int(blob["generation"]), files, frozenset(blob["covers"]), float(blob.get("created_at", 0)),
                          None if lock is None else int(lock))


def latest_generation(fs: Any, root: str, retry: RetryPolicy = DEFAULT_POLICY) -> DoneGeneration | None:
    """The newest published generation (None: the output has no index yet)."""
    fs.invalidate_cache()
    manifests = retry_call(lambda: _manifests(fs, root), "list the done index", retry)
    if not manifests:
        return None
    number = max(manifests)
    raw = retry_call(lambda: fs.cat_file(manifests[number]), f"read {manifests[number]}", retry)
    return _parse_manifest(root, json.loads(raw))


def uncovered_parts(parts: Mapping[str, str], generation: DoneGeneration | None) -> dict[str, str]:
    """The commit parts (path -> key) the generation does not hold."""
    covered = generation.covers if generation is not None else frozenset()
    return {p: k for p, k in parts.items() if k not in covered}


# -- lookups (in the done step's worker processes) -------------------------------------------------------

_FILE_CACHE: OrderedDict[str, pq.ParquetFile] = OrderedDict()
_GROUP_CACHE: OrderedDict[tuple[str, int], dict[str, list[DoneRow]]] = OrderedDict()


def _cached(cache: OrderedDict[Any, Any], key: Any, make: Callable[[], Any], limit: int) -> Any:
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def groups_overlapping(metadata: pq.FileMetaData, lo: str, hi: str) -> list[int]:
    """The row groups whose `uri` statistics overlap [lo, hi] (a group without statistics: always)."""
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if "uri" not in names:
        return list(range(metadata.num_row_groups))
    column = names.index("uri")
    out = []
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.min <= hi and stats.max >= lo):
            out.append(g)
    return out


def _rows_by_video(table: pa.Table) -> dict[str, list[DoneRow]]:
    cols = [table.column(name).to_pylist() for name in DoneRow._fields]
    out: dict[str, list[DoneRow]] = {}
    for values in zip(*cols, strict=True):
        row = DoneRow(*values)
        out.setdefault(row.video_id, []).append(row)
    return out


def _read_parquet(fs: Any, path: str, columns: Sequence[str]) -> pa.Table:
    with fs.open(path, "rb") as fh:
        have = set(pq.read_schema(fh).names)
        fh.seek(0)
        return pq.read_table(fh, columns=[c for c in columns if c in have])


@dataclass
class DoneLookup:
    """Everything a done step needs to tell, for a batch of listed videos, which work is done: the index
    files of one generation (read on demand, cached per process) and the rows of the commit parts the
    index does not cover yet (read by the driver: at most `--done-index-parts` parts). Picklable: it is
    sent once to the done step's tasks."""

    output: str
    endpoint_url: str | None
    files: tuple[IndexFile, ...]
    query: DoneQuery
    recent_done: dict[str, set[str]] = field(default_factory=dict)
    recent_committed: dict[str, set[str]] | None = None  # with --retry-statuses: done with any status
    generation: int = 0
    retry: RetryPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        self.files = tuple(sorted(self.files, key=lambda f: (f.first, f.last)))
        self._firsts = [f.first for f in self.files]
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # a filesystem is opened again where the lookup runs
        return state

    def files_for(self, uris: Iterable[str]) -> list[IndexFile]:
        """The index files whose URI range holds any of `uris` (in file order)."""
        wanted: set[int] = set()
        for uri in uris:
            j = bisect.bisect_right(self._firsts, uri) - 1
            while j >= 0 and self.files[j].last >= uri:  # equal URIs may straddle two files
                wanted.add(j)
                j -= 1
        return [self.files[j] for j in sorted(wanted)]

    def _open(self, f: IndexFile) -> pq.ParquetFile:
        if self._fs is None:
            self._fs = get_fs(self.output, self.endpoint_url)[0]
        fs = self._fs
        try:
            return retry_call(lambda: pq.ParquetFile(fs.open(f.path, "rb", block_size=READ_BLOCK)), f"read {f.path}",
                              self.retry)
        except FileNotFoundError:
            raise DoneIndexError(
                f"done index generation {self.generation} of {self.output} was removed while this run read it "
                f"({f.path} is gone: generations are kept {KEEP_S / 3600:g} h after a newer one); rerun the "
                "same command"
            ) from None

    def _group_rows(self, f: IndexFile, group: int) -> dict[str, list[DoneRow]]:
        def read() -> pa.Table:
            handle = _cached(_FILE_CACHE, f.path, functools.partial(self._open, f), FILES_CACHED)
            try:
                return handle.read_row_group(group, columns=list(DoneRow._fields))
            except Exception:
                _FILE_CACHE.pop(f.path, None)  # a broken handle: the retry opens the file again
                raise

        return _cached(_GROUP_CACHE, (f.path, group),
                       lambda: _rows_by_video(retry_call(read, f"read {f.path}", self.retry)), GROUPS_CACHED)

    def _rows_for(self, ids: set[str], uris: set[str]) -> list[DoneRow]:
        if not uris:
            return []
        lo, hi = min(uris), max(uris)
        rows: list[DoneRow] = []
        for f in self.files_for(uris):
            handle = _cached(_FILE_CACHE, f.path, functools.partial(self._open, f), FILES_CACHED)
            for group in groups_overlapping(handle.metadata, lo, hi):
                by_video = self._group_rows(f, group)
                rows.extend(r for vid in ids for r in by_video.get(vid, ()))
        return rows

    def work_done(self, video_ids: Sequence[str], uris: Sequence[str]) -> tuple[dict[str, set[str]], dict[str, set[str]] | None]:
        """For these videos (and their URIs): the work keys done, and (with --retry-statuses) the work keys
        committed with any status."""
        ids = set(video_ids)
        rows = self._rows_for(ids, set(uris))
        done = work_done(rows, self.query)
        for vid in ids & self.recent_done.keys():
            done.setdefault(vid, set()).update(self.recent_done[vid])
        if self.recent_committed is None:
            return done, None
        committed = work_done(rows, self.query, any_status=True)
        for vid in ids & self.recent_committed.keys():
            committed.setdefault(vid, set()).update(self.recent_committed[vid])
        return done, committed


# -- compaction (a Ray Data job) --------------------------------------------------------------------------


def _read_rows(batch: pa.Table, output: str, endpoint_url: str | None, retry: RetryPolicy) -> pa.Table:
    """Commit parts / index files -> their rows in INDEX_SCHEMA (columns an old table lacks are null)."""
    fs = get_fs(output, endpoint_url)[0]
    tables = []
    for path in batch.column("path").to_pylist():
        t = retry_call(functools.partial(_read_parquet, fs, path, INDEX_SCHEMA.names), f"read {path}", retry)
        cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                for f in INDEX_SCHEMA]
        tables.append(pa.Table.from_arrays(cols, schema=INDEX_SCHEMA))
    return pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()


def _write_file(batch: pa.Table, output: str, endpoint_url: str | None, folder: str, retry: RetryPolicy) -> pa.Table:
    """One sorted batch -> one index file (exact duplicate rows dropped); returns its name and URI range."""
    fs = get_fs(output, endpoint_url)[0]
    seen: set[tuple[Any, ...]] = set()
    keep = []
    for i, row in enumerate(zip(*(batch.column(n).to_pylist() for n in INDEX_SCHEMA.names), strict=True)):
        key = tuple(tuple(v) if isinstance(v, list) else v for v in row)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    table = batch.take(pa.array(keep, type=pa.int64())) if len(keep) < batch.num_rows else batch
    name = f"part-{uuid.uuid4().hex}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROWS_PER_GROUP)
    retry_call(lambda: layout.atomic_write(fs, f"{folder}/{name}", buf.getvalue()), f"write {folder}/{name}", retry)
    uris = table.column("uri")
    return pa.table({"name": [name], "first": [uris[0].as_py()], "last": [uris[-1].as_py()], "rows": [table.num_rows]})


def compact(
    fs: Any,
    root: str,
    *,
    output: str,
    endpoint_url: str | None,
    commit_table: str,
    retry: RetryPolicy = DEFAULT_POLICY,
    rows_per_file: int = ROWS_PER_FILE,
    echo: Callable[[str], None] | None = None,
    parts: Mapping[str, str] | None = None,
    lock_generation: int | None = None,
    min_parts: int = 1,
) -> DoneGeneration | None:
    """Publish a new generation holding the last one and every commit part it does not cover, when at least
    `min_parts` are uncovered (Ray must be up). `parts`: the commit parts (path -> key) when the caller knows
    them, with `lock_generation`: the commit-lock generation up to which they hold every commit since the
    last generation's (a writer's `known_commits()`); else the commit table is listed here. Returns the
    newest generation (another writer's, when it published the same number first; the last one when
    nothing was compacted)."""
    import ray

    previous = latest_generation(fs, root, retry)
    if parts is None:
        # The lock's settled generation before the listing: every commit up to it is in the listing.
        lock_generation = retry_call(CommitLock(fs, root, "done-index").settled_generation,
                                     "read the commit lock", retry)
        parts = retry_call(lambda: layout.list_parts(fs, root, commit_table), f"list {root}/{commit_table}", retry)
    if lock_generation is not None and previous is not None and previous.lock_generation is not None:
        lock_generation = max(lock_generation, previous.lock_generation)
    new = uncovered_parts(parts, previous)
    if not new or len(new) < min_parts:
        return previous
    number = (previous.number if previous else 0) + 1
    folder = f"{index_folder(root)}/gen-{number:08d}-{uuid.uuid4().hex[:8]}"
    inputs = [f.path for f in previous.files] if previous else []
    inputs += sorted(new)
    started = time.monotonic()
    if echo:
        echo(f"done index: compacting {len(new)} commit part(s)"
             + (f" into generation {previous.number}'s {previous.rows} rows" if previous else ""))
    kw = {"output": output, "endpoint_url": endpoint_url, "retry": retry}
    ds = ray.data.from_items([{"path": p} for p in inputs], override_num_blocks=max(1, min(len(inputs), 256)))
    ds = ds.map_batches(_read_rows, fn_kwargs=kw, batch_format="pyarrow", batch_size=16, num_cpus=0.25)
    ds = ds.sort("uri")
    written = ds.map_batches(_write_file, fn_kwargs={**kw, "folder": folder}, batch_format="pyarrow",
                             batch_size=rows_per_file, num_cpus=0.25).take_all()
    files = sorted(written, key=lambda r: (r["first"], r["last"]))
    blob = {
        "generation": number,
        "created_at": time.time(),
        "folder": folder.rpartition("/")[2],
        "covers": sorted({*(previous.covers if previous else ()), *new.values()}),
        "lock_generation": lock_generation,
        "files": [{"name": r["name"], "first": r["first"], "last": r["last"], "rows": r["rows"]} for r in files],
    }
    payload = json.dumps(blob, sort_keys=True).encode()
    if not retry_call(lambda: layout.create_exclusive(fs, _manifest_path(root, number), payload),
                      "publish the done index", retry):
        # Another writer published this generation first: its index stands, ours goes.
        _remove(fs, folder)
        return latest_generation(fs, root, retry)
    generation = _parse_manifest(root, blob)
    if echo:
        echo(f"done index: generation {number}, {generation.rows} rows in {len(files)} file(s), "
             f"{len(generation.covers)} commit parts ({time.monotonic() - started:.1f} s)")
    _remove_superseded(fs, root, retry)
    return generation


def _remove(fs: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def _remove_superseded(fs: Any, root: str, retry: RetryPolicy, keep_s: float = KEEP_S) -> int:
    """Delete generations whose successor was published more than `keep_s` ago (never the newest two)."""
    manifests = _manifests(fs, root)
    numbers = sorted(manifests)[:-1]  # the newest stays, and the one before it (its successor is the newest)
    removed = 0
    for older, newer in itertools.pairwise(numbers):
        blob = json.loads(retry_call(functools.partial(fs.cat_file, manifests[newer]), "read a done index manifest", retry))
        if time.time() - float(blob.get("created_at", 0)) < keep_s:
            continue
        old = json.loads(retry_call(functools.partial(fs.cat_file, manifests[older]), "read a done index manifest", retry))
        _remove(fs, f"{index_folder(root)}/{old['folder']}")
        _remove(fs, manifests[older])
        removed += 1
    return removed
