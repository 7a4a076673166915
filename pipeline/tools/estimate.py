"""Plan a run before paying for it: list the corpus, read container metadata, estimate tokens, GPU-hours
and cost per Molmo2 variant.

No video is decoded. Each file's header is opened with PyAV (for s3:// through an fsspec file, which
reads the header with ranged GETs): the frame rate, the frame count (`nb_frames`) and the duration come
from the container/stream metadata, without demuxing the packets.

Formulas (per window `w` of every video; `K` tasks; all token counts per window):

    duration      = nb_frames / fps            (else stream duration, else container duration)
    windows       = plan_windows(duration, window_s, overlap_s)       (exactly what the run does)
    F_w           = frames the run's FrameSampler picks in window w, on the frame grid k / fps
    T_frame       = visual tokens of one frame (pipeline.model.molmo2: 81 at 378 px, 27x27 patches pooled 3x3)
    visual_w      = F_w * T_frame
    prefix_w      = F_w * (T_frame + frame_overhead_tokens) + prompt_text_tokens
    prefill_w     = prefix_w + K * question_tokens                    (the visual prefix is shared by the K tasks)
    generated_w   = sum over tasks of generated_tokens[task kind]
    gpu_seconds_w = prefill_w / prefill_tokens_per_s + generated_w / decode_tokens_per_s
    GPU-hours     = sum_w gpu_seconds_w / 3600 / efficiency
    cost          = GPU-hours * gpu_hour_usd
    wall hours    = GPU-hours / gpus

The frame geometry is `--frame-size` over what a local checkpoint declares, else the profile's `frame_size`
with Molmo2's patches and pooling. `prefill_tokens_per_s` and `decode_tokens_per_s` are one GPU's aggregate throughput with the pipeline's
batching (decode: summed over the sequences decoding together); `efficiency` is the share of wall time a
GPU is busy (decode waits, stragglers, actor start-up). The numbers in `DEFAULT_PROFILE` are planning
placeholders, not measurements: calibrate them with a real run (the `runs` table records prompt and
generated tokens and the model stage's time) and pass your own with `--profile FILE.yaml`, which is merged
over the default (variants you name replace or add entries).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field

from pipeline.config import (
    ConfigError,
    ConfigSection,
    RunConfig,
    build_section,
    config_from_flags,
    flag_values,
)
from pipeline.errors import MolmoBatchError
from pipeline.io.secrets import redact_or_none
from pipeline.io.storage import get_fs
from pipeline.model.molmo2 import FRAME_SIZE, Molmo2Geometry, checkpoint_geometry
from pipeline.source.listing import list_videos
from pipeline.source.refs import SourceError
from pipeline.video.sampling import FrameSampler, frames_in_window, plan_windows

DEFAULT_PROFILE_YAML = f"""
# One GPU's throughput per Molmo2 variant in this pipeline (bf16, sdpa, shared visual prefix, batch 4).
# PLANNING PLACEHOLDERS, not measurements: calibrate from a real run's `runs` row.
gpu: A100-80GB
gpu_hour_usd: 2.50          # on-demand price of one GPU-hour
efficiency: 0.8             # share of wall time a GPU is busy
frame_size: {FRAME_SIZE}             # Molmo2's square frame side (pixels)
frame_overhead_tokens: 6    # non-visual tokens per frame (frame start/end markers, timestamp text)
prompt_text_tokens: 25      # chat template, BOS and generation prompt per window
question_tokens: 12         # one task's question
generated_tokens:           # expected answer length per task kind
  caption: 200
  count: 40
  point: 60
  track: 150
  ask: 60
variants:
  allenai/Molmo2-4B:
    prefill_tokens_per_s: 14000
    decode_tokens_per_s: 320
  allenai/Molmo2-8B:
    prefill_tokens_per_s: 8000
    decode_tokens_per_s: 220
  allenai/Molmo2-O-7B:
    prefill_tokens_per_s: 9000
    decode_tokens_per_s: 240
