"""7. On paper: projected windows per hour per H100 for the two workloads, from the latency model
(SIMULATION, benchmarks/latency_model.py), next to NeMo Curator's published floor (0.85 captioned clips/s
on 8 GPUs = 382.5 clips per GPU-hour).

A window here is 60 s of video (64 frames); NeMo Curator's clips are its own split clips (typically a
few seconds to tens of seconds), so the comparison is per model call on one video span, not per second
of video. Also printed: the same figure under pessimistic efficiencies and with a per-step host
overhead (HF generate without CUDA graphs), and with the shared-prefix path taking one window at a time
(as it did before windows were batched there).
"""

from __future__ import annotations

import dataclasses
import time

from benchmarks.common import Result, at_least, base_parser, print_results, write_json
from benchmarks.latency_model import (
    NEMO_CURATOR_CLIPS_PER_GPU_HOUR,
    WORKLOADS,
    GpuModel,
    Workload,
    prefill_s,
    prompt_tokens,
    window_gpu_s,
)

BENCH = "7 on paper"
PESSIMISTIC = GpuModel(prefill_mfu=0.25, bandwidth_util=0.40, step_overhead_s=0.015)


def per_hour(w: Workload, gpu: GpuModel) -> float:
    return 3600.0 / window_gpu_s(w, gpu)


def run() -> list[Result]:
    gpu = GpuModel()
    floor = NEMO_CURATOR_CLIPS_PER_GPU_HOUR
    results = []
    for w in WORKLOADS:
        rate = per_hour(w, gpu)
        one = per_hour(dataclasses.replace(w, batch_size=1), gpu)
        low = per_hour(w, PESSIMISTIC)
        before = per_hour(dataclasses.replace(w, batch_shared_prefix_windows=False), gpu)
        video_h = rate * (w.window_s - w.overlap_s) / 3600
        results.append(
            Result(
                BENCH,
                f"{w.name}: windows/hour per H100 (model) / NeMo Curator floor {floor:.0f} clips/GPU-h",
                rate / floor,
                ">= 1x",
                at_least(rate / floor, 1.0),
                detail=(
                    f"{rate:,.0f} windows/h ({window_gpu_s(w, gpu):.2f} GPU-s each, batch {w.batch_size}; "
                    f"{video_h:.0f} h of video per GPU-hour); batch 1: {one:,.0f}/h; pessimistic "
                    f"(MFU {PESSIMISTIC.prefill_mfu}, {PESSIMISTIC.bandwidth_util:.0%} HBM, "
                    f"{PESSIMISTIC.step_overhead_s * 1e3:.0f} ms/step): {low:,.0f}/h; one window at a time on the "
                    f"shared-prefix path (before windows were batched there): {before:,.0f}/h. {w.note}"
                ),
            )
        )
    results.append(
        Result(
            BENCH,
            "modelled prefill of a 64-frame window (vision + language), H100",
            prefill_s(64, gpu),
            "",
            None,
            unit=" s",
            detail=(
                f"{prompt_tokens(64):,} prompt tokens; MFU {gpu.prefill_mfu}, decoding at "
                f"{gpu.bandwidth_util:.0%} of HBM bandwidth; SIMULATION (latency model), not a GPU measurement"
            ),
        )
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "projection")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run()
    print_results(f"7. On paper, latency model of Molmo2-8B on an H100 ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
