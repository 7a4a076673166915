"""6. A GPU, simulated: real decode feeding a SIMULATED Molmo2-8B on one H100; how busy the model actor
is, and how many decode CPUs one GPU needs.

The graph is the pipeline's own (`pipeline.run.graph.build_dataset`, from `plan_resources`), with two
stand-ins (benchmarks/standins.py): the decode stage is the real one plus a per-row CPU clock, and the
model stage is `SimulatedMolmo2Host`, a Ray Data actor that sleeps for the latency model's time of each
call (benchmarks/latency_model.py: prefill from FLOPs at 40% of the H100's bf16 peak, decoding from
the bytes each step reads at 60% of its HBM bandwidth; derived in docs/benchmarks.md). NOTHING RAN ON A GPU.

Workload: nightly captioning (caption, 200-token answers, batch 4) on the 1080p H.264 clips of item 1
repeated to 12 videos, cut into 10 s windows (20 frames each) so the actor gets enough calls.

Two runs, 2 decode tasks on this machine's 2 cores:
- A, H100 speed: the measured busy fraction at the modelled speed with the decode CPUs this machine has;
- B, balanced: the simulated GPU slowed so that A's measured decode throughput is 1/0.95 of what it
  consumes (what provisioning decode CPUs per the figure below does on a real node) -- the check that
  the streaming graph keeps the actor >= 95% busy when decode keeps up.
Busy fraction: time inside the actor's calls / (last call end - first call start) (steady state); the
whole run, including start-up (actor start, first videos decoded), is reported too.

Decode CPUs per GPU = decode CPU-seconds per window (measured, process CPU time of the decode tasks) /
modelled GPU-seconds per window / 0.95, for these windows and for the 60 s, 64-frame windows of the
two workloads of item 7 (decode cost scaled by the video seconds a window decodes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Result,
    at_least,
    base_parser,
    ensure_corpus,
    maybe_wait,
    median,
    prepare_environment,
    print_results,
    ray_session,
    replicate,
    write_json,
)
from pipeline.model import molmo2

BENCH = "6 gpu sim"
TARGET_BUSY = 0.95


def simulate(
    videos: Path, scale: float, window_s: float, answer_tokens: int, decode_tasks: int, batch_size: int
) -> dict[str, Any]:
    """One run of the real graph with the simulated GPU; returns the actor's busy figures and decode cost."""
    import ray

    from benchmarks.bench_streaming import patched_graph
    from benchmarks.standins import SimSpec, SimulatedMolmo2Host, timed_decode_batch
    from pipeline.model.engine import HostSettings
    from pipeline.results.tasks import build_tasks
    from pipeline.run.graph import build_dataset
    from pipeline.run.resources import ClusterInfo, plan_resources
    from pipeline.source.listing import list_videos
    from pipeline.video.decode import DecodeSettings
    from pipeline.video.sampling import FrameSampler

    refs = list_videos(str(videos), include=["*.mp4"])
    plan = plan_resources(
        ClusterInfo.from_ray_nodes(ray.nodes()),
        num_videos=len(refs),
        num_model_actors=1,
        num_gpus_per_actor=0.0,
        model_cpus=0.25,  # the simulated actor only sleeps: leave the cores to decode
        decode_cpus=1.0,
        decode_concurrency=decode_tasks,
        batch_size=batch_size,
    )
    decode = DecodeSettings(
        frame_size=molmo2.FRAME_SIZE, sampler=FrameSampler("native", 64, 2.0), window_s=window_s, overlap_s=0.0, threads=1
    )
    host = HostSettings(
        model=SimSpec(scale=scale).encode(), tasks=tuple(build_tasks(["caption"])), max_new_tokens=answer_tokens
    )
    started = time.time()
    with patched_graph(decode=timed_decode_batch, host=SimulatedMolmo2Host):
        ds = build_dataset(refs, decode, host, plan)
        rows = [dict(r) for r in ds.iter_rows()]
    finished = time.time()
    calls = {(float(r["busy_start"]), float(r["busy_end"]), float(r["call_modelled_s"])) for r in rows}
    busy = sum(end - start for start, end, _ in calls)
    first = min(start for start, _, _ in calls)
    last = max(end for _, end, _ in calls)
    ok = [r for r in rows if r["decode_status"] != "failed"]
    return {
        "windows": len(ok),
        "calls": len(calls),
        "frames_per_window": median([float(r["frames"]) for r in ok]),
        "busy_s": busy,
        "steady_busy": busy / (last - first),
        "whole_busy": busy / (finished - started),
        "wall_s": finished - started,
        "decode_cpu_per_window": sum(float(r["decode_cpu_s"]) for r in ok) / len(ok),
        "modelled_per_window": sum(m for _, _, m in calls) / len(ok) / scale,
        "decode_windows_per_s": len(ok) / (last - started),
    }


