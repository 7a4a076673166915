"""3. Batching: windows per second of the model host at its chosen batch size against batch size 1.

The model host is `pipeline.model.host.Molmo2Host`, called as Ray Data calls it (a numpy batch of decoded
windows in, one row per window and task out), with one task (caption), so a batch is one left-padded
``generate``. Its chosen batch size is the config default (`ModelConfig.batch_size`). Windows: 64 frames
at 378 px (the real geometry, ~5,600 prompt tokens each), every answer exactly 24 tokens.

Clock: process CPU time with torch on 1 thread (the actor's setting on this machine), wall reported too;
rounds interleave batched and one-at-a-time.

On a CPU, prefill work grows with the tokens in the batch, and prefill dominates a 64-frame window; a
GPU gains from batching because one decoding step reads the weights once for every row. This benchmark
measures what this machine shows; docs/benchmarks.md explains the difference.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import (
    Result,
    at_least,
    base_parser,
    ensure_tiny_model,
    maybe_wait,
    median,
    prepare_environment,
    print_results,
    spread,
    timed,
    write_json,
)
from pipeline.model import molmo2

BENCH = "3 batching"


def measure(
    model: Path, size: int, num_frames: int, new_tokens: int, batch_size: int, rounds: int
) -> dict[str, list[float] | bool]:
    """CPU and wall seconds for `batch_size` windows: one host call with all of them, and one call each."""
    from benchmarks.tiny import FixedLengthEngine, host_batch, host_settings, window
    from pipeline.model.host import Molmo2Host
    from pipeline.results.tasks import build_tasks

    settings = host_settings(str(model), tuple(build_tasks(["caption"])), new_tokens)
    host = Molmo2Host(settings)
    host.engine = FixedLengthEngine(settings)
    windows = [window(num_frames, size, seed=i) for i in range(batch_size)]
    batched_input = host_batch(windows)
    singles = [host_batch([w]) for w in windows]

    def batched() -> list[str]:
        return [str(a) for a in host(batched_input)["answer"]]

    def one_at_a_time() -> list[str]:
        return [str(host(b)["answer"][0]) for b in singles]

    host(singles[0])  # warm-up
    res: dict[str, list[float]] = {"cpu_batched": [], "cpu_single": [], "wall_batched": [], "wall_single": []}
    out: dict[str, list[str]] = {}
    for r in range(rounds):
        order = [("batched", batched), ("single", one_at_a_time)]
        for name, fn in order if r % 2 == 0 else reversed(order):
            out[name], t = timed(fn)
            res[f"cpu_{name}"].append(t.cpu_s)
            res[f"wall_{name}"].append(t.wall_s)
    return {**res, "same": out["batched"] == out["single"]}


def run(quick: bool, workdir: Path, rounds: int, frames: int | None = None) -> list[Result]:
    prepare_environment()
    import dataclasses

    import torch

    from benchmarks.latency_model import NIGHTLY_CAPTIONING, GpuModel, window_gpu_s
    from pipeline.config import ModelConfig

    torch.set_num_threads(1)
    size, num_frames, new_tokens = (112, 8, 8) if quick else (molmo2.FRAME_SIZE, frames or 64, 24)
    batch_size = ModelConfig().batch_size
    model = ensure_tiny_model(workdir, size)
    main = measure(model, size, num_frames, new_tokens, batch_size, rounds)
    short = measure(model, size, 8, 8 if quick else 64, batch_size, rounds)

    def gains(m: dict[str, list[float] | bool], kind: str) -> list[float]:
        single, batched = m[f"{kind}_single"], m[f"{kind}_batched"]
        assert isinstance(single, list) and isinstance(batched, list)
        return [s / b for s, b in zip(single, batched, strict=True)]

    def cpu(m: dict[str, list[float] | bool], name: str) -> list[float]:
        values = m[f"cpu_{name}"]
        assert isinstance(values, list)
        return values

    gain = gains(main, "cpu")
    rate_b = batch_size / median(cpu(main, "batched"))
    rate_1 = batch_size / median(cpu(main, "single"))
    gpu = GpuModel()
    modelled = window_gpu_s(dataclasses.replace(NIGHTLY_CAPTIONING, batch_size=1), gpu) / window_gpu_s(
        dataclasses.replace(NIGHTLY_CAPTIONING, batch_size=batch_size), gpu
    )
    return [
        Result(
            BENCH,
            f"windows per CPU-second at batch size {batch_size} / batch size 1 (1 thread)",
            median(gain),
            ">= 2x",
            at_least(median(gain), 2.0),
            detail=(
                f"windows/CPU-s: batched {rate_b:.3g}, one at a time {rate_1:.3g} "
                f"(CPU s per {batch_size} windows: {spread(cpu(main, 'batched'))} vs {spread(cpu(main, 'single'))}); "
                f"{num_frames} frames of {size} px, {new_tokens} new tokens; answers identical: {main['same']}"
            ),
        ),
        Result(
            BENCH,
            f"same, wall clock (batch {batch_size} / batch 1)",
            median(gains(main, "wall")),
            "",
            None,
        ),
        Result(
            BENCH,
            f"same, decode-bound windows (8 frames, {8 if quick else 64} new tokens), CPU",
            median(gains(short, "cpu")),
            "",
            None,
            detail=f"CPU s per {batch_size} windows: {spread(cpu(short, 'batched'))} vs {spread(cpu(short, 'single'))}",
        ),
        Result(
            BENCH,
            f"latency model (SIMULATION), H100, nightly captioning: batch {batch_size} / batch 1",
            modelled,
            "",
            None,
            detail="one decoding step reads the 15 GB of weights once for every row of the batch",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "batching benchmark")
    parser.add_argument("--rounds", type=int, default=None, help="Interleaved rounds (default 2).")
    parser.add_argument("--frames", type=int, default=None, help="Frames per window (default 64).")
    args = parser.parse_args(argv)
    maybe_wait(args)
    started = time.perf_counter()
    results = run(args.quick, args.workdir, args.rounds or (1 if args.quick else 2), args.frames)
    print_results(f"3. Batching ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
