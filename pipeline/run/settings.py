"""The one place where a `RunConfig` becomes the stages' settings objects.

The stages take small frozen settings (`DecodeSettings`, `HostSettings`) that travel to Ray workers; the
driver, `pipeline serve` and the benchmarks build them here, so a config field reaches a stage the same way
whichever command runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline import faults
from pipeline.config import RunConfig
from pipeline.io.retry import RetryPolicy
from pipeline.model.engine import HostSettings
from pipeline.model.molmo2 import DEFAULT_GEOMETRY, check_frame_budget, model_frame_size
from pipeline.results.collect import RowContext
from pipeline.results.tasks import Task, build_tasks
from pipeline.results.work import WorkSettings
from pipeline.run.resources import ClusterInfo, ResourcePlan, plan_resources
from pipeline.video.decode import DecodeSettings
from pipeline.video.sampling import FrameSampler


def check_ready(config: RunConfig) -> None:
    """Everything checked before a run starts: the config's own checks, then that a window's frames fit
    Molmo2's context (informative: counted at the released geometry, before the checkpoint is read)."""
    config.check_ready()
    check_frame_budget(config.sampling.num_frames, DEFAULT_GEOMETRY)


def storage_retry(config: RunConfig) -> RetryPolicy:
    """How long transient storage errors are retried (listing, fetch, writes)."""
    return RetryPolicy(budget_s=config.source.storage_retry_budget_s)


def tasks_of(config: RunConfig) -> list[Task]:
    """The questions every window is asked."""
    return build_tasks(config.tasks.tasks, config.tasks.prompt_templates)


def frame_size_of(config: RunConfig) -> int:
    """The model's square frame side: `decode.frame_size` when set, else what the checkpoint declares."""
    return config.decode.frame_size or model_frame_size(config.model.model, config.source.s3_endpoint_url)


def sampler_of(config: RunConfig) -> FrameSampler:
    """How frames are picked in a window."""
    return FrameSampler(config.sampling.sampling_mode, config.sampling.num_frames, config.sampling.max_fps)


def decode_settings(config: RunConfig, frame_size: int) -> DecodeSettings:
    """The decode stage's settings (test hooks captured from this process's environment)."""
    return DecodeSettings(
        frame_size=frame_size,
        sampler=sampler_of(config),
        window_s=config.window.window_s,
        overlap_s=config.window.overlap_s,
        decoder=config.decode.decoder,
        threads=config.decode.decode_threads or max(1, round(config.decode.decode_num_cpus)),
        timeout_s=config.decode.decode_timeout_s,
        max_video_bytes=config.decode.max_video_bytes,
        endpoint_url=config.source.s3_endpoint_url,
        retry=storage_retry(config),
        crash_retries=config.decode.decode_crash_retries,
        test_hooks=faults.capture(),
    )


def host_settings(config: RunConfig, tasks: Sequence[Task]) -> HostSettings:
    """The model host's settings (test hooks captured from this process's environment)."""
    return HostSettings(
        model=config.model.model,
        tasks=tuple(tasks),
        revision=config.model.revision,
        device=config.model.device,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        max_new_tokens=config.model.max_new_tokens,
        cache_dir=config.model.model_cache_dir,
        endpoint_url=config.source.s3_endpoint_url,
        crash_retries=config.model.model_crash_retries,
        test_hooks=faults.capture(),
    )


def work_settings(config: RunConfig, frame_size: int | None) -> WorkSettings:
    """The settings that change answers, the part of every work key that is not the task."""
    return WorkSettings(
        model_id=config.model.model,
        revision=config.model.revision,
        sampling_mode=config.sampling.sampling_mode,
        num_frames=config.sampling.num_frames,
        max_fps=config.sampling.max_fps,
        window_s=config.window.window_s,
        overlap_s=config.window.overlap_s,
        frame_size=frame_size,
        max_new_tokens=config.model.max_new_tokens,
    )


def row_context(config: RunConfig, run_id: str, work_keys: Mapping[str, str] | None = None) -> RowContext:
    """What every output row of this run records about how it was produced (`work_keys`: task name -> key)."""
    return RowContext(
        work_keys=dict(work_keys or {}),
        run_id=run_id,
        model_id=config.model.model,
        max_new_tokens=config.model.max_new_tokens,
        sampling_mode=config.sampling.sampling_mode,
        num_frames=config.sampling.num_frames,
        max_fps=config.sampling.max_fps,
    )


def resource_plan(config: RunConfig, cluster: ClusterInfo, *, num_videos: int) -> ResourcePlan:
    """How many decode tasks and model actors this run asks of `cluster`."""
    return plan_resources(
        cluster,
        num_videos=num_videos,
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