"""


DEFAULT_PROFILE: dict[str, Any] = yaml.safe_load(DEFAULT_PROFILE_YAML)


_VARIANT_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s")


class PlanError(MolmoBatchError, ValueError):
    """Bad input, profile or settings: the message says how to fix it."""


class PlanOptions(ConfigSection):
    """`pipeline plan`'s own options (each a `--flag`); the run options are the run config's."""

    profile: str | None = Field(
        None, description="Throughput profile merged over the default.", json_schema_extra={"metavar": "FILE.yaml"}
    )
    print_profile: bool = Field(False, description="Print the (merged) profile as YAML and exit.")
    gpus: int = Field(1, description="GPUs the run will use, for the wall-clock estimate.")
    format: Literal["table", "json"] = Field("table", description="table (terminal) or json.")
    max_rows: int = Field(20, description="Videos listed in the table.")


def merge_profile(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base` (nested mappings merged key by key)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_profile(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_profile(path: str | None) -> dict[str, Any]:
    if not path:
        return copy.deepcopy(DEFAULT_PROFILE)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise PlanError(f"--profile {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"--profile {path}: must be a YAML mapping like the default (see pipeline/tools/estimate.py)")
    profile = merge_profile(DEFAULT_PROFILE, data)
    for name, v in profile.get("variants", {}).items():
        missing = [k for k in _VARIANT_KEYS if not isinstance(v, Mapping) or not v.get(k)]
        if missing:
            raise PlanError(f"--profile {path}: variant {name} needs {', '.join(missing)} (> 0)")
    return profile


def plan_geometry(config: RunConfig, profile: Mapping[str, Any]) -> Molmo2Geometry:
    """The frame geometry to plan with: `--frame-size` over a local checkpoint's declared geometry, else the
    profile's frame size with Molmo2's patches and pooling."""
    model = config.model.model
    if "://" not in model and os.path.isdir(model):
        geometry = checkpoint_geometry(model, None)
    else:
        geometry = Molmo2Geometry(frame_size=int(profile["frame_size"]))
    if config.decode.frame_size:
        geometry = replace(geometry, frame_size=config.decode.frame_size)
    return geometry


@dataclass
class VideoMeta:
    uri: str
    size_bytes: int
    duration_s: float | None = None
    fps: float | None = None
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    error: str | None = None


def probe_metadata(uri: str, *, endpoint_url: str | None = None) -> VideoMeta:
    """Container/stream metadata of one video (header only: no packet demuxing, no decoding)."""
    import av


    meta = VideoMeta(uri=uri, size_bytes=0)
    try:
        fs, path = get_fs(uri, endpoint_url)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        fh: Any = None
        if protocol in ("file", "local"):
            container = av.open(path)
        else:
            fh = fs.open(path, "rb", block_size=1 << 20)
            container = av.open(fh)
        try:
            with container:
                if not container.streams.video:
                    raise ValueError("no video stream")
                s = container.streams.video[0]
                rate = s.average_rate or s.guessed_rate or s.base_rate
                fps = float(rate) if rate else 0.0
                frames = int(s.frames or 0)
                if frames > 0 and fps > 0:
                    duration = frames / fps
                elif s.duration and s.time_base:
                    duration = float(s.duration * s.time_base)
                elif container.duration:
                    duration = container.duration / 1_000_000
                else:
                    raise ValueError("no duration in the container metadata")
                meta.duration_s = round(duration, 6)
                meta.fps = fps or None
                meta.frames = frames or (round(duration * fps) if fps else None)
                meta.width, meta.height = int(s.width or 0), int(s.height or 0)
                meta.codec = s.codec_context.name if s.codec_context else None
        finally:
            if fh is not None:
                fh.close()
    except Exception as exc:
        meta.error = f"{type(exc).__name__}: {exc}"[:300]
    return meta


def window_frames(meta: VideoMeta, window_s: float, overlap_s: float, sampler: FrameSampler) -> list[int]:
    """Frames the run's sampler picks in each window (on the constant-rate frame grid k / fps)."""
    if not meta.duration_s:
        return []
    windows = plan_windows(meta.duration_s, window_s, overlap_s)
    fps = meta.fps or 0.0
    if fps <= 0:  # no rate in the metadata: assume the sampler's own rate
        fps = sampler.max_fps or 1.0
    n = meta.frames or max(1, round(meta.duration_s * fps))
    times = np.arange(n, dtype=np.float64) / fps
    out = []
    for w in windows:
        idx = frames_in_window(times, w, is_last=w.index == len(windows) - 1)
        out.append(len(sampler.sample(times[idx].tolist(), fps)) if idx else 0)
    return out


