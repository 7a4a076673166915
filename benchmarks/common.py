"""What every benchmark shares: the generated corpora, the tiny model, CPU clocks, a local Ray, and the
result rows each benchmark prints (measured ratio next to its target).

Nothing here asserts a timing: a benchmark reports what it measured on this machine, against a baseline
measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = REPO_ROOT / "benchmarks" / ".work"


def prepare_environment() -> None:
    """Offline, quiet, loopback-only; Ray workers can import `benchmarks` (call before importing Ray)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    """One line of a benchmark's output: the measured figure next to its target."""

    bench: str  # e.g. "1 decode"
    item: str  # what was measured, against what
    measured: float | None
    target: str  # e.g. ">= 2.0x"; "" for a figure reported without a target
    met: bool | None  # None: information only (no target)
    unit: str = "x"
    detail: str = ""  # the raw numbers behind the ratio

    def line(self) -> str:
        value = "n/a" if self.measured is None else f"{self.measured:.3g}{self.unit}"
        verdict = {True: "MET", False: "NOT MET", None: ""}[self.met]
        head = f"  [{self.bench}] {self.item}: {value}"
        if self.target:
            head += f"   target {self.target}   {verdict}"
        return head + (f"\n      {self.detail}" if self.detail else "")


def at_least(value: float, bound: float) -> bool:
    return value >= bound


def at_most(value: float, bound: float) -> bool:
    return value <= bound


def print_results(title: str, results: Sequence[Result]) -> None:
    print(f"\n== {title}")
    for r in results:
        print(r.line())
    sys.stdout.flush()


