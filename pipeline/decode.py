"""Decode stage (CPU): one video in, one row per window out, frames already at model resolution.

Why decode here and not in the model actor: decoding is CPU work that would idle a GPU, and resizing in
the decoder to the model's square frame (378 px for Molmo2) hands ~14x fewer bytes per 1080p frame
through Ray's object store than full frames would. Only the frames the sampler picks are decoded into
pixels at all.

Frames are rotated upright (rotation metadata) before the model sees them, so the model's 0..1000
coordinates are in the *display* frame, whose size is what the `videos` table records.

Errors are data: any failure yields one row with `decode_status == "failed"` that names the stage,
the error type and a message, and the stream goes on with the next video.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.sampling import FrameSampler, Window, frames_in_window, plan_windows
from pipeline.storage import get_fs


class DecodeError(RuntimeError):
    """A video that cannot be decoded (the message says why)."""


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than the configured limit."""


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode stage needs from the run config (small and picklable)."""

    frame_size: int
    sampler: FrameSampler
    window_s: float
    overlap_s: float
    decoder: str = "decord"
    threads: int = 0
    timeout_s: float = 600.0
    max_video_bytes: int = 20 * 1024**3
    endpoint_url: str | None = None


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


# ----------------------------------------------------------------------------------------------
# Fetching: local files are read in place; remote objects are spooled to local disk because both
# decoders need random access (seek) and a real file.


@contextlib.contextmanager
def local_copy(uri: str, *, endpoint_url: str | None, max_bytes: int) -> Iterator[str]:
    """Yield a local path holding the object's bytes (downloaded if remote, removed afterwards)."""
    fs, path = get_fs(uri, endpoint_url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    size = int(fs.size(path) or 0)
    if size > max_bytes:
        raise DecodeError(f"video is {size} bytes, over max_video_bytes={max_bytes}")
    if size == 0:
        raise DecodeError("video file is empty (0 bytes)")
    if protocol in ("file", "local"):
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="molmo-batch-")
    try:
        local = os.path.join(tmpdir, os.path.basename(path) or "video")
        fs.get_file(path, local)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Probing


def _display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation % 180 == 90 else (width, height)


def probe_video(path: str) -> VideoProbe:
    """Read container metadata and frame times with PyAV (demux only, no pixel decoding but one frame)."""
    import av

    try:
        container = av.open(path)
    except Exception as exc:
        raise DecodeError(f"not a readable video container: {type(exc).__name__}: {exc}") from None
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        coded_w, coded_h = int(stream.width or 0), int(stream.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        time_base = float(stream.time_base) if stream.time_base else 0.0
        pts: list[int] = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size > 0:
                pts.append(packet.pts)
        if not pts:
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
            raise DecodeError(f"first frame does not decode: {type(exc).__name__}: {exc}") from None
    if fps <= 0:
        fps = (len(times) - 1) / float(times[-1] - times[0]) if len(times) > 1 else 1.0
    duration = round(float(times[-1] + 1.0 / fps), 6) if len(times) else 0.0
    width, height = _display_size(coded_w, coded_h, rotation)
    return VideoProbe(duration, fps, width, height, coded_w, coded_h, codec, rotation, times)


# ----------------------------------------------------------------------------------------------
# Decoding selected frames at model resolution


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


class _DecordReader:
    """decord2: multithreaded, seeks to key frames, resizes inside the decoder."""

    def __init__(self, path: str, size: int, threads: int, probe: VideoProbe) -> None:
        import decord

        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), width=size, height=size, num_threads=threads)
        if len(self._vr) == len(probe.frame_times):
            # Same frames in the same order: keep the container's exact (float64) times.
            self.frame_times = probe.frame_times
        else:
            stamps = self._vr.get_frame_timestamp(list(range(len(self._vr))))
            self.frame_times = np.asarray(stamps[:, 0], dtype=np.float64)

    def read(self, indices: list[int], times: np.ndarray) -> np.ndarray:
        del times
        return np.asarray(self._vr.get_batch(indices).asnumpy(), dtype=np.uint8)


