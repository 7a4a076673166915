"""One run, end to end: check the config, list the source, skip what is done, stream the Ray Data graph,
collect each video's answers, write committed Parquet parts, and summarise.

Exit codes (also what `jobs/` return): 0 every video ok; 3 partial (some videos failed or were only
partly processed, the rest is written); 1 failure (nothing succeeded, or the run itself broke);
2 bad configuration (nothing was started).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.collect import RowContext, VideoCollector, video_tables
from pipeline.config import ConfigError, RunConfig
from pipeline.decode import DecodeSettings
from pipeline.infer import HostSettings
from pipeline.model_store import is_remote_prefix
from pipeline.sampling import FrameSampler
from pipeline.sink import TableSink
from pipeline.source import SourceError, VideoRef, list_videos
from pipeline.storage import get_fs
from pipeline.tasks import build_tasks

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3


@dataclass
class RunSummary:
    run_id: str
    output: str
    videos_listed: int = 0
    videos_skipped: int = 0
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
            f"(of {self.videos_listed} listed) in {self.elapsed_s:.1f}s",
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
        lines.append(f"  tables under {self.output}")
        return "\n".join(lines)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


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


def _show_progress(config: RunConfig) -> bool:
    if config.ray.progress == "on":
        return True
    if config.ray.progress == "off":
        return False
    return sys.stderr.isatty()


def run_pipeline(config: RunConfig, *, echo: Any = print) -> RunSummary:
    """Run the whole pipeline for `config`; raise ConfigError before starting anything on bad config."""
    started = time.monotonic()
    config.check_ready()
    tasks = build_tasks(config.tasks.tasks, config.tasks.prompt_templates)
    endpoint = config.source.s3_endpoint_url
    check_model_reachable(config.model.model, endpoint)
    run_id = config.output.run_id or new_run_id()
    run_date = run_id[:8] if len(run_id) >= 8 and run_id[:8].isdigit() else datetime.now(UTC).strftime("%Y%m%d")
    run_date = f"{run_date[:4]}-{run_date[4:6]}-{run_date[6:8]}"
    summary = RunSummary(run_id=run_id, output=config.output.output)

    try:
        refs = list_videos(
            config.source.input,
            include=config.source.include,
            exclude=config.source.exclude,
            endpoint_url=endpoint,
            max_videos=config.source.max_videos,
        )
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    summary.videos_listed = len(refs)

    sink = TableSink(config.output.output, run_date=run_date, endpoint_url=endpoint)
    removed = sink.recover()
    if removed:
        echo(f"recovered: removed {removed} uncommitted part file(s) left by an interrupted run")
    done = sink.done_video_ids()
    todo: list[VideoRef] = [r for r in refs if r.video_id not in done]
    summary.videos_skipped = len(refs) - len(todo)
    echo(f"run {run_id}: {len(refs)} video(s) listed under {config.source.input}, {len(todo)} to process")
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    frame_size = config.decode.frame_size or model_frame_size(config.model.model, endpoint)
    sampler = FrameSampler(config.sampling.sampling_mode, config.sampling.num_frames, config.sampling.max_fps)
    decode_settings = DecodeSettings(
        frame_size=frame_size,
        sampler=sampler,
        window_s=config.window.window_s,
        overlap_s=config.window.overlap_s,
        decoder=config.decode.decoder,
        threads=config.decode.decode_threads,
        timeout_s=config.decode.decode_timeout_s,
        max_video_bytes=config.decode.max_video_bytes,
        endpoint_url=endpoint,
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

    from pipeline.graph import build_dataset, plan_resources

    data_ctx = ray.data.DataContext.get_current()
    show = _show_progress(config)
    data_ctx.enable_progress_bars = show
    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
    plan = plan_resources(
        cluster,
        num_videos=len(todo),
        num_model_actors=config.model.num_model_actors,
        num_gpus_per_actor=config.model.num_gpus_per_actor,
        model_cpus=config.model.model_num_cpus,
        decode_cpus=config.decode.decode_num_cpus,
        decode_concurrency=config.decode.decode_concurrency,
        batch_size=config.model.batch_size,
    )
    summary.plan = plan.describe()
    echo(
        f"cluster: {cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU, "
        f"{cluster.get('memory', 0) / 2**30:.1f} GiB; plan: {plan.describe()}"
    )
    ds = build_dataset(todo, decode_settings, host_settings, plan)
    collector = VideoCollector(num_tasks=len(tasks))
    for row in ds.iter_rows():
        finished = collector.add(dict(row))
        if finished is None:
            continue
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
        for err in tables.get("errors", []):
            summary.error_types[f"{err['stage']}:{err['error_type']}"] += 1
        sink.add_video(video["video_id"], tables)
        if video["status"] == "failed":
            echo(f"  failed: {video['uri']} ({video['error_summary']})")
        if sink.pending_videos >= config.output.flush_videos:
            sink.flush()
    sink.flush()
    summary.stats = ds.stats()
    leftover = collector.drain()
    if leftover:  # the stream ended without some windows: never write half a video
        echo(f"warning: {len(leftover)} video(s) incomplete at the end of the stream; a rerun processes them")
        summary.failed += len(leftover)
        summary.error_types["run:Incomplete"] += len(leftover)
    summary.rows_written = dict(sink.rows_written)
    summary.elapsed_s = time.monotonic() - started
    return summary