def run(quick: bool, workdir: Path) -> list[Result]:
    prepare_environment()
    from benchmarks.latency_model import WORKLOADS, GpuModel, window_gpu_s

    clips = ensure_corpus("quick" if quick else "hd", workdir)
    count = 3 if quick else 12
    window_s = 1.5 if quick else 10.0
    answer_tokens = 200
    batch_size = 4
    decode_tasks = 2
    videos = replicate(clips, count, workdir / "gpu_sim" / "videos")
    with ray_session():
        a = simulate(videos, 1.0, window_s, answer_tokens, decode_tasks, batch_size)
        # Slow the simulated GPU until A's measured decode throughput is 1/0.95 of what it consumes.
        scale = max(1.0, TARGET_BUSY / (a["decode_windows_per_s"] * a["modelled_per_window"]))
        b = simulate(videos, scale, window_s, answer_tokens, decode_tasks, batch_size)

    gpu = GpuModel()
    cpus_here = a["decode_cpu_per_window"] / a["modelled_per_window"] / TARGET_BUSY
    # Decode cost scales with the video seconds decoded (every frame between key frames is decoded);
    # the clips are 30 fps 1080p like the workloads' assumed sources.
    per_video_s = a["decode_cpu_per_window"] / window_s
    workload_lines = []
    needs: dict[str, float] = {}
    for w in WORKLOADS:
        gpu_s = window_gpu_s(w, gpu)
        cpu_s = per_video_s * w.window_s
        needs[w.name] = cpu_s / gpu_s / TARGET_BUSY
        workload_lines.append(f"{w.name}: {cpu_s:.1f} CPU-s vs {gpu_s:.2f} GPU-s per window -> {needs[w.name]:.1f}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    def describe(d: dict[str, Any]) -> str:
        return (
            f"{d['windows']} windows ({d['frames_per_window']:.0f} frames) in {d['calls']} calls, "
            f"{d['wall_s']:.1f} s wall; busy {d['busy_s']:.1f} s; whole-run busy {d['whole_busy']:.0%}"
        )

    return [
        Result(
            BENCH,
            f"SIMULATED H100 actor busy, balanced run B (GPU slowed x{scale:.2f} to match {decode_tasks} decode CPUs)",
            b["steady_busy"],
            ">= 0.95",
            at_least(b["steady_busy"], TARGET_BUSY),
            unit="",
            detail=f"{describe(b)}; load avg {load}",
        ),
        Result(
            BENCH,
            f"SIMULATED H100 actor busy at full H100 speed with {decode_tasks} decode CPUs (run A)",
            a["steady_busy"],
            "",
            None,
            unit="",
            detail=(
                f"{describe(a)}; modelled {a['modelled_per_window']:.2f} GPU-s per window, decode "
                f"{a['decode_cpu_per_window']:.2f} CPU-s per window"
            ),
        ),
        Result(
            BENCH,
            f"decode CPUs one H100 needs for >= 95% busy, these {window_s:g} s windows",
            cpus_here,
            "",
            None,
            unit=" CPUs",
            detail="; ".join(workload_lines) + " (1080p30 H.264 sources, this machine's cores)",
        ),
        *[
            Result(BENCH, f"decode CPUs per H100, {name} (60 s / 64-frame windows)", need, "", None, unit=" CPUs")
            for name, need in needs.items()
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "simulated GPU benchmark")
    args = parser.parse_args(argv)
    maybe_wait(args)
    started = time.perf_counter()
    results = run(args.quick, args.workdir)
    print_results(f"6. A GPU, simulated ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