class _PyAVReader:
    """PyAV fallback: seek to the window, decode forward, convert only the wanted frames."""

    def __init__(self, path: str, size: int, threads: int, probe: VideoProbe) -> None:
        import av

        self._av = av
        self._path = path
        self._size = size
        self._threads = threads
        self.frame_times = probe.frame_times
        self.skipped = 0

    def read(self, indices: list[int], times: np.ndarray) -> np.ndarray:
        wanted = [float(t) for t in times]
        out: list[np.ndarray | None] = [None] * len(wanted)
        with self._av.open(self._path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self._threads:
                stream.codec_context.thread_count = self._threads
            tb = float(stream.time_base or 0)
            start = stream.start_time or 0
            target = int(wanted[0] / tb) + start if wanted else start
            container.seek(max(target, start), stream=stream, backward=True)
            pos = 0
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except self._av.error.InvalidDataError:
                    self.skipped += 1  # corrupt packet: keep going, the caller reports a partial decode
                    continue
                for frame in frames:
                    if frame.pts is None:
                        continue
                    t = (frame.pts - start) * tb
                    while pos < len(wanted) and t >= wanted[pos] - 1e-4:
                        if out[pos] is None:
                            out[pos] = frame.to_ndarray(width=self._size, height=self._size, format="rgb24")
                        pos += 1
                    if pos >= len(wanted):
                        break
                if pos >= len(wanted):
                    break
        got = [f for f in out if f is not None]
        if not got:
            raise DecodeError("no frame of the window could be decoded")
        return np.stack(got).astype(np.uint8, copy=False)


def _open_reader(path: str, settings: DecodeSettings, probe: VideoProbe) -> tuple[Any, str]:
    if settings.decoder == "decord":
        try:
            return _DecordReader(path, settings.frame_size, settings.threads, probe), "decord"
        except Exception:  # decord lacks a codec or chokes on the container: PyAV decodes what FFmpeg can
            pass
    return _PyAVReader(path, settings.frame_size, settings.threads, probe), "pyav"


# ----------------------------------------------------------------------------------------------
# The stage


def _video_fields(ref: dict[str, Any], probe: VideoProbe | None, num_windows: int) -> dict[str, Any]:
    return {
        "video_id": str(ref["video_id"]),
        "uri": str(ref["uri"]),
        "size_bytes": int(ref.get("size_bytes") or 0),
        "duration_s": float(probe.duration_s) if probe else None,
        "fps": float(probe.fps) if probe else None,
        "width": int(probe.width) if probe else None,
        "height": int(probe.height) if probe else None,
        "codec": probe.codec if probe else None,
        "rotation": int(probe.rotation) if probe else None,
        "num_windows": num_windows,
    }


def _error_row(
    ref: dict[str, Any], probe: VideoProbe | None, stage: str, exc: BaseException, size: int, emitted: int
) -> dict[str, Any]:
    # `num_windows` on an error row = windows already emitted for this video, so the collector knows
    # how many window rows to wait for before the video is complete.
    return {
        **_video_fields(ref, probe, emitted),
        "window_index": -1,
        "t_start": 0.0,
        "t_end": 0.0,
        "frames": np.zeros((0, size, size, 3), dtype=np.uint8),
        "frame_times": np.zeros((0,), dtype=np.float64),
        "decoder": "",
        "decode_status": "failed",
        "error_stage": stage,
        "error_type": type(exc).__name__,
        "error_message": str(exc)[:2000],
    }


def decode_video(ref: dict[str, Any], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """Yield one row per window of `ref` (a VideoRef row), or a single failed row."""
    deadline = time.monotonic() + settings.timeout_s
    stage = "fetch"
    probe: VideoProbe | None = None
    emitted = 0
    try:
        with local_copy(ref["uri"], endpoint_url=settings.endpoint_url, max_bytes=settings.max_video_bytes) as path:
            stage = "probe"
            probe = probe_video(path)
            stage = "decode"
            reader, decoder = _open_reader(path, settings, probe)
            frame_times = np.asarray(reader.frame_times, dtype=np.float64)
            windows = plan_windows(probe.duration_s, settings.window_s, settings.overlap_s)
            for window in windows:
                if time.monotonic() > deadline:
                    raise DecodeTimeout(f"decoding took longer than decode_timeout_s={settings.timeout_s}")
                # Yielding per window keeps memory bounded for hours-long videos.
                row = _decode_window(reader, decoder, window, len(windows), frame_times, probe, ref, settings)
                emitted += 1
                yield row
            if not windows:
                raise DecodeError("video has no duration")
    except Exception as exc:
        yield _error_row(ref, probe, stage, exc, settings.frame_size, emitted)


def _decode_window(
    reader: Any,
    decoder: str,
    window: Window,
    num_windows: int,
    frame_times: np.ndarray,
    probe: VideoProbe,
    ref: dict[str, Any],
    settings: DecodeSettings,
) -> dict[str, Any]:
    in_window = frames_in_window(frame_times, window, is_last=window.index == num_windows - 1)
    if not in_window:
        raise DecodeError(f"window {window.index} [{window.start:.2f}, {window.end:.2f}] s holds no frames")
    local = settings.sampler.sample(frame_times[in_window].tolist(), probe.fps)
    indices = [in_window[i] for i in local]
    times = frame_times[indices]
    skipped_before = getattr(reader, "skipped", 0)
    frames = reader.read(indices, times)
    status = "ok"
    message = None
    if len(frames) < len(indices) or getattr(reader, "skipped", 0) > skipped_before:
        status = "partial"
        message = f"decoded {len(frames)} of {len(indices)} sampled frames (corrupt data skipped)"
        times = times[: len(frames)]
    frames = _rotate(frames, probe.rotation)
    return {
        **_video_fields(ref, probe, num_windows),
        "window_index": window.index,
        "t_start": float(window.start),
        "t_end": float(window.end),
        "frames": frames,
        "frame_times": times.astype(np.float64),
        "decoder": decoder,
        "decode_status": status,
        "error_stage": "decode" if message else None,
        "error_type": "PartialDecode" if message else None,
        "error_message": message,
    }


def decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """Ray Data UDF: a batch of VideoRef rows in, window rows out (one output batch per window)."""
    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        ref = {k: batch[k][i] for k in keys}
        for row in decode_video(ref, settings):
            yield {k: [v] if not isinstance(v, np.ndarray) else v[None, ...] for k, v in row.items()}
