"""Probe a local video file: container sniffing, stream metadata, rotation; clear errors for what is not a video."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.io.secrets import redact
from pipeline.results.grounding import display_size
from pipeline.video.errors import (
    DamagedContainer,
    Deadline,
    DecodeError,
    DecodeTimeout,
    NotAVideo,
    NoVideoStream,
    UnsupportedCodec,
)


@dataclass
class VideoProbe:
    """Container metadata and the presentation time of every frame."""

    duration_s: float
    fps: float
    width: int  # display width (after rotation)
    height: int  # display height
    coded_width: int
    coded_height: int
    codec: str
    rotation: int  # counter-clockwise degrees to turn decoded frames upright
    frame_times: np.ndarray  # start time (s) of every frame, ascending
    declared_duration_s: float | None = None  # what the container's header claims
    truncated: str | None = None  # why the data is shorter than the header claims, if it is
    start_pts: int = 0  # the pts that is time 0


_CONTAINER_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"),
    (4, b"moov", "MP4/MOV"),
    (4, b"mdat", "MP4/MOV"),
    (4, b"free", "MP4/MOV"),
    (4, b"wide", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"RIFF", "AVI"),
    (0, b"FLV", "FLV"),
    (0, b"OggS", "Ogg"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"\x00\x00\x01\xb3", "MPEG video"),
)


def _sniff(path: str) -> str:
    """What the file's first bytes look like: a container name, 'text', or '' (unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return ""
    for offset, magic, name in _CONTAINER_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG-TS"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return "text" if text and all(c.isprintable() or c.isspace() for c in text) else ""


def _unreadable(path: str, exc: BaseException) -> DecodeError:
    kind = _sniff(path)
    detail = redact(f"{type(exc).__name__}: {exc}")[:300]
    if kind == "text":
        return NotAVideo(f"a text file, not a video ({detail})")
    if kind:
        return DamagedContainer(f"starts like a {kind} file but cannot be read: truncated or damaged ({detail})")
    return NotAVideo(f"not a video container: unrecognised bytes ({detail})")


def probe_video(path: str, deadline: Deadline | None = None) -> VideoProbe:
    """Read container metadata and frame times with PyAV (demux only, no pixel decoding but one frame)."""
    import av

    deadline = deadline or Deadline(float("inf"))
    try:
        container = av.open(path)
    except Exception as exc:
        raise _unreadable(path, exc) from None
    with container:
        if not container.streams.video:
            raise NoVideoStream("no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise UnsupportedCodec(
                "the video stream's codec has no decoder in this FFmpeg build (unknown or unsupported codec tag)"
            )
        codec = stream.codec_context.name or "unknown"
        coded_w, coded_h = int(stream.width or 0), int(stream.height or 0)
        if coded_w <= 0 or coded_h <= 0:
            raise UnsupportedCodec(f"codec {codec}: the stream has no frame size (unsupported or damaged)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        time_base = float(stream.time_base) if stream.time_base else 0.0
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        pts: list[int] = []
        demux_error: str | None = None
        try:
            for n, packet in enumerate(container.demux(stream)):
                if n % 256 == 0:
                    deadline.check("reading the container index")
                if packet.pts is not None and packet.size > 0:
                    pts.append(packet.pts)
        except DecodeTimeout:
            raise
        except Exception as exc:  # damage after some packets: keep what was read, say so below
            demux_error = redact(f"{type(exc).__name__}: {exc}")[:300]
        if not pts:
            if demux_error:
                raise DamagedContainer(f"no packet could be read: {demux_error}")
            raise DecodeError("video stream has no frames")
        start_pts = stream.start_time if stream.start_time is not None else min(pts)
        times = np.unique((np.asarray(pts, dtype=np.float64) - start_pts) * time_base)
        # Rotation lives in the display-matrix side data; the first decoded frame carries it.
        rotation = 0
        container.seek(0)
        try:
            for frame in container.decode(stream):
                rotation = round(float(getattr(frame, "rotation", 0) or 0)) % 360
                break
        except Exception as exc:
            raise DamagedContainer(f"first frame does not decode: {redact(exc)[:300]}") from None
    if fps <= 0:
        fps = (len(times) - 1) / float(times[-1] - times[0]) if len(times) > 1 else 1.0
    duration = round(float(times[-1] + 1.0 / fps), 6) if len(times) else 0.0
    truncated = None
    if demux_error:
        truncated = f"the container breaks off after {duration:.2f} s ({demux_error})"
    elif declared and declared - duration > max(2.0 / fps, 0.02 * declared, 0.1):
        truncated = f"the container declares {declared:.2f} s but its data ends at {duration:.2f} s (truncated file)"
    if rotation % 90:
        # The decoder can only turn frames by quarter turns (pipeline.video.readers.rotate_frames).
        raise DecodeError(f"rotation metadata of {rotation} degrees is not a multiple of 90: frames cannot be turned upright")
    # The size the model's 0..1000 coordinates refer to: one rule, shared with the points' grounding.
    width, height = display_size(coded_w, coded_h, rotation)
    return VideoProbe(
        duration, fps, width, height, coded_w, coded_h, codec, rotation, times, declared, truncated, int(start_pts)
    )