@dataclass
class VariantEstimate:
    model: str
    prefill_tokens: int
    generated_tokens: int
    gpu_hours: float
    cost_usd: float
    wall_hours: float


@dataclass
class Plan:
    input: str
    videos: int
    unreadable: int
    hours: float
    windows: int
    frames: int
    visual_tokens: int
    prefill_tokens: int
    generated_tokens: int
    tasks: list[str]
    settings: dict[str, Any]
    variants: list[VariantEstimate]
    per_video: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    metas: Sequence[VideoMeta],
    profile: Mapping[str, Any],
    config: RunConfig,
    geometry: Molmo2Geometry,
    *,
    gpus: int = 1,
) -> Plan:
    """The plan for these videos under `config`'s tasks, windows and sampling, frames of `geometry`, and the
    throughput `profile` (pure: see the module docstring's formulas)."""
    # imported on use: the CLI imports this module to build its parser
    from pipeline.run.settings import sampler_of, tasks_of

    tasks = tasks_of(config)
    sampler = sampler_of(config)
    window_s, overlap_s = config.window.window_s, config.window.overlap_s
    t_frame = geometry.tokens_per_frame
    overhead = int(profile["frame_overhead_tokens"])
    text = int(profile["prompt_text_tokens"])
    q_tokens = int(profile["question_tokens"])
    gen_by_kind = profile["generated_tokens"]
    try:
        gen_per_window = sum(int(gen_by_kind[t.kind]) for t in tasks)
    except KeyError as exc:
        raise PlanError(f"profile generated_tokens has no entry for task kind {exc}") from None
    k = len(tasks)
    per_video = []
    errors = []
    totals = {"windows": 0, "frames": 0, "visual": 0, "prefill": 0, "generated": 0}
    hours = 0.0
    for m in metas:
        if m.error:
            errors.append({"uri": m.uri, "error": m.error})
            continue
        frames = window_frames(m, window_s, overlap_s, sampler)
        f_total = sum(frames)
        visual = f_total * t_frame
        prefill = sum(f * (t_frame + overhead) + text + k * q_tokens for f in frames)
        generated = gen_per_window * len(frames)
        hours += (m.duration_s or 0.0) / 3600
        totals["windows"] += len(frames)
        totals["frames"] += f_total
        totals["visual"] += visual
        totals["prefill"] += prefill
        totals["generated"] += generated
        per_video.append({"uri": m.uri, "duration_s": m.duration_s, "fps": m.fps, "width": m.width,
                          "height": m.height, "windows": len(frames), "frames": f_total, "visual_tokens": visual,
                          "prefill_tokens": prefill})
    efficiency = float(profile.get("efficiency", 1.0)) or 1.0
    price = float(profile["gpu_hour_usd"])
    variants = []
    for name, v in profile["variants"].items():
        seconds = totals["prefill"] / float(v["prefill_tokens_per_s"]) + totals["generated"] / float(v["decode_tokens_per_s"])
        gpu_hours = seconds / 3600 / efficiency
        variants.append(VariantEstimate(name, totals["prefill"], totals["generated"], gpu_hours, gpu_hours * price,
                                        gpu_hours / max(1, gpus)))
    return Plan(
        input=config.source.input,
        videos=len(per_video),
        unreadable=len(errors),
        hours=hours,
        windows=totals["windows"],
        frames=totals["frames"],
        visual_tokens=totals["visual"],
        prefill_tokens=totals["prefill"],
        generated_tokens=totals["generated"],
        tasks=[t.name for t in tasks],
        settings={"window_s": window_s, "overlap_s": overlap_s, "sampling_mode": sampler.mode,
                  "num_frames": sampler.num_frames, "max_fps": sampler.max_fps, "frame_size": geometry.frame_size,
                  "tokens_per_frame": t_frame, "gpus": gpus, "gpu": profile.get("gpu"), "gpu_hour_usd": price,
                  "efficiency": efficiency},
        variants=variants,
        per_video=per_video,
        errors=errors,
    )


