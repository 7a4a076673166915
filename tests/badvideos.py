"""A corpus of bad (and a few good) videos, generated here with PyAV or raw bytes, each with the outcome
the pipeline must give it. Used by tests/video/test_bad_videos.py; handy for trying the pipeline by hand:

    python -c "from tests.badvideos import write_bad_corpus; write_bad_corpus('bad')"
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.devtools.samples import SampleSpec, render_frame, write_video


@dataclass(frozen=True)
class Expected:
    """What the pipeline must make of one file: its `videos.status` and its one `errors` row (if any)."""

    status: str  # ok | partial | failed
    stage: str | None = None  # errors.stage
    error_type: str | None = None  # errors.error_type
    message: str | None = None  # a substring of errors.message


def _encode(path: Path, frames: Any, *, rate: Any, width: int, height: int, options: dict[str, str] | None = None,
            movflags: str | None = None) -> Path:
    import av

    with av.open(str(path), "w", options={"movflags": movflags} if movflags else {}) as container:
        stream: Any = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options or {"preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _rgb_frames(spec: SampleSpec, n: int) -> Any:
    import av

    for i in range(n):
        yield av.VideoFrame.from_ndarray(render_frame(spec, i), format="rgb24")


def write_truncated_faststart(path: Path) -> Path:
    """The index (moov) is at the front, the media data is cut at 60%: decodable up to the cut."""
    spec = SampleSpec("cut", seconds=3, fps=10, width=160, height=120, seed=5)
    _encode(path, _rgb_frames(spec, 30), rate=10, width=160, height=120,
            options={"preset": "ultrafast", "g": "5"}, movflags="faststart")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def write_corrupt_packets(path: Path) -> Path:
    """Six packets in the middle overwritten with random bytes (key frames every 5 frames)."""
    import av

    spec = SampleSpec("corrupt", seconds=3, fps=10, width=160, height=120, seed=3)
    _encode(path, _rgb_frames(spec, 30), rate=10, width=160, height=120, options={"preset": "ultrafast", "g": "5"})
    with av.open(str(path)) as container:
        packets = [(int(p.pos or 0), p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for pos, size in packets[10:16]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def write_huge(path: Path, width: int = 7680, height: int = 4320, frames: int = 2) -> Path:
    """8K frames, a few hundred KB on disk (flat grey frames compress to nothing)."""
    import av

    def gen() -> Any:
        for i in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, value in zip(frame.planes, (60 + 40 * i, 128, 128), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            yield frame

    return _encode(path, gen(), rate=1, width=width, height=height, options={"preset": "ultrafast", "crf": "45"})


def write_long(path: Path, seconds: int = 7200, fps: int = 1, size: int = 64) -> Path:
    """Hours long at a low frame rate and a tiny size: many windows, few bytes."""
    import av

    def gen() -> Any:
        base = np.zeros((size, size, 3), dtype=np.uint8)
        for i in range(seconds * fps):
            f = base.copy()
            f[:, :, 0] = (i * 7) % 256
            f[i % size, :, 1] = 255
            yield av.VideoFrame.from_ndarray(f, format="rgb24")

    return _encode(path, gen(), rate=fps, width=size, height=size,
                   options={"preset": "ultrafast", "crf": "40", "g": "600"})


VFR_TIMES_MS = (0, 33, 66, 100, 500, 533, 1500, 1533, 1566, 3000)


def write_vfr(path: Path, times_ms: tuple[int, ...] = VFR_TIMES_MS) -> Path:
    """Variable frame rate: frames at the given presentation times (ms), gaps of 33 ms to 1.4 s."""
    import av

    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 20 * i, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_unknown_codec(path: Path, good: Path) -> Path:
    """A valid MP4 whose codec tag (avc1) is replaced by one no decoder knows."""
    path.write_bytes(good.read_bytes().replace(b"avc1", b"zzzz"))
    return path


def write_bad_corpus(folder: str | Path, *, include_long: bool = True) -> dict[str, Expected]:
    """Write every case into `folder`; return file name -> expected outcome.

    `vanished.mp4` is written too: the test deletes it after listing (deleted between listing and
    reading). `denied.mp4` is not: whether permissions can deny the test process is the test's call.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    good_a = write_video(root / "good_a.mp4", SampleSpec("a", seconds=3, fps=10, width=160, height=120, seed=1))
    write_video(root / "good_b.mp4", SampleSpec("b", seconds=4, fps=12, width=176, height=144, seed=2))
    (root / "empty.mp4").write_bytes(b"")
    data = good_a.read_bytes()
    (root / "truncated_index_lost.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: cut off
    write_truncated_faststart(root / "truncated_tail.mp4")
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    write_audio_only(root / "audio_only.mp4")
    write_video(root / "single_frame.mp4", SampleSpec("one", seconds=0.01, fps=10, width=160, height=120, seed=4))
    write_corrupt_packets(root / "corrupt_packets.mp4")
    write_huge(root / "huge_8k.mp4")
    write_vfr(root / "vfr.mp4")
    write_video(root / "rotated_270.mp4", SampleSpec("r", seconds=2, fps=10, width=160, height=96, seed=6, rotation=270))
    write_unknown_codec(root / "unknown_codec.mp4", good_a)
    write_video(root / "vanished.mp4", SampleSpec("v", seconds=1, fps=10, width=96, height=64, seed=7))
    expected = {
        "good_a.mp4": Expected("ok"),
        "good_b.mp4": Expected("ok"),
        "empty.mp4": Expected("failed", "fetch", "EmptyVideo", "empty"),
        "truncated_index_lost.mp4": Expected("failed", "probe", "DamagedContainer", "truncated or damaged"),
        "truncated_tail.mp4": Expected("partial", "decode", "Truncated", "truncated file"),
        "random_bytes.mp4": Expected("failed", "probe", "NotAVideo", "unrecognised bytes"),
        "text.mp4": Expected("failed", "probe", "NotAVideo", "text file"),
        "audio_only.mp4": Expected("failed", "probe", "NoVideoStream", "no video stream"),
        "single_frame.mp4": Expected("ok"),
        "corrupt_packets.mp4": Expected("partial", "decode", "PartialDecode", "corrupt packet"),
        "huge_8k.mp4": Expected("ok"),
        "vfr.mp4": Expected("ok"),
        "rotated_270.mp4": Expected("ok"),
        "unknown_codec.mp4": Expected("failed", "probe", "UnsupportedCodec", "no decoder"),
        "vanished.mp4": Expected("failed", "fetch", "ObjectMissing", "deleted"),
    }
    if include_long:
        write_long(root / "long_2h.mp4")
        expected["long_2h.mp4"] = Expected("ok")
    return expected


DENIED = Expected("failed", "fetch", "AccessDenied", "access denied")
