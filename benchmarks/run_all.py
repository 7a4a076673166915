"""Run every benchmark and print each measured ratio next to its target.

    python -m benchmarks.run_all            # the figures (about 6-9 minutes on 2 cores, corpus included)
    python -m benchmarks.run_all --quick    # tiny corpus and model: correctness only (the smoke test)

Order: 7 (on paper), 1 (decode), 2 (one prefix, many questions), 3 (batching), 5 (memory: each size in
its own process with its own Ray), then 4 (streaming) and 6 (simulated GPU) in one local Ray. Results
also go to <workdir>/results.json. The exit code is 0 when every benchmark ran (whatever its figures),
1 when one failed to run.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    Result,
    base_parser,
    machine_summary,
    prepare_environment,
    print_results,
    ray_session,
    wait_for_idle,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Run every molmo-batch benchmark.")
    parser.add_argument("--only", default="", help="Comma-separated benchmark numbers to run (e.g. 1,2); default all.")
    args = parser.parse_args(argv)
    prepare_environment()
    quick: bool = args.quick
    workdir: Path = args.workdir
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    from benchmarks import (
        bench_batching,
        bench_decode,
        bench_gpu_sim,
        bench_memory,
        bench_prefix,
        bench_projection,
        bench_streaming,
    )

    plain: list[tuple[str, str, Callable[[], list[Result]]]] = [
        ("7", "7. On paper (latency model, SIMULATION)", bench_projection.run),
        ("1", "1. Decode", lambda: bench_decode.run(quick, workdir, 1 if quick else 2)),
        ("2", "2. One prefix, many questions", lambda: bench_prefix.run(quick, workdir, 1 if quick else 3)),
        ("3", "3. Batching", lambda: bench_batching.run(quick, workdir, 1 if quick else 2)),
        ("5", "5. Memory", lambda: bench_memory.run(quick, workdir, 1 if quick else 4, in_process=quick)),
    ]
    with_ray: list[tuple[str, str, Callable[[], list[Result]]]] = [
        ("4", "4. Streaming", lambda: bench_streaming.run(quick, workdir, 1)),
        ("6", "6. A GPU, simulated (SIMULATION)", lambda: bench_gpu_sim.run(quick, workdir)),
    ]
    if quick:  # one shared Ray for everything that needs one
        plain, with_ray = [b for b in plain if b[0] != "5"], [b for b in plain if b[0] == "5"] + with_ray

    print(f"machine: {machine_summary()}")
    print(f"mode: {'quick (correctness only, figures meaningless)' if quick else 'full'}; workdir {workdir}")
    started = time.perf_counter()
    results: list[Result] = []
    timings: dict[str, float] = {}
    failed: list[str] = []

    def run_one(number: str, title: str, fn: Callable[[], list[Result]]) -> None:
        if only and number not in only:
            return
        if args.wait_idle > 0:
            busy = wait_for_idle(args.wait_idle)
            print(f"\n(machine {busy:.0%} busy with other work when {title} started)")
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception:
            failed.append(title)
            print(f"\n== {title}: FAILED\n{traceback.format_exc()}")
            return
        timings[title] = time.perf_counter() - t0
        results.extend(out)
        print_results(f"{title} ({timings[title]:.0f} s)", out)

    for number, title, fn in plain:
        run_one(number, title, fn)
    if any(not only or n in only for n, _, _ in with_ray):
        with ray_session():
            for number, title, fn in with_ray:
                run_one(number, title, fn)

    total = time.perf_counter() - started
    print(f"\n== Summary ({total:.0f} s; machine: {machine_summary()})")
    for r in results:
        if r.target:
            verdict = "MET" if r.met else "NOT MET"
            value = "n/a" if r.measured is None else f"{r.measured:.3g}{r.unit}"
            print(f"  {verdict:8s} [{r.bench}] {r.item}: {value} (target {r.target})")
    for title in failed:
        print(f"  FAILED   {title}")
    write_json(
        workdir / ("results-quick.json" if quick else "results.json"),
        results,
        {"machine": machine_summary(), "seconds": timings, "total_s": total, "failed": failed, "quick": quick},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
