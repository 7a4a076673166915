"""The one place where a `RunConfig` becomes the stages' settings objects.

The stages take small frozen settings (`DecodeSettings`, `HostSettings`) that travel to Ray workers; the
driver, `pipeline serve` and the benchmarks build them here, so a config field reaches a stage the same way
whichever command runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

from pipeline import faults
from pipeline.config import ConfigError, RunConfig
from pipeline.io.retry import RetryPolicy
from pipeline.model.engine import HostSettings
from pipeline.model.molmo2 import (
    Molmo2Geometry,
    Molmo2Sampling,
    check_frame_budget,
    checkpoint_geometry,
    checkpoint_sampling,
)
from pipeline.results.collect import RowContext
from pipeline.results.tasks import Task, build_tasks, sampling_groups
from pipeline.results.work import WorkSettings
from pipeline.run.resources import ClusterInfo, ResourcePlan, plan_resources
from pipeline.video.decode import DecodeSettings
from pipeline.video.sampling import FrameSampler


def check_ready(config: RunConfig) -> None:
    """Everything checked before a run starts: the config's own checks, then that a window's frames fit the
    model's context (at the geometry and context the checkpoint declares; the released Molmo2's when it
    cannot be read yet), for every sampling a task asks for; a task's own rate must also fit its frame
    budget."""
    config.check_ready()
    default = sampler_of(config)
    tasks = tasks_of(config)
    geometry = geometry_of(config)
    declared = declared_sampling(config)
    for sampler, members in task_samplers(config, tasks):
        check_frame_budget(sampler.num_frames, geometry, declared)
        needed = sampler.frames_for_rate(config.window.window_s)
        own_rate = any(tasks[i].max_fps is not None for i in members)
        if own_rate and sampler != default and needed > sampler.num_frames:
            names = ", ".join(tasks[i].name for i in members)
            raise ConfigError(
                f"{names}: {sampler.max_fps:g} fps over a {config.window.window_s:g} s window needs {needed} frames, "
                f"above its budget of {sampler.num_frames} (--task-num-frames / --num-frames), which would lower "
                f"the rate: set --task-num-frames {names.split(', ')[0]}={needed} "
                f"(~{needed * geometry.tokens_per_frame:,} visual tokens), shorten --window-s, or lower the rate"
            )


def storage_retry(config: RunConfig) -> RetryPolicy:
    """How long transient storage errors are retried (listing, fetch, writes)."""
    return RetryPolicy(budget_s=config.source.storage_retry_budget_s)


def tasks_of(config: RunConfig) -> list[Task]:
    """The questions every window is asked (with their own frame sampling, if any)."""
    return build_tasks(config.tasks.tasks, config.tasks.prompt_templates,
                       max_fps=config.tasks.task_max_fps, num_frames=config.tasks.task_num_frames,
                       plurals=config.tasks.noun_plurals)


def task_samplers(config: RunConfig, tasks: Sequence[Task]) -> list[tuple[FrameSampler, tuple[int, ...]]]:
    """One frame sampler per sampling the tasks ask for, with the indices of its tasks (the decode stage's
    `group_samplers` and the host's `task_groups`, in the same order)."""
    default = sampler_of(config)
    return [(replace(default, num_frames=nf or default.num_frames, max_fps=fps or default.max_fps), members)
            for (nf, fps), members in sampling_groups(tasks, default.num_frames, default.max_fps)]


def geometry_of(config: RunConfig) -> Molmo2Geometry:
    """How a frame becomes visual tokens: what the checkpoint declares, with `decode.frame_size` when set."""
    geometry = _checkpoint_geometry(config.model.model, config.source.s3_endpoint_url)
    return replace(geometry, frame_size=config.decode.frame_size) if config.decode.frame_size else geometry


def frame_size_of(config: RunConfig) -> int:
    """The model's square frame side: `decode.frame_size` when set, else what the checkpoint declares."""
    return geometry_of(config).frame_size


def declared_sampling(config: RunConfig) -> Molmo2Sampling:
    """The frames a window gets by default and the context that holds them, as the checkpoint declares."""
    return _checkpoint_sampling(config.model.model, config.source.s3_endpoint_url)


def frames_and_rate(config: RunConfig) -> tuple[int, float]:
    """(num_frames, max_fps) of a window: `--num-frames` / `--max-fps` when given, else what the checkpoint's
    video processor declares (as transformers' processor samples for that checkpoint: 64 frames at most
    2 fps for the released Molmo2, 8 at 2 for the toy one)."""
    num_frames, max_fps = config.sampling.num_frames, config.sampling.max_fps
    if num_frames is None or max_fps is None:
        declared = declared_sampling(config)
        num_frames = declared.num_frames if num_frames is None else num_frames
        max_fps = declared.max_fps if max_fps is None else max_fps
    return num_frames, max_fps


def sampler_of(config: RunConfig) -> FrameSampler:
    """How frames are picked in a window (`frames_and_rate`)."""
    return FrameSampler(config.sampling.sampling_mode, *frames_and_rate(config))


# The checkpoint's files are read once per process and checkpoint (a Hub id costs a lookup per file, and a
# run asks for its settings several times while it starts).
@lru_cache(maxsize=16)
def _checkpoint_geometry(model: str, endpoint_url: str | None) -> Molmo2Geometry:
    return checkpoint_geometry(model, endpoint_url)


@lru_cache(maxsize=16)
def _checkpoint_sampling(model: str, endpoint_url: str | None) -> Molmo2Sampling:
    return checkpoint_sampling(model, endpoint_url)


def decode_settings(config: RunConfig, frame_size: int) -> DecodeSettings:
    """The decode stage's settings (test hooks captured from this process's environment)."""
    groups = task_samplers(config, tasks_of(config))
    return DecodeSettings(
        frame_size=frame_size,
        sampler=sampler_of(config),
        group_samplers=tuple(sampler for sampler, _ in groups) if len(groups) > 1 else (),
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
    groups = task_samplers(config, tasks)
    return HostSettings(
        model=config.model.model,
        tasks=tuple(tasks),
        task_groups=tuple(members for _, members in groups) if len(groups) > 1 else (),
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
    """The settings that change answers, the part of every work key that is not the task (sampling as
    resolved: a default read from the checkpoint keys the same work as the same value given as a flag)."""
    num_frames, max_fps = frames_and_rate(config)
    return WorkSettings(
        model_id=config.model.model_name or config.model.model,
        revision=config.model.revision,
        sampling_mode=config.sampling.sampling_mode,
        num_frames=num_frames,
        max_fps=max_fps,
        window_s=config.window.window_s,
        overlap_s=config.window.overlap_s,
        frame_size=frame_size,
        max_new_tokens=config.model.max_new_tokens,
    )


def row_context(config: RunConfig, run_id: str, work_keys: Mapping[str, str] | None = None) -> RowContext:
    """What every output row of this run records about how it was produced (`work_keys`: task name -> key)."""
    num_frames, max_fps = frames_and_rate(config)
    return RowContext(
        work_keys=dict(work_keys or {}),
        run_id=run_id,
        model_id=config.model.model,
        max_new_tokens=config.model.max_new_tokens,
        sampling_mode=config.sampling.sampling_mode,
        num_frames=num_frames,
        max_fps=max_fps,
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
