"""Generate real sample videos (H.264 mp4 via PyAV/FFmpeg) for the demo, tests and benchmarks.

Each video shows coloured squares moving across a gradient, so frames differ in time and between
videos (the tiny model's answers then depend on the input). Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SampleSpec:
    name: str
    seconds: float
    fps: float = 24.0
    width: int = 320
    height: int = 240
    seed: int = 0
    rotation: int = 0  # display-matrix rotation, counter-clockwise degrees
    codec: str = "libx264"


def render_frame(spec: SampleSpec, index: int) -> np.ndarray:
    """The RGB frame `index` of `spec` (H, W, 3 uint8)."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    base = rng.integers(0, 255, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.empty((h, w, 3), dtype=np.uint8)
    for c in range(3):
        frame[..., c] = (base[c] + (xx * (c + 1) + yy * (3 - c)) * 255 // (w + h)) % 256
    t = index / spec.fps
    side = max(8, min(h, w) // 6)
    for k in range(3):
        vx, vy = rng.uniform(-0.3, 0.3, size=2) * w
        x0, y0 = rng.uniform(0, 1, size=2) * (w - side, h - side)
        x = int(abs((x0 + vx * t) % (2 * (w - side)) - (w - side)))
        y = int(abs((y0 + vy * t) % (2 * (h - side)) - (h - side)))
        color = np.array([(80 * (k + 1) + spec.seed * 37) % 256, (200 - 60 * k) % 256, (40 + 90 * k) % 256])
        frame[y : y + side, x : x + side] = color.astype(np.uint8)
    return frame


def write_video(path: str | Path, spec: SampleSpec) -> Path:
    """Encode `spec` to `path` (mp4 unless the suffix says otherwise)."""
    import av

    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(spec.seconds * spec.fps))
    with av.open(str(out_path), "w") as container:
        rate = Fraction(spec.fps).limit_denominator(1001)
        stream: Any = container.add_stream(spec.codec, rate=rate)
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        if spec.codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "28"}
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out_path


DEMO_SPECS: tuple[SampleSpec, ...] = (
    SampleSpec("street_short", seconds=4.0, fps=24, width=320, height=240, seed=1),
    SampleSpec("store_aisle", seconds=9.0, fps=30, width=480, height=270, seed=2),
    SampleSpec("parking_long", seconds=26.0, fps=25, width=320, height=180, seed=3),
    SampleSpec("portrait_phone", seconds=5.0, fps=30, width=320, height=180, seed=4, rotation=90),
)


def write_demo_corpus(folder: str | Path, specs: tuple[SampleSpec, ...] = DEMO_SPECS) -> list[Path]:
    """Write the demo videos into `folder` (skips files that already exist)."""
    root = Path(folder)
    paths = []
    for spec in specs:
        p = root / f"{spec.name}.mp4"
        if not p.exists():
            write_video(p, spec)
        paths.append(p)
    return paths
