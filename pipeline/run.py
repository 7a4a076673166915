"""One run, end to end: check the config, list the source, skip what is done, stream the Ray Data graph,
collect each video's answers, write committed Parquet parts, and summarise.

Exit codes (also what `jobs/` return): 0 every video ok; 3 partial (some videos failed or were only
partly processed, the rest is written); 1 failure (nothing succeeded, or the run itself broke);
2 bad configuration (nothing was started).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline import testhooks
from pipeline.collect import RowContext, VideoCollector, clean_row, video_tables
from pipeline.config import ConfigError, RunConfig
from pipeline.decode import DecodeSettings
from pipeline.infer import HostSettings
from pipeline.ledger import AttemptLedger
from pipeline.model_store import is_remote_prefix
from pipeline.progress import RunProgress, generate_seconds, now_utc, runs_row, stage_times, write_runs_row
from pipeline.retry import RetryPolicy, retry_call
from pipeline.sampling import FrameSampler
from pipeline.secrets import install_log_redaction, redact
from pipeline.sink import TableSink
from pipeline.source import SourceError, VideoRef, list_videos
from pipeline.storage import get_fs
from pipeline.tasks import build_tasks

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3
VIDEO_STATUSES = ("ok", "partial", "failed")  # the `videos` table's status values


@dataclass
class RunSummary:
    run_id: str
    output: str
    videos_listed: int = 0
    input_objects: int = 0  # distinct objects read: files, tar shards, manifest entries
    videos_skipped: int = 0
    videos_retried: int = 0  # processed again because of output.retry_statuses (counted in processed)
    ok: int = 0
    partial: int = 0
    failed: int = 0
    windows: int = 0
    answers: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    rows_written: dict[str, int] = field(default_factory=dict)
    plan: str = ""
    stats: str = ""  # Ray Data's execution stats of the graph (operators, tasks, actors, times)
    elapsed_s: float = 0.0
    # Time per stage, summed over parallel tasks/actors (work time, not elapsed; see pipeline.progress).
    decode_s: float = 0.0  # decode tasks' wall time (fetch, probe, decode, resize)
    model_s: float = 0.0  # model actors' call time (processor + generate)
    generate_s: float = 0.0  # generate calls alone (distinct per-call latencies)
    write_s: float = 0.0  # driver: parsing answers into rows and writing Parquet

    @property
    def processed(self) -> int:
        return self.ok + self.partial + self.failed

    @property
    def exit_code(self) -> int:
        if self.failed == 0 and self.partial == 0:
            return EXIT_OK
        if self.ok == 0 and self.partial == 0:
            return EXIT_FAILED
        return EXIT_PARTIAL

    def render(self) -> str:
        rate = self.windows / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"run {self.run_id}: {self.processed} video(s) processed, {self.videos_skipped} already done "
            f"(of {self.videos_listed} listed from {self.input_objects} input object(s)) in {self.elapsed_s:.1f}s",
            f"  videos ok={self.ok} partial={self.partial} failed={self.failed}; windows={self.windows} "
            f"({rate:.2f}/s); answers={self.answers}",
            f"  tokens: prompt={self.prompt_tokens} generated={self.generated_tokens}",
        ]
        if self.plan:
            lines.append(f"  plan: {self.plan}")
        if self.error_types:
            lines.append("  errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.error_types.items())))
        if self.rows_written:
            lines.append("  rows written: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rows_written.items())))
        if self.processed:
            per = self.elapsed_s if self.elapsed_s > 0 else float("nan")
            lines.append(
                f"  time per stage (summed over parallel workers): decode {self.decode_s:.1f}s, "
                f"model {self.model_s:.1f}s (generate {self.generate_s:.1f}s), write {self.write_s:.1f}s"
            )
            lines.append(
                f"  throughput: {self.processed / per:.3f} videos/s, {self.windows / per:.2f} windows/s, "
                f"{self.generated_tokens / per:.1f} generated tokens/s"
            )
        lines.append(f"  tables under {self.output}")
        return "\n".join(lines)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def run_date_for(run_id: str) -> str:
    """The `run_date` partition (YYYY-MM-DD) of a run: its id's first 8 digits (YYYYMMDD), else today (UTC)."""
    day = run_id[:8] if len(run_id) >= 8 and run_id[:8].isdigit() else datetime.now(UTC).strftime("%Y%m%d")
    return f"{day[:4]}-{day[4:6]}-{day[6:8]}"