def probe_corpus(uris: Sequence[tuple[str, int]], *, endpoint_url: str | None = None, workers: int = 8) -> list[VideoMeta]:
    """Probe every (uri, size) in parallel threads (header reads are I/O bound)."""
    def one(item: tuple[str, int]) -> VideoMeta:
        meta = probe_metadata(item[0], endpoint_url=endpoint_url)
        meta.size_bytes = item[1]
        return meta

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, uris))


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.3g}"


def _print_plan(plan: Plan, model: str, max_rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    if plan.per_video:
        t = Table(title=f"corpus: {plan.input}", title_justify="left")
        for col in ("video", "duration", "fps", "size", "windows", "frames", "visual tokens"):
            t.add_column(col, justify="left" if col == "video" else "right", overflow="ellipsis", max_width=60)
        for v in plan.per_video[:max_rows]:
            t.add_row(v["uri"].rsplit("/", 1)[-1], f"{v['duration_s']:.1f}s", f"{v['fps'] or 0:g}",
                      f"{v['width']}x{v['height']}", str(v["windows"]), str(v["frames"]), f"{v['visual_tokens']:,}")
        console.print(t)
        if len(plan.per_video) > max_rows:
            console.print(f"... and {len(plan.per_video) - max_rows} more video(s)")
    for e in plan.errors[:max_rows]:
        console.print(f"unreadable: {e['uri']}: {e['error']}")
    s = plan.settings
    console.print(
        f"\n{plan.videos} video(s) ({plan.unreadable} unreadable), {plan.hours:.3f} hours; {plan.windows} windows "
        f"(window {s['window_s']:g}s, overlap {s['overlap_s']:g}s); {plan.frames} frames "
        f"({s['sampling_mode']}, <= {s['num_frames']} per window, <= {s['max_fps']:g} fps)"
    )
    console.print(
        f"tasks: {', '.join(plan.tasks)}; visual tokens {plan.visual_tokens:,} ({s['tokens_per_frame']} per frame at "
        f"{s['frame_size']} px); prefill tokens {plan.prefill_tokens:,}; generated tokens {plan.generated_tokens:,}"
    )
    t = Table(title=f"estimate on {s['gpu']} at ${s['gpu_hour_usd']:.2f}/GPU-hour, efficiency {s['efficiency']:g}, "
                    f"{s['gpus']} GPU(s)", title_justify="left")
    for col in ("model", "GPU-hours", "cost (USD)", "wall hours"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for est in plan.variants:
        mark = " <- --model" if est.model == model else ""
        t.add_row(est.model + mark, _num(est.gpu_hours), f"{est.cost_usd:,.2f}", _num(est.wall_hours))
    console.print(t)
    if model and model not in {v.model for v in plan.variants}:
        console.print(f"(--model {model} is not in the throughput profile: every profiled variant is shown; "
                      "add it with --profile FILE.yaml)")
    console.print("formulas and the profile's meaning: pipeline/tools/estimate.py; the profile numbers are placeholders "
                  "to calibrate (--profile FILE.yaml)")


def command(args: Any) -> int:
    flags = vars(args)
    try:
        options = build_section("plan", PlanOptions, flag_values(flags, "plan"))
        profile = load_profile(options.profile)
        if options.print_profile:
            print(yaml.safe_dump(profile, sort_keys=False))
            return 0
        config = config_from_flags(flags)
        source = config.source
        if not source.input:
            raise PlanError("pass --input URL (a folder, file:// or s3://BUCKET/PREFIX)")
        refs = list_videos(source.input, include=source.include, exclude=source.exclude,
                           endpoint_url=source.s3_endpoint_url, max_videos=source.max_videos)
        # A presigned URL is read through its signature (source_url) and shown without it (uri).
        whole = [r.source_url if r.source_url and r.byte_length < 0 else r.uri for r in refs]
        metas = probe_corpus(list(zip(whole, [r.size_bytes for r in refs], strict=True)),
                             endpoint_url=source.s3_endpoint_url)
        for meta, ref in zip(metas, refs, strict=True):
            meta.uri, meta.error = ref.uri, redact_or_none(meta.error)
        plan = estimate(metas, profile, config, plan_geometry(config, profile), gpus=options.gpus)
    except (PlanError, SourceError, ConfigError) as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    if options.format == "json":
        print(json.dumps(plan.as_dict(), indent=1))
    else:
        _print_plan(plan, config.model.model, options.max_rows)
    return 0