def write_json(path: str | Path | None, results: Sequence[Result], extra: dict[str, Any] | None = None) -> None:
    if not path:
        return
    data = {"results": [asdict(r) for r in results], **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """'median (min-max, n=...)' for a detail line."""
    return f"{median(values):.3g} ({min(values):.3g}-{max(values):.3g}, n={len(values)})"


# ----------------------------------------------------------------------------------------------
# Clocks


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its waited-for children: user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Timing:
    cpu_s: float
    wall_s: float


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    c0, w0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, Timing(cpu_seconds() - c0, time.perf_counter() - w0)


def cpu_busy_fraction(interval_s: float = 2.0) -> float:
    """Fraction of the machine's CPU time that was busy (any process) over the next `interval_s`."""

    def snapshot() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    total0, idle0 = snapshot()
    time.sleep(interval_s)
    total1, idle1 = snapshot()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle(max_wait_s: float, busy_below: float = 0.15) -> float:
    """Wait (up to `max_wait_s`) until other work leaves the machine idle; returns the last busy fraction.

    Wall-clock figures (items 4 and 6) measure this machine's cores: another job running at the same
    time takes cores from one side of a ratio and not the other.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = cpu_busy_fraction()
        if busy < busy_below or time.monotonic() >= deadline:
            return busy
        time.sleep(3.0)


# ----------------------------------------------------------------------------------------------
# Corpora: real H.264 mp4s generated here (PyAV/libx264), cached in the work dir.


@dataclass(frozen=True)
class ClipSpec:
    """One generated clip: a textured gradient with three moving squares."""

    name: str
    width: int
    height: int
    fps: int
    seconds: float
    seed: int = 0
    gop: int = 60  # key frame every 2 s at 30 fps, typical of cameras and streaming encodes
    crf: int = 23
    preset: str = "veryfast"  # keeps B-frames and CABAC, like real encodes

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.width}x{self.height}_{self.fps}fps_{self.seconds:g}s_s{self.seed}.mp4"


CORPORA: dict[str, tuple[ClipSpec, ...]] = {
    # Item 1 (and 4, 6): 1080p H.264, 4 clips x 20 s.
    "hd": tuple(ClipSpec(f"hd{i}", 1920, 1080, 30, 20.0, seed=i) for i in range(4)),
    # Item 4: short 1080p clips, so that many windows stream through (a batch's tail is a small part of the run).
    "hd_short": tuple(ClipSpec(f"hds{i}", 1920, 1080, 30, 6.0, seed=30 + i) for i in range(4)),
    # Item 5: cheap to decode, so a 10x corpus fits the time budget; frames reach the model at 378 px anyway.
    "lite": tuple(ClipSpec(f"lite{i}", 640, 360, 30, 12.0, seed=10 + i) for i in range(4)),
    # --quick: correctness only.
    "quick": tuple(ClipSpec(f"quick{i}", 320, 240, 24, 3.0, seed=20 + i, gop=24) for i in range(2)),
}


def _render_clip(path: Path, spec: ClipSpec) -> None:
    import av

    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 60, size=3)
    frame0 = np.empty((h, w, 3), dtype=np.uint8)
    for c in range(3):
        frame0[..., c] = (base[c] + (xx * (c + 1) + yy * (3 - c)) * 195 // (w + h)) % 256
    # Static block texture so that intra frames cost something to code and decode.
    texture = rng.integers(0, 24, size=(-(-h // 8), -(-w // 8), 1), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frame0 = (frame0.astype(np.uint16) + texture[:h, :w]).clip(0, 255).astype(np.uint8)
    side = max(8, min(h, w) // 5)
    speeds = rng.uniform(-0.25, 0.25, size=(3, 2)) * (w, h)
    starts = rng.uniform(0, 1, size=(3, 2)) * (w - side, h - side)
    colors = rng.integers(0, 256, size=(3, 3), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream: Any = container.add_stream("libx264", rate=Fraction(spec.fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": spec.preset, "crf": str(spec.crf), "g": str(spec.gop)}
        for i in range(round(spec.seconds * spec.fps)):
            t = i / spec.fps
            frame = frame0.copy()
            for k in range(3):
                x = int(abs((starts[k, 0] + speeds[k, 0] * t) % (2 * (w - side)) - (w - side)))
                y = int(abs((starts[k, 1] + speeds[k, 1] * t) % (2 * (h - side)) - (h - side)))
                frame[y : y + side, x : x + side] = colors[k]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def ensure_corpus(name: str, workdir: Path) -> list[Path]:
    """The clips of corpus `name` under workdir/corpus/<name>, generated once and reused."""
    folder = workdir / "corpus" / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in CORPORA[name]:
        path = folder / spec.filename
        if not path.exists():
            started = time.perf_counter()
            _render_clip(path, spec)
            print(f"  generated {path.name} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.0f} s)")
        paths.append(path)
    return paths


def replicate(clips: Sequence[Path], count: int, folder: Path) -> Path:
    """A folder holding `count` videos: the clips, then hard links (or copies) of them under new names.

    Each name is its own video for the pipeline (its video_id hashes the URI), so a corpus 10x larger
    costs no extra encoding.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i in range(count):
        src = clips[i % len(clips)]
        dst = folder / f"v{i:03d}_{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return folder


def ensure_tiny_model(workdir: Path, frame_size: int) -> Path:
    """The tiny random Molmo2 (real transformers classes) at `frame_size` px, built once."""
    from pipeline.devtools.tiny_model import METADATA_FILE, build_tiny_molmo2

    out = workdir / f"tiny-molmo2-{frame_size}"
    if not (out / METADATA_FILE).exists():
        build_tiny_molmo2(out, frame_size=frame_size, seed=0, overwrite=True)
    return out


def synthetic_frames(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` square RGB frames at model resolution (content does not change the model's cost)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        for c in range(3):
            frames[i, ..., c] = (xx * (c + 1) + yy * (3 - c) + 7 * i + 50 * seed) % 256
        s = size // 5
        x, y = rng.integers(0, size - s, size=2)
        frames[i, y : y + s, x : x + s] = rng.integers(0, 256, size=3)
    return frames


# ----------------------------------------------------------------------------------------------
# Ray


@contextlib.contextmanager
def ray_session(num_cpus: int = 4, object_store_mb: int = 600) -> Iterator[None]:
    """A local Ray on loopback (more logical CPUs than the 2 cores: see RAY_AND_S3.md); reuses a running one."""
    prepare_environment()
    import ray

    if ray.is_initialized():
        yield
        return
    for attempt in range(3):  # on a loaded machine the raylet or GCS can miss Ray's start-up deadline
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=object_store_mb * 1024**2,
                log_to_driver=False,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(5.0)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------------------
# Command line


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="Tiny corpus and model: correctness only, not figures.")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="Corpus, models and run outputs.")
    parser.add_argument("--json", dest="json_path", default=None, help="Also write the results to this JSON file.")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="First wait up to this long for the machine to be idle (other jobs skew wall clocks).",
    )
    return parser


def maybe_wait(args: argparse.Namespace) -> None:
    """Honour --wait-idle, and say how busy the machine was when the measurement started."""
    if getattr(args, "wait_idle", 0) > 0:
        busy = wait_for_idle(args.wait_idle)
        print(f"(machine {busy:.0%} busy with other work at the start)")


def machine_summary() -> str:
    import platform

    cpus = os.cpu_count() or 0
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except Exception:
        mem, load = "?", "?"
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {cpus} CPU ({model}), {mem} RAM, Python {platform.python_version()}, load avg {load}"