def check_model_reachable(model: str, endpoint_url: str | None) -> None:
    """Fail at start, with a fix, when the model cannot be found (before any actor starts)."""
    if model.startswith("file://"):
        model = model[len("file://") :]
    if is_remote_prefix(model):
        try:
            fs, path = get_fs(model, endpoint_url)
            ok = fs.exists(path.rstrip("/") + "/config.json")
        except Exception as exc:
            raise ConfigError(f"--model {model}: cannot read it ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise ConfigError(f"--model {model}: no config.json under that prefix; point it at a saved checkpoint")
        return
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ConfigError(f"--model {model}: the directory has no config.json; build one with "
                              "`python -m pipeline build-tiny-model --out DIR` or download a checkpoint")
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"--model {model}: not a directory and not a Hub id like allenai/Molmo2-8B")


def model_frame_size(model: str, endpoint_url: str | None) -> int:
    """The square frame side the model's video processor expects (378 for Molmo2)."""
    if model.startswith("file://"):
        model = model[len("file://") :]
    names = ("video_preprocessor_config.json", "processor_config.json", "preprocessor_config.json")
    for name in names:
        data: dict[str, Any] | None = None
        try:
            if is_remote_prefix(model):
                fs, path = get_fs(model, endpoint_url)
                target = path.rstrip("/") + "/" + name
                if fs.exists(target):
                    data = json.loads(fs.cat_file(target))
            elif os.path.isdir(model):
                p = os.path.join(model, name)
                if os.path.isfile(p):
                    with open(p) as fh:
                        data = json.load(fh)
            else:
                from huggingface_hub import hf_hub_download

                with open(hf_hub_download(model, name)) as fh:
                    data = json.load(fh)
        except Exception:
            data = None
        if data:
            size = _find_size(data)
            if size:
                return size
    return 378


def _find_size(data: dict[str, Any]) -> int | None:
    for key in ("video_processor", "size"):
        value = data.get(key)
        if isinstance(value, dict):
            if "height" in value:
                return int(value["height"])
            nested = _find_size(value)
            if nested:
                return nested
    return None


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


