"""The input as a stream: a Ray Data Dataset of VideoRef rows, listed by Ray tasks while the run works.

Nothing is collected on the driver. Each input form is listed where Ray runs it, in parallel:

- a folder or prefix: split into units on the driver (`listing.plan_units`: the first page of the first
  levels, a few requests), then one read task per unit lists it page by page (1,000 keys a request on
  S3) without any listing cache, include/exclude applied as it goes;
- WebDataset shards: one read task per shard indexes it in one forward pass (`shards.index_shard`);
- a manifest: read by Ray Data's own readers (`read_parquet`/`read_csv`/`read_json`), then turned into
  refs in tasks; rows without version columns are looked up there, many at a time (`manifest`).

`--max-videos N` is applied before any per-object work, and keeps the listing order of a plain listing:
a prefix is then listed by one task in key order and stops after N matches, shards are indexed in order
until N members, a manifest is cut to its first N rows before any lookup.

A `ListingTally` actor counts what went by (listed, input objects, left out by a job's filter, already
done, to process) so the driver can report it without holding the refs: `watch_listing` calls back once
the listing is complete; `listing_counts` gives the totals after the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from pipeline.config import SourceConfig
from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.results.work import decide_work
from pipeline.source import manifest, shards
from pipeline.source.listing import (
    KEYS_PER_REQUEST,
    Lister,
    ListUnit,
    ObjectsUnit,
    TreeUnit,
    listing_base,
    plan_units,
    refs_of,
    unit_pages,
    without_unmatched,
)
from pipeline.source.refs import SourceError, VideoRef

LISTING_TASKS = 8  # listing tasks at once: I/O bound, each a fraction of a CPU
LISTING_CPUS = 0.25
PLAN_LEVELS = 4 * LISTING_TASKS  # units the driver aims for: enough to keep the listing tasks busy
MANIFEST_ROWS_PER_TASK = 1000
# The steps between listing and decode (count, a job's filter, what is done) are light: a quarter CPU
# each, so they never hold a CPU a decode task could use.
STEP_CPUS = 0.25
REJECTED_KEPT = 10_000  # refs a job's filter left out, kept for the driver to report

REF_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("version", pa.string()),
        ("source_url", pa.string()),
        ("byte_offset", pa.int64()),
        ("byte_length", pa.int64()),
        ("source_metadata", pa.string()),
        ("source_error", pa.string()),
        ("task_ids", pa.list_(pa.int32())),
    ]
)


def refs_table(refs: Sequence[VideoRef]) -> pa.Table:
    """VideoRef rows as one Arrow block."""
    return pa.Table.from_pylist([r.as_row() for r in refs], schema=REF_SCHEMA)


def ref_of(row: dict[str, Any]) -> VideoRef:
    """A VideoRef from one row of the stream."""
    fields = {name: row[name] for name in REF_SCHEMA.names}
    fields["task_ids"] = tuple(int(i) for i in (fields["task_ids"] if fields["task_ids"] is not None else ()))
    return VideoRef(**fields)


# -- the tally ------------------------------------------------------------------------------------------


@dataclass
class ListingCounts:
    """What the listing saw: the numbers the run summary reports."""

    listed: int = 0  # videos listed (after include/exclude and --max-videos)
    input_objects: int = 0  # distinct objects: files, tar shards, manifest entries
    rejected: int = 0  # left out by the job's own filter
    skipped: int = 0  # already done
    retried: int = 0  # done before with a status this run retries
    to_process: int = 0
    some_tasks: int = 0  # videos to process for only some of the run's tasks (the others are done)
    pairs: int = 0  # video x task pairs to process
    complete: bool = False  # every listed video went through every step
    rejected_refs: list[dict[str, Any]] = field(default_factory=list)  # the first REJECTED_KEPT left out


class ListingTally:
    """Counts the stream's rows at each step (a Ray actor, owned by the driver; see module docstring).

    The listing is complete when its expected size is known (every read task said how many refs it
    produced, or a manifest's row count, capped by --max-videos) and that many rows went through the
    last step.
    """

    def __init__(self, *, limit: int | None = None, decisions: bool = True) -> None:
        self.counts = ListingCounts()
        self.shard_urls: set[str] = set()
        self.limit = limit
        self.readers: int | None = None
        self.readers_done = 0
        self.produced = 0
        self.expected_rows: int | None = None
        self.has_decision_step = decisions  # a skip_done step counts every listed video (the driver's graph)
        self._done = asyncio.Event()

    def expect_readers(self, count: int) -> None:
        self.readers = count
        self._check()

    def expect_rows(self, count: int) -> None:
        self.expected_rows = count
        self._check()

    def reader_done(self, produced: int) -> None:
        self.readers_done += 1
        self.produced += produced
        self._check()

    def listed(self, count: int, standalone_objects: int, shard_urls: list[str]) -> None:
        self.counts.listed += count
        self.shard_urls.update(shard_urls)
        self.counts.input_objects += standalone_objects
        self._check()

    def selected(self, rejected: list[dict[str, Any]]) -> None:
        self.counts.rejected += len(rejected)
        room = REJECTED_KEPT - len(self.counts.rejected_refs)
        self.counts.rejected_refs.extend(rejected[: max(0, room)])
        self._check()

    def decided(self, *, skipped: int, retried: int, kept: int, some_tasks: int = 0, pairs: int = 0) -> None:
        self.counts.skipped += skipped
        self.counts.retried += retried
        self.counts.to_process += kept
        self.counts.some_tasks += some_tasks
        self.counts.pairs += pairs
        self._check()

    def _expected(self) -> int | None:
        if self.expected_rows is not None:
            total = self.expected_rows
        elif self.readers is not None and self.readers_done >= self.readers:
            total = self.produced
        else:
            return None
        return min(total, self.limit) if self.limit else total

    def _check(self) -> None:
        c = self.counts
        expected = self._expected()
        listed_all = (expected is not None and c.listed >= expected) or bool(self.limit and c.listed >= self.limit)
        decided = c.rejected + c.skipped + c.to_process
        if listed_all and (not self.has_decision_step or decided >= c.listed):
            c.complete = True
            self._done.set()

    def snapshot(self) -> ListingCounts:
        c = self.counts
        return ListingCounts(**{**asdict(c), "input_objects": c.input_objects + len(self.shard_urls)})

    async def wait_complete(self) -> ListingCounts:
        await self._done.wait()
        return self.snapshot()


def new_tally(*, limit: int | None = None, decisions: bool = True) -> Any:
    """A ListingTally actor (no CPU) for one run; `decisions`: the graph has a `skip_done` step.

    Pinned to the driver's node: placed anywhere, losing that node mid-run would lose the listing's counts
    and fail the run (seen in tests/run/test_multinode.py); the driver's node going down ends the run anyway.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(ListingTally).options(scheduling_strategy=here).remote(limit=limit, decisions=decisions)


def listing_counts(tally: Any, *, wait_s: float = 0.0) -> ListingCounts:
    """The tally's counts; with `wait_s`, first wait (at most that long) for the listing to be complete.

    The steps report to the tally without waiting for it (a step never blocks on the actor), so right
    after the stream ends its last reports may still be on their way: the driver waits for them.
    """
    import ray

    if wait_s > 0:
        ready, _ = ray.wait([tally.wait_complete.remote()], timeout=wait_s)
        if ready:
            return ray.get(ready[0])
    return ray.get(tally.snapshot.remote())


class ListingWatch:
    """Calls `on_complete(counts)` from a background thread once the listing is complete; `stop()` ends
    the wait (at the end of the stream) and says whether the callback ran."""

    def __init__(self, tally: Any, on_complete: Callable[[ListingCounts], None]) -> None:
        import ray

        self._ref = tally.wait_complete.remote()
        self._stop = threading.Event()
        self.called = threading.Event()

        def wait() -> None:
            while not self._stop.is_set():
                ready, _ = ray.wait([self._ref], timeout=0.5)
                if ready:
                    on_complete(ray.get(self._ref))
                    self.called.set()
                    return

        self._thread = threading.Thread(target=wait, name="listing-watch", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.called.is_set()


def watch_listing(tally: Any, on_complete: Callable[[ListingCounts], None]) -> ListingWatch:
    return ListingWatch(tally, on_complete)


# -- steps the driver adds ------------------------------------------------------------------------------


def _count_listed(batch: pa.Table, tally: Any) -> pa.Table:

    sources = batch.column("source_url").to_pylist()
    shard_urls = sorted({s for s in sources if s})
    tally.listed.remote(batch.num_rows, sum(1 for s in sources if not s), shard_urls)
    return batch


def keep_selected(ds: Any, tally: Any, video_filter: Callable[[VideoRef], bool] | None) -> Any:
    """The videos `video_filter` keeps (a job's own selection; it runs in Ray tasks, so it must be
    picklable); the ones it leaves out are counted, and the first REJECTED_KEPT kept for the driver."""
    if video_filter is None:
        return ds

    def select(batch: pa.Table) -> pa.Table:

        rows = batch.to_pylist()
        keep = [video_filter(ref_of(r)) for r in rows]
        tally.selected.remote([r for r, k in zip(rows, keep, strict=True) if not k])
        return batch.filter(pa.array(keep, type=pa.bool_()))

    return ds.map_batches(select, batch_format="pyarrow", batch_size=None, num_cpus=STEP_CPUS)


_BROADCAST: dict[str, Any] = {}  # per worker process: the done lookup, fetched once, not once per block


def _broadcast_value(ref: Any) -> Any:
    import ray

    key = ref.hex()
    if key not in _BROADCAST:
        if len(_BROADCAST) >= 2:  # one run at a time per worker: drop the last run's values
            _BROADCAST.clear()
        _BROADCAST[key] = ray.get(ref)
    return _BROADCAST[key]


class DoneWork(Protocol):
    """What the done step asks of the output's committed work (`pipeline.tables.done_index.DoneLookup`)."""

    def work_done(
        self, video_ids: Sequence[str], uris: Sequence[str]
    ) -> tuple[dict[str, set[str]], dict[str, set[str]] | None]: ...


def skip_done(ds: Any, tally: Any, lookup: DoneWork, keys: Sequence[str]) -> Any:
    """Per video, the run's tasks still to do (`pipeline.results.work`): videos with nothing missing are
    dropped, the others carry their `task_ids`. Counts skipped, retried (a missing key committed before
    with a status this run retries), videos needing only some tasks, and pairs.

    `lookup` answers, per batch, which work keys its videos have done (and committed at all): it reads the
    output's done index where the batch's URIs lie, so no step holds the whole history. It goes to the
    object store once (`ray.put`) and each worker process unpickles it once (with its file cache).
    """
    import ray

    lookup_ref = ray.put(lookup)
    key_list = list(keys)

    def decide(batch: pa.Table) -> pa.Table:
        ids = batch.column("video_id").to_pylist()
        done_keys, committed_keys = _broadcast_value(lookup_ref).work_done(ids, batch.column("uri").to_pylist())
        d = decide_work(ids, done_keys, key_list, committed_keys)
        kept = batch.filter(pa.array([vid in d.todo for vid in ids], type=pa.bool_()))
        task_ids = [list(d.todo[vid]) for vid in kept.column("video_id").to_pylist()]
        kept = kept.set_column(kept.schema.get_field_index("task_ids"), "task_ids",
                               pa.array(task_ids, type=pa.list_(pa.int32())))
        tally.decided.remote(skipped=d.skipped, retried=d.retried, kept=len(task_ids),
                             some_tasks=d.some_tasks, pairs=d.pairs)
        return kept

    # The lookup is closed over by reference (an ObjectRef), never pickled into every task.
    return ds.map_batches(decide, batch_format="pyarrow", batch_size=None, num_cpus=STEP_CPUS)


# -- the readers ----------------------------------------------------------------------------------------


def _capped(pages: Iterable[list[VideoRef]], limit: int | None) -> Iterator[list[VideoRef]]:
    """The non-empty pages, cut to `limit` refs in all (None: no limit); stops reading at the limit, so no
    page past it is listed (--max-videos before any per-object work)."""
    left = limit
    for refs in pages:
        if left is not None:
            refs = refs[:left]
            left -= len(refs)
        if refs:
            yield refs
        if left is not None and left <= 0:
            return


@dataclass(frozen=True)
class _UnitJob:
    """One listing unit of a folder/prefix."""

    lister: Lister
    unit: ListUnit
    base: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    limit: int | None = None  # --max-videos: stop after this many (the unit is then the whole tree, in order)

    def pages(self) -> Iterator[list[VideoRef]]:
        return _capped(
            ([page] if isinstance(page, VideoRef) else refs_of(
                self.lister, page, base=self.base, include=self.include, exclude=self.exclude)
             for page in unit_pages(self.lister, self.unit)),
            self.limit,
        )


@dataclass(frozen=True)
class _ShardJob:
    """Tar shards indexed one after another (one shard per job, or all of them in order under --max-videos)."""

    urls: tuple[str, ...]
    suffixes: tuple[str, ...]
    endpoint_url: str | None
    retry: RetryPolicy
    limit: int | None = None

    def pages(self) -> Iterator[list[VideoRef]]:
        return _capped(
            (shards.index_shard(url, video_suffixes=self.suffixes, endpoint_url=self.endpoint_url, retry=self.retry)
             for url in self.urls),
            self.limit,
        )


@dataclass(frozen=True)
class _ManifestJob:
    """A presigned manifest (its signature is in the URL's query, which Ray's readers would take for part
    of a path): read through fsspec in one task, refs made a thousand rows at a time."""

    url: str
    uri_column: str
    endpoint_url: str | None
    retry: RetryPolicy
    limit: int | None = None

    def pages(self) -> Iterator[list[VideoRef]]:
        table = manifest.read_table(self.url, endpoint_url=self.endpoint_url)
        if self.limit is not None:
            table = table.slice(0, self.limit)
        for batch in table.to_batches(max_chunksize=1000):
            yield manifest.refs_from_rows(batch.to_pylist(), uri_column=self.uri_column,
                                          endpoint_url=self.endpoint_url, retry=self.retry)


Job = _UnitJob | _ShardJob | _ManifestJob


def _read_job(job: Job, tally: Any) -> Iterator[pa.Table]:

    produced = 0
    for refs in job.pages():
        produced += len(refs)
        yield refs_table(refs)
    if tally is not None:
        tally.reader_done.remote(produced)


def _jobs_dataset(jobs: Sequence[Job], name: str, tally: Any, known: Sequence[VideoRef] = ()) -> Any:
    """One read task per job; `known`: refs the driver already holds (the first pages it planned with),
    streamed at once, ahead of any task."""
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class RefsDatasource(Datasource):
        def get_name(self) -> str:
            return name

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [
                ReadTask(lambda job=job: _read_job(job, tally), meta, schema=REF_SCHEMA, per_task_row_limit=per_task_row_limit)
                for job in jobs
            ]

    if tally is not None:
        tally.expect_readers.remote(len(jobs) + (1 if known else 0))
        if known:
            tally.reader_done.remote(len(known))
    parts = [ray.data.from_arrow(refs_table(known))] if known else []
    if jobs:
        parts.append(ray.data.read_datasource(
            RefsDatasource(), override_num_blocks=len(jobs), num_cpus=LISTING_CPUS, concurrency=min(LISTING_TASKS, len(jobs))
        ))
    if not parts:
        return ray.data.from_arrow(REF_SCHEMA.empty_table())
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _manifest_refs(batch: pa.Table, uri_column: str, endpoint_url: str | None, retry: RetryPolicy) -> pa.Table:
    rows = batch.to_pylist()
    return refs_table(manifest.refs_from_rows(rows, uri_column=uri_column, endpoint_url=endpoint_url, retry=retry))


def _count_in_background(rows: Any, tally: Any) -> None:
    """Tell the tally the manifest's row count (Parquet: from its footer; CSV/JSON: counted by a Ray
    task) without holding up the stream."""

    def count() -> None:
        # An unreadable manifest is reported by the stream itself; the count only feeds the listing line.
        with contextlib.suppress(Exception):
            tally.expect_rows.remote(int(rows.count()))

    threading.Thread(target=count, name="manifest-count", daemon=True).start()


class ListingPlan:
    """An input checked and split on the driver (a few requests, no Ray): `dataset()` is the stream.

    Raises (from the constructor):
        SourceError: the input does not exist, cannot be listed, matches no shard, or a manifest lacks
            its URI column.
    """

    def __init__(self, source: SourceConfig, *, retry: RetryPolicy = DEFAULT_POLICY, page_size: int = KEYS_PER_REQUEST) -> None:
        self.source = source
        self.retry = retry
        self.jobs: list[Job] = []
        self.known: list[VideoRef] = []  # refs of the first pages the driver read to plan (bounded by the plan)
        self.empty = False  # known on the driver already: the input holds no video
        self.kind = (
            "manifest" if manifest.is_manifest_input(source.input) else "shards" if shards.is_shard_input(source.input) else "prefix"
        )
        limit = source.max_videos
        if self.kind == "manifest":
            manifest.check_manifest(source.input, uri_column=source.manifest_uri_column, endpoint_url=source.s3_endpoint_url)
            if manifest.is_signed(source.input):
                self.jobs = [_ManifestJob(source.input, source.manifest_uri_column, source.s3_endpoint_url, retry, limit)]
        elif self.kind == "shards":
            urls = shards.expand_shards(source.input, source.s3_endpoint_url)
            if not urls:
                raise SourceError(f"no shards match {source.input}")
            suffixes = tuple(shards.video_suffixes(source.include))
            groups = [tuple(urls)] if limit else [(u,) for u in urls]  # --max-videos: in order, until N members
            self.jobs = [_ShardJob(g, suffixes, source.s3_endpoint_url, retry, limit) for g in groups]
        else:
            lister = Lister(source.input, source.s3_endpoint_url, retry, page_size=page_size)
            include, exclude = tuple(source.include), tuple(source.exclude)
            units = plan_units(lister, max_levels=1 if limit else PLAN_LEVELS)
            base = listing_base(lister, units)
            units = without_unmatched(units, base=base, include=include, exclude=exclude)
            self.empty = not units
            if limit and units and base == lister.root:  # a folder (not one file): the first N in key order
                units = [TreeUnit(lister.root)]  # one task, stopping after the first N matches
            # Objects the planning pages returned are refs already: they start the stream before any task.
            for unit in units:
                if isinstance(unit, ObjectsUnit):
                    self.known.extend(refs_of(lister, list(unit.objects), base=base, include=include, exclude=exclude))
            self.jobs = [_UnitJob(lister, u, base, include, exclude, limit) for u in units if not isinstance(u, ObjectsUnit)]

    def dataset(self, tally: Any = None) -> Any:
        """The videos as a lazy Ray Data Dataset of VideoRef rows (REF_SCHEMA), listed in Ray tasks as the
        stream is consumed; `tally` (a `new_tally()` actor) counts them. Needs Ray started."""
        source = self.source
        if self.kind == "manifest" and not self.jobs:
            ds = self._manifest_dataset(tally)
        else:
            name = {"shards": "IndexShards", "manifest": "ReadManifest"}.get(self.kind, "ListVideos")
            ds = _jobs_dataset(self.jobs, name, tally, self.known)
        if source.max_videos:
            ds = ds.limit(source.max_videos)
        if tally is not None:
            ds = ds.map_batches(_count_listed, fn_kwargs={"tally": tally}, batch_format="pyarrow", batch_size=None,
                                num_cpus=STEP_CPUS)
        return ds

    def _manifest_dataset(self, tally: Any) -> Any:
        import ray

        from pipeline.io.storage import get_fs

        source = self.source
        fs, path = get_fs(source.input, source.s3_endpoint_url)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        where: dict[str, Any] = {} if protocol in ("file", "local") else {"filesystem": fs}
        reader = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}[
            manifest.manifest_format(source.input)
        ]
        rows = reader(path, file_extensions=None, **where)
        if tally is not None:
            _count_in_background(rows, tally)
        if source.max_videos:
            rows = rows.limit(source.max_videos)  # before any lookup: only these rows are ever read further
        # A thousand rows a task: rows that need a lookup (no version column) are looked up by several
        # tasks at once, each HEAD_THREADS at a time, instead of one task for the whole file.
        return rows.repartition(target_num_rows_per_block=MANIFEST_ROWS_PER_TASK).map_batches(
            _manifest_refs,
            fn_kwargs={"uri_column": source.manifest_uri_column, "endpoint_url": source.s3_endpoint_url, "retry": self.retry},
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=LISTING_CPUS,
            compute=ray.data.TaskPoolStrategy(size=LISTING_TASKS),
        )


def plan_listing(source: SourceConfig, *, retry: RetryPolicy = DEFAULT_POLICY, page_size: int = KEYS_PER_REQUEST) -> ListingPlan:
    """Check `source` and split it into listing tasks, on the driver, before Ray starts (see ListingPlan)."""
    return ListingPlan(source, retry=retry, page_size=page_size)


def video_dataset(
    source: SourceConfig, *, retry: RetryPolicy = DEFAULT_POLICY, tally: Any = None, page_size: int = KEYS_PER_REQUEST
) -> Any:
    """The videos of `source` as a lazy Ray Data Dataset of VideoRef rows: `plan_listing(...).dataset(tally)`.

    Raises:
        SourceError: see ListingPlan.
    """
    return plan_listing(source, retry=retry, page_size=page_size).dataset(tally)
