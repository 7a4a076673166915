"""One run, end to end: check the config, list the source, skip what is done, stream the Ray Data graph,
collect each video's answers, write committed Parquet parts, and summarise.

Exit codes (also what `jobs/` return): 0 every video ok; 3 partial (some videos failed or were only
partly processed, the rest is written); 1 failure (nothing succeeded, or the run itself broke);
2 bad configuration (nothing was started).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pipeline.config import ConfigError, RunConfig
from pipeline.errors import PipelineError
from pipeline.io.retry import retry_call
from pipeline.io.secrets import install_log_redaction, redact
from pipeline.io.storage import get_fs
from pipeline.ledger import AttemptLedger
from pipeline.observe.metrics import generate_seconds, stage_times
from pipeline.observe.progress import RunProgress
from pipeline.results.collect import VideoCollector, clean_row, video_tables
from pipeline.results.tasks import Task
from pipeline.results.work import DoneQuery, work_keys
from pipeline.run import settings
from pipeline.run.graph import StreamStop, build_dataset
from pipeline.run.preflight import no_videos_message, preflight
from pipeline.run.record import now_utc, runs_row, write_runs_row
from pipeline.run.resources import ClusterInfo, unmet_needs
from pipeline.run.summary import VIDEO_STATUSES, RunSummary, new_run_id, run_date_for
from pipeline.source.refs import SourceError, VideoRef
from pipeline.source.stream import (
    ListingCounts,
    ListingPlan,
    keep_selected,
    listing_counts,
    new_tally,
    plan_listing,
    ref_of,
    skip_done,
    watch_listing,
)
from pipeline.tables import layout
from pipeline.tables.done_index import DoneGeneration, DoneLookup, compact, latest_generation
from pipeline.tables.layout import ConditionalWriteUnsupported
from pipeline.tables.leases import LeaseError, read_leases
from pipeline.tables.schemas import COMMIT_TABLE
from pipeline.tables.sink import TableSink

log = logging.getLogger("pipeline")

LISTING_REPORTS_WAIT_S = 30.0  # after the stream: the listing steps' last counts on their way to the tally


def _init_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # An embedded single-machine Ray: keep it on loopback and quiet.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    num_cpus = config.ray.ray_num_cpus or max(os.cpu_count() or 1, 4)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


class RunDriver:
    """One run in three steps: `prepare` (config, model, listing, what is already done), `stream` (the Ray
    Data graph, each finished video collected and committed), `finish` (stats, incomplete videos, the
    run record). `run()` does all three; a job may call them one by one.

    `video_filter` (optional) keeps only the listed videos it returns True for (a job's own selection).
    It runs in the Ray tasks that list (so it must be picklable); the videos it left out are passed to it
    once more on the driver after the stream (the first 10,000), so a job can report them.
    """

    def __init__(
        self, config: RunConfig, *, echo: Any = print, video_filter: Callable[[VideoRef], bool] | None = None
    ) -> None:
        self.config = config
        self.echo = _redacting(echo)  # no credential reaches a log line or the console (pipeline.io.secrets)
        self.video_filter = video_filter
        self.started = time.monotonic()
        self.started_at = now_utc()
        self.storage_retry = settings.storage_retry(config)
        self.run_id = config.output.run_id or new_run_id()
        self.run_date = run_date_for(self.run_id)
        self.summary = RunSummary(run_id=self.run_id, output=config.output.output)
        self.tasks: list[Task] = []
        self.refs: Any = None  # the videos to process: a Ray Data Dataset of VideoRef rows, listed as it streams
        self.tally: Any = None  # pipeline.source.stream.ListingTally: what the listing saw
        self.work_keys: list[str] = []
        self.frame_size = 0
        self.sink: TableSink | None = None

    def run(self) -> RunSummary:
        """Prepare, stream and finish; raise ConfigError before starting anything on bad config."""
        if self.prepare():
            self.stream()
        return self.finish()

    # -- prepare -----------------------------------------------------------------------------------

    def prepare(self) -> bool:
        """Check the config and the model, start Ray, set up the listing (it streams: nothing is listed
        here but a few first pages) and what is committed. True: stream() has work to look for."""
        config, echo = self.config, self.echo
        install_log_redaction()
        preflight(config)  # every configuration check (model, output writable, ...), before Ray starts
        self.tasks = settings.tasks_of(config)
        endpoint = config.source.s3_endpoint_url
        # -- listing (streamed: pipeline.source.stream) --------------------------------------------------
        listing = self._plan_listing()  # a bad input fails here (exit 2), before Ray starts
        if listing.empty:
            echo(no_videos_message(config))
            return False
        self._check_run_id_unused()
        _init_ray(config)  # then Ray, before any listing work: the listing runs in Ray tasks as the run goes
        self.tally = new_tally(limit=config.source.max_videos)
        self.refs = keep_selected(listing.dataset(self.tally), self.tally, self.video_filter)
        # ------------------------------------------------------------------------------------------------

        sink = TableSink(
            config.output.output, run_date=self.run_date, endpoint_url=endpoint, retry=self.storage_retry,
            writer_id=self.run_id, purpose="pipeline run", lease_ttl_s=config.output.lease_ttl_s,
            commit_lock_ttl_s=config.output.commit_lock_ttl_s,
            on_wait=lambda holder: echo(f"waiting for writer {holder} to finish its commit on this output"),
        )
        lookup_start = self._index_before_start(sink)
        try:
            sink.start()
        except LeaseError as exc:
            raise ConfigError(redact(exc)) from None
        except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
            raise ConfigError(
                f"output {config.output.output}: cannot write there ({type(exc).__name__}: {redact(exc)}); pass a "
                "writable folder or s3:// prefix to --output"
            ) from None
        except ConditionalWriteUnsupported as exc:
            raise ConfigError(
                f"output {config.output.output}: the store cannot create a file only if absent ({redact(exc)}), so "
                "concurrent writers could not be kept apart; use a store with conditional writes (AWS S3, "
                "SeaweedFS, MinIO) or a local folder"
            ) from None
        self.sink = sink
        for info in read_leases(sink.fs, sink.root):
            if info.live() and info.writer_id != self.run_id:
                echo(f"note: another writer is active on this output: {info.describe()}; videos it commits "
                     "first are not written twice")
        removed = sink.recover()
        if removed:
            echo(f"recovered: removed {removed} uncommitted part file(s) left by a writer that is gone")
        # -- listing: what is done, a step of the stream (it reads the done index where each batch lies) ----
        self.refs = skip_done(self.refs, self.tally, self.done_lookup(sink, lookup_start), self.work_keys)
        echo(f"run {self.run_id}: listing {config.source.input} as the run goes (counts once it is complete)")
        # ------------------------------------------------------------------------------------------------
        return True

    def _index_before_start(self, sink: TableSink) -> DoneGeneration | None:
        """The output's done index, compacted first when more commit parts than --done-index-parts are
        uncovered (a first run over a big output made before the index, or many runs without one), so the
        driver never reads more than that many parts; the sink skips the parts it covers. The commit parts
        are listed once, by the sink, for this decision and its start."""
        current = latest_generation(sink.fs, sink.root, self.storage_retry)
        # Starting from the index's commit-lock generation: only the commits since, not the whole table.
        parts = sink.list_commits(since=current.lock_generation if current is not None else None)
        generation = self._compact(sink, parts=parts, lock_generation=sink.lock_seen,
                                   min_parts=self.config.output.done_index_parts + 1)
        if generation is not None:
            sink.skip_indexed(generation.covers)
        return generation

    def _compact(self, sink: TableSink, *, min_parts: int, parts: dict[str, str],
                 lock_generation: int) -> DoneGeneration | None:
        """The done index, compacted when at least `min_parts` of `parts` (every commit up to the lock's
        `lock_generation` that the index may not hold) are uncovered."""
        return compact(sink.fs, sink.root, output=self.config.output.output,
                       endpoint_url=self.config.source.s3_endpoint_url, commit_table=COMMIT_TABLE,
                       retry=self.storage_retry, echo=self.echo, parts=parts, lock_generation=lock_generation,
                       min_parts=min_parts)

    def done_lookup(self, sink: TableSink, generation: DoneGeneration | None = None) -> DoneLookup:
        """What the done step needs: the done index's files and the rows of the commit parts it does not
        cover (read here, at most --done-index-parts of them).

        Work identity: a video is done for a task when a committed row holds that task's work key (task,
        prompt, model, revision, sampling, windows): a new task or model over an old corpus does only that.
        Done = a committed row whose status is not retried; the others are processed again.
        """
        config = self.config
        self.tasks = self.tasks or settings.tasks_of(config)
        self.frame_size = settings.frame_size_of(config)
        self.work_keys = work_keys(self.tasks, settings.work_settings(config, self.frame_size))
        retry = set(config.output.retry_statuses)
        query = DoneQuery(tuple(self.work_keys), tuple(self.tasks), config.model.model,
                          tuple(s for s in VIDEO_STATUSES if s not in retry) if retry else None)
        return DoneLookup(
            output=config.output.output, endpoint_url=config.source.s3_endpoint_url,
            files=generation.files if generation is not None else (), query=query,
            recent_done=sink.done_work(query), recent_committed=sink.done_work(query, any_status=True) if retry else None,
            generation=generation.number if generation is not None else 0, retry=self.storage_retry,
        )

    def _check_run_id_unused(self) -> None:
        """A run id names one run's history: a second run with the same id would overwrite its record."""
        fs, root = get_fs(self.config.output.output, self.config.source.s3_endpoint_url)
        record = layout.run_record_path(root.rstrip("/"), self.run_date, self.run_id)
        if retry_call(lambda: fs.exists(record), "check the runs record", self.storage_retry):
            raise ConfigError(
                f"--run-id {self.run_id} was already used on this output (its record is {record}); give this run "
                "a new id, or leave --run-id out to get a fresh one"
            )

    def _plan_listing(self) -> ListingPlan:
        """The input checked and split into listing tasks (a few requests; a bad input is a ConfigError)."""
        try:
            return plan_listing(self.config.source, retry=self.storage_retry)
        except SourceError as exc:
            raise ConfigError(redact(exc)) from None

    def _listing_complete(self, counts: ListingCounts, progress: RunProgress) -> None:
        """Say what the listing found, once it is complete (from the listing watch's thread)."""
        config, echo = self.config, self.echo
        if counts.retried:
            echo(f"retrying {counts.retried} video(s) whose status was {' or '.join(sorted(config.output.retry_statuses))}")
        if counts.some_tasks:
            echo(f"{counts.some_tasks} video(s) need only some of the tasks (new tasks or settings since they were done)")
        echo(f"run {self.run_id}: {counts.listed} video(s) listed under {config.source.input}, {counts.to_process} to "
             f"process ({counts.pairs} video x task pair(s))")
        progress.total_videos = counts.to_process

    def _count_listing(self, counts: ListingCounts) -> None:
        """The listing's totals into the summary; the videos a job's filter left out go back to it."""
        summary = self.summary
        summary.videos_listed = counts.listed
        summary.input_objects = counts.input_objects
        summary.videos_skipped = counts.skipped
        summary.videos_retried = counts.retried
        if self.video_filter is not None:
            for row in counts.rejected_refs:
                self.video_filter(ref_of(row))

    # -- stream ------------------------------------------------------------------------------------

    def stream(self) -> None:
        """Start Ray, build the graph for the videos to do, and commit each video as it finishes."""
        config, echo, summary, tasks = self.config, self.echo, self.summary, self.tasks
        assert self.sink is not None, "prepare() first"
        sink = self.sink
        frame_size = self.frame_size
        decode_settings = settings.decode_settings(config, frame_size)
        host_settings = settings.host_settings(config, tasks)
        ctx = settings.row_context(config, self.run_id, {t.name: k for t, k in zip(tasks, self.work_keys, strict=True)})

        _init_ray(config)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        data_ctx = ray.data.DataContext.get_current()
        _set_reliability_limits(data_ctx, frame_size, config)
        # Counts model calls and decodes that killed their process, across restarts (Molmo2Host, decode); dies
        # with the driver.
        # Pinned to the driver's node: on a multi-node cluster it would otherwise land anywhere, and losing that
        # node would fail every model call after it (seen in tests/run/test_multinode.py).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ledger = ray.remote(num_cpus=0)(AttemptLedger).options(scheduling_strategy=here).remote()
        host_settings = dataclasses.replace(host_settings, ledger=ledger)
        decode_settings = dataclasses.replace(decode_settings, ledger=ledger)  # counts decodes that killed their task
        # pipeline.observe.progress.RunProgress replaces Ray Data's bars (two live displays garble a terminal).
        data_ctx.enable_progress_bars = False
        cluster = ClusterInfo.from_ray_nodes(ray.nodes())  # the alive nodes, each with its resources
        # The listing streams: how many videos is not known yet (blocks follow the videos, graph.py).
        plan = settings.resource_plan(config, cluster, num_videos=config.source.max_videos or 2**31 - 1)
        summary.plan = plan.describe()
        echo(cluster.describe())
        echo(f"plan: {plan.describe()}")
        for warning in plan.warnings:
            echo(f"warning: {warning}")
        ds = build_dataset(self.refs, decode_settings, host_settings, plan, stall_timeout_s=config.ray.stall_timeout_s)
        collector = VideoCollector(num_tasks=len(tasks))
        progress = RunProgress(config.ray.progress, 0, num_tasks=len(tasks))  # the total comes with the listing
        stream_stop = StreamStop(ds)

        def listing_complete(counts: ListingCounts) -> None:
            self._listing_complete(counts, progress)
            if counts.to_process == 0:  # no row can come: end the stream now, not after the model actors start
                stream_stop.stop()

        listing = watch_listing(self.tally, listing_complete)
        call_latencies: set[float] = set()  # one value per model call (see observe.metrics.generate_seconds)
        taken: dict[str, set[tuple[Any, ...]]] = defaultdict(set)  # rows already taken, per unfinished video
        finished_ids: set[str] = set()
        duplicates = 0
        stream_error: BaseException | None = None
        try:
            for raw in progress.track(ds.iter_rows()):
                row = clean_row(dict(raw))
                vid = str(row["video_id"])
                key = (int(row["window_index"]), row.get("task"), row.get("query"))
                if vid in finished_ids or key in taken[vid]:
                    # A retried task (its process died) re-emitted rows already taken: never count or write twice.
                    duplicates += 1
                    continue
                taken[vid].add(key)
                finished = collector.add(row)
                if finished is None:
                    continue
                finished_ids.add(vid)
                taken.pop(vid, None)
                t_collect = time.perf_counter()
                ids = finished[0].get("task_ids") or []
                tables = video_tables(finished, [tasks[i] for i in ids] if ids else tasks, ctx)
                video = tables["videos"][0]
                self._count(video, finished, tables, call_latencies)
                sink.add_video(video["video_id"], tables)
                if video["status"] == "failed":
                    echo(f"  failed: {video['uri']} ({video['error_summary']})")
                if sink.pending_videos >= config.output.flush_videos:
                    sink.flush()
                progress.video_done(video["status"])
                summary.write_s += time.perf_counter() - t_collect
        except Exception as exc:  # the stream broke (a Ray failure, storage down past its budget, ...)
            stream_error = exc
        # -- listing: its totals, now that the stream ended ------------------------------------------------
        counts = listing_counts(self.tally, wait_s=LISTING_REPORTS_WAIT_S if stream_error is None else 0.0)
        if not listing.stop() and stream_error is None:
            self._listing_complete(counts, progress)
        self._count_listing(counts)
        if counts.listed == 0 and stream_error is None:
            echo(no_videos_message(config))
        # ------------------------------------------------------------------------------------------------
        t_collect = time.perf_counter()
        try:
            # What finished is committed even when the stream broke: a rerun then redoes only the rest.
            sink.flush()
        except Exception as exc:
            stream_error = stream_error or exc
        summary.write_s += time.perf_counter() - t_collect
        progress.close()
        if stream_error is not None:
            summary.elapsed_s = time.monotonic() - self.started
            self._record(error=f"{type(stream_error).__name__}: {stream_error}")
            sink.close()
            committed = sink.videos_committed
            known = f" of {counts.to_process}" if counts.complete else ""  # the listing may not have finished
            remaining = counts.to_process - committed if counts.complete else 1
            raise PipelineError(
                redact(f"run stopped: {type(stream_error).__name__}: {stream_error}")[:4000]
                + "".join(f"\n{need}" for need in unmet_needs(plan))  # e.g. the only decode node died
                + f"\n{committed} video(s){known} were committed"
                + ("; rerun the same command to process the others" if remaining > 0 else "")
            ) from None
        if duplicates:
            log.info("dropped %d duplicate row(s) re-emitted by retried tasks", duplicates)
        try:
            summary.stats = ds.stats()
            stages = stage_times(ds)
            summary.decode_s, summary.model_s = stages["decode"], stages["model"]
        except Exception as exc:  # statistics are nice to have; never fail a finished run over them
            log.warning("no execution stats: %s", redact(exc))
        summary.generate_s = generate_seconds(sorted(call_latencies))
        leftover = collector.drain()
        # Videos that never reached the collector: their decode or model block failed past Ray's bounded
        # retries (max_errored_blocks lets the run go on). Nothing of them is written; a rerun processes them.
        missing = max(0, counts.to_process - len(finished_ids) - len(leftover))
        incomplete = len(leftover) + missing
        if incomplete:  # the stream ended without some windows: never write half a video
            echo(f"warning: {incomplete} video(s) incomplete at the end of the stream; a rerun processes them")
            summary.failed += incomplete
            summary.error_types["run:Incomplete"] += incomplete

    def _count(
        self, video: dict[str, Any], rows: list[dict[str, Any]], tables: dict[str, list[dict[str, Any]]],
        call_latencies: set[float],
    ) -> None:
        """Add one finished video to the summary."""
        summary = self.summary
        summary.ok += video["status"] == "ok"
        summary.partial += video["status"] == "partial"
        summary.failed += video["status"] == "failed"
        summary.windows += int(video["windows"] or 0)
        for r in rows:
            if r.get("task"):
                summary.answers += 1
                summary.prompt_tokens += int(r.get("prompt_tokens") or 0)
                summary.generated_tokens += int(r.get("generated_tokens") or 0)
                if r.get("latency_s"):
                    call_latencies.add(float(r["latency_s"]))
        for err in tables.get("errors", []):
            summary.error_types[f"{err['stage']}:{err['error_type']}"] += 1

    # -- finish ------------------------------------------------------------------------------------

    def finish(self) -> RunSummary:
        """Total the rows written, time the run, write its `runs` record, give the output lease back."""
        if self.sink is not None:
            self.summary.rows_written = dict(self.sink.rows_written)
            self.summary.videos_committed_elsewhere = self.sink.committed_elsewhere
            self._compact_after_run(self.sink)
        self.summary.elapsed_s = time.monotonic() - self.started
        self._record()
        return self.summary

    def _compact_after_run(self, sink: TableSink) -> None:
        """Fold this run's (and others') commit parts into the done index when --done-index-parts are
        uncovered, so the next run reads few parts at start. The tables are written already: a failure
        here is a warning (the next run compacts)."""
        try:
            parts, lock_generation = sink.known_commits()
        except Exception as exc:
            sink.close()
            self.echo(f"warning: could not read the output's new commits to compact the done index "
                      f"({type(exc).__name__}: {redact(exc)}); the next run does")
            return
        sink.close()  # the lease goes back before the compaction: it writes no table part
        try:
            self._compact(sink, parts=parts, lock_generation=lock_generation, min_parts=self.config.output.done_index_parts)
        except Exception as exc:
            self.echo(f"warning: could not compact the done index ({type(exc).__name__}: {redact(exc)}); the next "
                      "run does")

    def _record(self, error: str | None = None) -> None:
        """Write the run's `runs` row (a failure to write it is a warning: the tables are already written)."""
        config = self.config
        try:
            row = runs_row(self.summary, config, started_at=self.started_at, finished_at=now_utc(), error=error)
            retry_call(
                lambda: write_runs_row(config.output.output, self.run_date, row, endpoint_url=config.source.s3_endpoint_url),
                "write the runs record",
                self.storage_retry,
            )
        except Exception as exc:
            self.echo(f"warning: could not write the runs record: {type(exc).__name__}: {exc}")