def run_pipeline(
    config: RunConfig, *, echo: Any = print, video_filter: Callable[[VideoRef], bool] | None = None
) -> RunSummary:
    """Run the whole pipeline for `config`; raise ConfigError before starting anything on bad config.

    `video_filter` (optional) keeps only the listed videos it returns True for (a job's own selection).
    """
    started = time.monotonic()
    started_at = now_utc()
    echo = _redacting(echo)  # no credential reaches a log line or the console (pipeline.secrets)
    install_log_redaction()
    config.check_ready()
    tasks = build_tasks(config.tasks.tasks, config.tasks.prompt_templates)
    endpoint = config.source.s3_endpoint_url
    try:
        check_model_reachable(config.model.model, endpoint)
    except ConfigError as exc:
        raise ConfigError(redact(exc)) from None
    storage_retry = RetryPolicy(budget_s=config.source.storage_retry_budget_s)
    run_id = config.output.run_id or new_run_id()
    run_date = run_date_for(run_id)
    summary = RunSummary(run_id=run_id, output=config.output.output)

    try:
        refs = list_videos(
            config.source.input,
            include=config.source.include,
            exclude=config.source.exclude,
            endpoint_url=endpoint,
            max_videos=config.source.max_videos,
            manifest_uri_column=config.source.manifest_uri_column,
            retry=storage_retry,
        )
    except SourceError as exc:
        raise ConfigError(redact(exc)) from None
    if video_filter is not None:
        refs = [r for r in refs if video_filter(r)]
    summary.videos_listed = len(refs)
    summary.input_objects = len({r.source_url or r.uri for r in refs})

    sink = TableSink(config.output.output, run_date=run_date, endpoint_url=endpoint, retry=storage_retry)
    removed = sink.recover()
    if removed:
        echo(f"recovered: removed {removed} uncommitted part file(s) left by an interrupted run")
    done = sink.done_video_ids()
    retry = set(config.output.retry_statuses)
    if retry:  # done = has a committed row whose status is not retried; the others are processed again
        keep = [s for s in VIDEO_STATUSES if s not in retry]
        committed, done = done, sink.done_video_ids(statuses=keep)
        summary.videos_retried = sum(1 for r in refs if r.video_id in committed and r.video_id not in done)
        if summary.videos_retried:
            echo(f"retrying {summary.videos_retried} video(s) whose status was {' or '.join(sorted(retry))}")
    todo: list[VideoRef] = [r for r in refs if r.video_id not in done]
    summary.videos_skipped = len(refs) - len(todo)
    echo(f"run {run_id}: {len(refs)} video(s) listed under {config.source.input}, {len(todo)} to process")
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        _record_run(summary, config, run_date, started_at, echo)
        return summary

    frame_size = config.decode.frame_size or model_frame_size(config.model.model, endpoint)
    sampler = FrameSampler(config.sampling.sampling_mode, config.sampling.num_frames, config.sampling.max_fps)
    decode_settings = DecodeSettings(
        frame_size=frame_size,
        sampler=sampler,
        window_s=config.window.window_s,
        overlap_s=config.window.overlap_s,
        decoder=config.decode.decoder,
        threads=config.decode.decode_threads or max(1, round(config.decode.decode_num_cpus)),
        timeout_s=config.decode.decode_timeout_s,
        max_video_bytes=config.decode.max_video_bytes,
        endpoint_url=endpoint,
        retry=storage_retry,
        crash_retries=config.decode.decode_crash_retries,
        test_hooks=testhooks.capture(),
    )
    host_settings = HostSettings(
        model=config.model.model,
        tasks=tuple(tasks),
        revision=config.model.revision,
        device=config.model.device,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        max_new_tokens=config.model.max_new_tokens,
        cache_dir=config.model.model_cache_dir,
        endpoint_url=endpoint,
        crash_retries=config.model.model_crash_retries,
        test_hooks=testhooks.capture(),
    )
    ctx = RowContext(
        run_id=run_id,
        model_id=config.model.model,
        max_new_tokens=config.model.max_new_tokens,
        sampling_mode=config.sampling.sampling_mode,
        num_frames=config.sampling.num_frames,
        max_fps=config.sampling.max_fps,
    )

    _init_ray(config)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.graph import ClusterInfo, build_dataset, plan_resources, unmet_needs

    data_ctx = ray.data.DataContext.get_current()
    _set_reliability_limits(data_ctx, frame_size, config)
    # Counts model calls and decodes that killed their process, across restarts (Molmo2Host, decode); dies
    # with the driver.
    # Pinned to the driver's node: on a multi-node cluster it would otherwise land anywhere, and losing that
    # node would fail every model call after it (seen in tests/test_multinode.py).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = ray.remote(num_cpus=0)(AttemptLedger).options(scheduling_strategy=here).remote()
    host_settings = dataclasses.replace(host_settings, ledger=ledger)
    decode_settings = dataclasses.replace(decode_settings, ledger=ledger)  # counts decodes that killed their task
    # pipeline.progress.RunProgress replaces Ray Data's bars (two live displays garble a terminal).
    data_ctx.enable_progress_bars = False
    cluster = ClusterInfo.from_ray_nodes(ray.nodes())  # the alive nodes, each with its resources
    plan = plan_resources(
        cluster,
        num_videos=len(todo),
        num_model_actors=config.model.num_model_actors,
        num_gpus_per_actor=config.model.num_gpus_per_actor,
        model_cpus=config.model.model_num_cpus,
        decode_cpus=config.decode.decode_num_cpus,
        decode_concurrency=config.decode.decode_concurrency,
        batch_size=config.model.batch_size,
        min_model_actors=config.model.min_model_actors,
        max_model_actors=config.model.max_model_actors,
        decode_resource=config.decode.decode_resource,
    )
    summary.plan = plan.describe()
    echo(cluster.describe())
    echo(f"plan: {plan.describe()}")
    for warning in plan.warnings:
        echo(f"warning: {warning}")
    ds = build_dataset(todo, decode_settings, host_settings, plan, stall_timeout_s=config.ray.stall_timeout_s)
    collector = VideoCollector(num_tasks=len(tasks))
    progress = RunProgress(config.ray.progress, len(todo), num_tasks=len(tasks))
    call_latencies: set[float] = set()  # one value per model call (see progress.generate_seconds)
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
            tables = video_tables(finished, tasks, ctx)
            video = tables["videos"][0]
            summary.ok += video["status"] == "ok"
            summary.partial += video["status"] == "partial"
            summary.failed += video["status"] == "failed"
            summary.windows += int(video["windows"] or 0)
            for r in finished:
                if r.get("task"):
                    summary.answers += 1
                    summary.prompt_tokens += int(r.get("prompt_tokens") or 0)
                    summary.generated_tokens += int(r.get("generated_tokens") or 0)
                    if r.get("latency_s"):
                        call_latencies.add(float(r["latency_s"]))
            for err in tables.get("errors", []):
                summary.error_types[f"{err['stage']}:{err['error_type']}"] += 1
            sink.add_video(video["video_id"], tables)
            if video["status"] == "failed":
                echo(f"  failed: {video['uri']} ({video['error_summary']})")
            if sink.pending_videos >= config.output.flush_videos:
                sink.flush()
            progress.video_done(video["status"])
            summary.write_s += time.perf_counter() - t_collect
    except Exception as exc:  # the stream broke (a Ray failure, storage down past its budget, ...)
        stream_error = exc
    t_collect = time.perf_counter()
    try:
        # What finished is committed even when the stream broke: a rerun then redoes only the rest.
        sink.flush()
    except Exception as exc:
        stream_error = stream_error or exc
    summary.write_s += time.perf_counter() - t_collect
    progress.close()
    if stream_error is not None:
        summary.elapsed_s = time.monotonic() - started
        _record_run(summary, config, run_date, started_at, echo, error=f"{type(stream_error).__name__}: {stream_error}")
        raise PipelineError(
            redact(f"run stopped: {type(stream_error).__name__}: {stream_error}")[:4000]
            + "".join(f"\n{need}" for need in unmet_needs(plan))  # e.g. the only decode node died
            + f"\n{len(finished_ids)} video(s) were committed; rerun the same command to finish the others"
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
    missing = [r for r in todo if r.video_id not in finished_ids and r.video_id not in leftover]
    incomplete = len(leftover) + len(missing)
    if incomplete:  # the stream ended without some windows: never write half a video
        echo(f"warning: {incomplete} video(s) incomplete at the end of the stream; a rerun processes them")
        summary.failed += incomplete
        summary.error_types["run:Incomplete"] += incomplete
    summary.rows_written = dict(sink.rows_written)
    summary.elapsed_s = time.monotonic() - started
    _record_run(summary, config, run_date, started_at, echo)
    return summary


class PipelineError(RuntimeError):
    """The run itself broke (not one video): committed parts stay, a rerun finishes the rest."""


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
    window_bytes = config.sampling.num_frames * frame_size * frame_size * 3
    data_ctx.target_max_block_size = int(min(128 * 2**20, max(8 * 2**20, 2 * window_bytes)))


def _record_run(
    summary: RunSummary, config: RunConfig, run_date: str, started_at: datetime, echo: Any, error: str | None = None
) -> None:
    """Write the run's `runs` row (a failure to write it is a warning: the tables are already written)."""
    try:
        row = runs_row(summary, config, started_at=started_at, finished_at=now_utc(), error=error)
        retry_call(
            lambda: write_runs_row(config.output.output, run_date, row, endpoint_url=config.source.s3_endpoint_url),
            "write the runs record",
            RetryPolicy(budget_s=config.source.storage_retry_budget_s),
        )
    except Exception as exc:
        echo(f"warning: could not write the runs record: {type(exc).__name__}: {exc}")
