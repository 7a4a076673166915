"""5. Memory: peak memory of a pipeline run over a corpus 10x larger against the small one.

Each size runs in a fresh child process with its own local Ray, so the measured process tree is exactly
this run's: the driver, the Ray processes it started (GCS, raylet, agents) and every worker they
started (decode tasks, the Molmo2Host actor). A thread samples the tree every 0.2 s with psutil and
keeps the peak of the sum of PSS (proportional set size: shared pages, like Ray's object store in
/dev/shm or the torch libraries, are split between the processes mapping them instead of counted in
each) and, for reference, of RSS (which counts shared pages once per process).

Corpus: 640x360 H.264 clips of 12 s (cheap to decode, so the 10x corpus fits the time budget; every
window still reaches the model as 24 frames of 378 px), 4 videos against 40. Model: the tiny Molmo2 at
378 px; task caption; config defaults otherwise (decode concurrency 2, batch 4, Parquet flushed every
64 videos).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    Result,
    at_most,
    base_parser,
    ensure_corpus,
    ensure_tiny_model,
    maybe_wait,
    prepare_environment,
    print_results,
    ray_session,
    replicate,
    write_json,
)

BENCH = "5 memory"


@dataclass
class TreeSample:
    processes: int
    rss: int
    pss: int


def sample_tree(root_pid: int) -> TreeSample:
    """Sum RSS and PSS over a process and all its descendants (processes that vanish are skipped)."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return TreeSample(0, 0, 0)
    rss = pss = n = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += int(info.rss)
        pss += int(getattr(info, "pss", info.rss))
        n += 1
    return TreeSample(n, rss, pss)


class PeakSampler:
    """Samples the process tree in a thread; keeps the peaks."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak = TreeSample(0, 0, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            s = sample_tree(os.getpid())
            self.samples += 1
            self.peak = TreeSample(max(self.peak.processes, s.processes), max(self.peak.rss, s.rss), max(self.peak.pss, s.pss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(videos: int, quick: bool, workdir: Path, out_json: Path) -> None:
    """One measured run (in its own process, with its own Ray)."""
    out_json.write_text(json.dumps(measured_run(videos, quick, workdir)))


def measured_run(videos: int, quick: bool, workdir: Path) -> dict[str, float]:
    """Run the pipeline over `videos` videos while sampling this process tree's memory."""
    prepare_environment()
    from pipeline.config import build_config
    from pipeline.run.driver import run_pipeline

    size = 112 if quick else 378
    clips = ensure_corpus("quick" if quick else "lite", workdir)
    model = ensure_tiny_model(workdir, size)
    folder = replicate(clips, videos, workdir / "memory" / f"videos-{videos}")
    out = workdir / "memory" / f"tables-{videos}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    config = build_config(
        {
            "source": {"input": str(folder)},
            "model": {"model": str(model), "max_new_tokens": 4 if quick else 8},
            "tasks": {"tasks": ["caption"]},
            "output": {"output": str(out)},
            "ray": {"progress": "off"},
        }
    )
    with ray_session():
        time.sleep(1.0)
        idle = sample_tree(os.getpid())
        with PeakSampler() as sampler:
            summary = run_pipeline(config, echo=lambda *_: None)
    if summary.exit_code != 0:
        raise RuntimeError(summary.render())
    return {
        "videos": videos,
        "windows": summary.windows,
        "elapsed_s": summary.elapsed_s,
        "idle_rss": idle.rss,
        "idle_pss": idle.pss,
        "peak_rss": sampler.peak.rss,
        "peak_pss": sampler.peak.pss,
        "processes": sampler.peak.processes,
        "samples": sampler.samples,
    }


def measure(videos: int, quick: bool, workdir: Path, in_process: bool = False) -> dict[str, float]:
    """One measured run: in a fresh child process (its own Ray), or here (sharing a running Ray: --quick)."""
    if in_process:
        return measured_run(videos, quick, workdir)
    out = workdir / "memory" / f"result-{videos}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(videos), "--workdir", str(workdir)]
    if quick:
        cmd.append("--quick")
    log = out.with_suffix(".log")
    with log.open("w") as fh:
        done = subprocess.run([*cmd, "--child-json", str(out)], stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"memory run with {videos} videos failed (exit {done.returncode}); log {log}:\n{tail}")
    data: dict[str, float] = json.loads(out.read_text())
    return data


def run(quick: bool, workdir: Path, small: int, in_process: bool = False) -> list[Result]:
    large = 10 * small
    ensure_corpus("quick" if quick else "lite", workdir)  # generated once, outside the measured runs
    ensure_tiny_model(workdir, 112 if quick else 378)
    s = measure(small, quick, workdir, in_process)
    big = measure(large, quick, workdir, in_process)
    ratio = big["peak_pss"] / s["peak_pss"]
    mib = 2**20

    def describe(d: dict[str, float]) -> str:
        return (
            f"{int(d['videos'])} videos/{int(d['windows'])} windows in {d['elapsed_s']:.0f} s: peak PSS "
            f"{d['peak_pss'] / mib:,.0f} MiB (idle Ray {d['idle_pss'] / mib:,.0f}), peak RSS "
            f"{d['peak_rss'] / mib:,.0f} MiB, {int(d['processes'])} processes"
        )

    return [
        Result(
            BENCH,
            f"peak PSS of the whole Ray process tree, {large} videos / {small} videos",
            ratio,
            "<= 1.2x",
            at_most(ratio, 1.2),
            detail=f"{describe(big)}; {describe(s)}",
        ),
        Result(
            BENCH,
            "same, peak RSS summed per process (counts shared pages in every process)",
            big["peak_rss"] / s["peak_rss"],
            "",
            None,
        ),
        Result(
            BENCH,
            "peak PSS above idle Ray, 10x / 1x (the run's own growth)",
            (big["peak_pss"] - big["idle_pss"]) / max(1.0, s["peak_pss"] - s["idle_pss"]),
            "",
            None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "memory benchmark")
    parser.add_argument("--small", type=int, default=None, help="Videos in the small corpus (default 4; 10x for the large).")
    parser.add_argument("--child", type=int, default=None, help=argparse_hidden())
    parser.add_argument("--child-json", type=Path, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    maybe_wait(args)
    if args.child is not None:
        child(args.child, args.quick, args.workdir, args.child_json)
        return 0
    started = time.perf_counter()
    results = run(args.quick, args.workdir, args.small or (1 if args.quick else 4))
    print_results(f"5. Memory ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