def run_pipeline(
    config: RunConfig, *, echo: Any = print, video_filter: Callable[[VideoRef], bool] | None = None
) -> RunSummary:
    """Run the whole pipeline for `config` (see `RunDriver`); raise ConfigError before starting anything on
    bad config, PipelineError when the run itself breaks (what finished is committed)."""
    return RunDriver(config, echo=echo, video_filter=video_filter).run()


def _redacting(echo: Any) -> Callable[[Any], None]:
    def out(message: Any) -> None:
        echo(redact(message))

    return out


def _set_reliability_limits(data_ctx: Any, frame_size: int, config: RunConfig) -> None:
    """Ray Data settings for a run that loses nothing and keeps memory bounded.

    - `max_errored_blocks = -1`: Python errors never reach Ray (decode and the model turn them into
      error rows), so a failed block means work whose process kept dying past the bounded retries
      (graph.retry_limits). The run goes on; those videos are reported incomplete and a rerun does them.
    - `target_max_block_size` ~ 2 windows: decode yields one window per row (frames uint8 at model
      resolution) and Ray keeps at most 2 unconsumed blocks per streaming task, so one decode task holds
      about 3 blocks = 6 windows of frames, however long its video; the object store budget and Ray Data's
      backpressure bound how many windows wait for the model.
    """
    data_ctx.max_errored_blocks = -1
    window_bytes = settings.sampler_of(config).num_frames * frame_size * frame_size * 3
    data_ctx.target_max_block_size = int(min(128 * 2**20, max(8 * 2**20, 2 * window_bytes)))
