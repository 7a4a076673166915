"""Decode stage (CPU): one video in, one row per window out, frames already at model resolution.

Why decode here and not in the model actor: decoding is CPU work that would idle a GPU, and resizing in
the decoder to the model's square frame (378 px for Molmo2) hands ~14x fewer bytes per 1080p frame
through Ray's object store than full frames would. Only the frames the sampler picks are converted to
pixels at all; the default PyAV reader does not even decode the unsampled frames that no other frame
predicts from (BENCHMARKS.md item 1: ~2.3-2.5x the frames per CPU-second of the model card's decord path).
Rows are yielded window by window, so an hours-long video never sits in memory.

Frames are rotated upright (rotation metadata) before the model sees them, so the model's 0..1000
coordinates are in the *display* frame, whose size is what the `videos` table records.

Errors are data: any failure yields one row with `decode_status == "failed"` that names the stage
(fetch, probe, decode), the error type (one of the `DecodeError` subclasses below, or the storage
error) and a message (credentials redacted); the stream goes on with the next video. Damage that
still leaves frames to decode (corrupt packets, a truncated file) marks the affected window
`partial` and says so.

A per-video time limit (`timeout_s`) is checked between windows and inside the loops that take time
(demuxing, every packet PyAV decodes, every few frames decord decodes, retries of a download), so a
video stops within about one packet's or one frame chunk's decode time of its deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import ledger, testhooks
from pipeline.retry import DEFAULT_POLICY, RetryPolicy, StorageUnavailable, retry_call
from pipeline.sampling import FrameSampler, Window, frames_in_window, plan_windows
from pipeline.secrets import redact
from pipeline.storage import get_fs


class DecodeError(RuntimeError):
    """A video that cannot be decoded (the message says why)."""


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than the configured limit."""


class EmptyVideo(DecodeError):
    """The object has no bytes."""


class VideoTooLarge(DecodeError):
    """The object is larger than `max_video_bytes`."""


class ObjectMissing(DecodeError):
    """The object was listed but is gone when read (deleted or replaced in between)."""


class SourceUnreadable(DecodeError):
    """The listing already found this video unreadable (a manifest row, a damaged shard)."""


class AccessDenied(DecodeError):
    """The credentials may not read the object."""


class NotAVideo(DecodeError):
    """The bytes are no video container at all (text, random data, another file type)."""


class DamagedContainer(DecodeError):
    """The file looks like a video container but cannot be read: truncated or damaged."""


class NoVideoStream(DecodeError):
    """The container holds no video stream (audio only, subtitles, ...)."""


class DecoderCrashed(DecodeError):
    """The decode process died (segfault, OOM kill) on this video more often than `crash_retries` allows."""


class UnsupportedCodec(DecodeError):
    """The video stream's codec has no decoder in this FFmpeg build."""


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode stage needs from the run config (small and picklable)."""

    frame_size: int
    sampler: FrameSampler
    window_s: float
    overlap_s: float
    decoder: str = "pyav"
    threads: int = 0
    timeout_s: float = 600.0
    max_video_bytes: int = 20 * 1024**3
    endpoint_url: str | None = None
    retry: RetryPolicy = DEFAULT_POLICY
    crash_retries: int = 1  # retries of a video whose decode process died, before it becomes an error row
    ledger: Any = field(default=None, compare=False)  # ledger.AttemptLedger actor (None outside Ray)
    test_hooks: testhooks.Hooks = ()  # TEST-ONLY fault injection (pipeline.testhooks)


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


class Deadline:
    """The monotonic time by which one video must be done."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def check(self, where: str) -> None:
        if time.monotonic() > self.at:
            raise DecodeTimeout(f"decoding took longer than decode_timeout_s={self.timeout_s:g} (stopped while {where})")


# ----------------------------------------------------------------------------------------------
# Fetching: local files are read in place; remote objects are spooled to local disk because both
# decoders need random access (seek) and a real file. Transient storage errors are retried with
# backoff (pipeline.retry); a missing or forbidden object fails at once with a clear type.


def _fetch_error(exc: BaseException, uri: str) -> BaseException:
    if isinstance(exc, FileNotFoundError):
        return ObjectMissing(f"object not found when read (deleted or replaced after listing?): {uri}")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"access denied reading {uri}: the credentials may not read this object")
    return exc


def _copy_range(fs: Any, path: str, dest: str, offset: int, length: int, chunk: int = 8 * 1024**2) -> int:
    """Copy `length` bytes (-1: to the end) of `path` from `offset` into the local file `dest`."""
    copied = 0
    with fs.open(path, "rb") as src, open(dest, "wb") as out:
        src.seek(offset)
        while length < 0 or copied < length:
            data = src.read(chunk if length < 0 else min(chunk, length - copied))
            if not data:
                break
            out.write(data)
            copied += len(data)
    return copied


@contextlib.contextmanager
def local_copy(
    uri: str,
    *,
    endpoint_url: str | None,
    max_bytes: int,
    policy: RetryPolicy = DEFAULT_POLICY,
    deadline: Deadline | None = None,
    byte_offset: int = 0,
    byte_length: int = -1,
) -> Iterator[str]:
    """Yield a local path holding the object's bytes (downloaded if remote, removed afterwards).

    With `byte_offset`/`byte_length` (a video inside a tar shard) only that range is fetched, with one
    ranged read, into a local file.
    """
    deadline = deadline or Deadline(float("inf"))
    fs, path = get_fs(uri, endpoint_url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ranged = byte_offset > 0 or byte_length >= 0
    if ranged and byte_length >= 0:
        size = byte_length
    else:
        try:
            size = int(retry_call(lambda: fs.size(path), f"size of {uri}", policy, deadline=deadline.at) or 0)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        size = max(0, size - byte_offset)
    if size > max_bytes:
        raise VideoTooLarge(f"video is {size} bytes, over max_video_bytes={max_bytes}")
    if size == 0:
        raise EmptyVideo("video file is empty (0 bytes)")
    if protocol in ("file", "local") and not ranged:
        try:
            with open(path, "rb") as fh:  # readable by us? (a 000 file, another user's file)
                fh.read(1)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="molmo-batch-")
    try:
        local = os.path.join(tmpdir, os.path.basename(path) or "video")
        try:
            if ranged:
                retry_call(
                    lambda: _copy_range(fs, path, local, byte_offset, byte_length), f"read {uri}", policy, deadline=deadline.at
                )
            else:
                retry_call(lambda: fs.get_file(path, local), f"download {uri}", policy, deadline=deadline.at)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        except StorageUnavailable:
            deadline.check("downloading")
            raise
        deadline.check("downloading")
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Probing

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


def _display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation % 180 == 90 else (width, height)


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
    width, height = _display_size(coded_w, coded_h, rotation)
    return VideoProbe(
        duration, fps, width, height, coded_w, coded_h, codec, rotation, times, declared, truncated, int(start_pts)
    )


# ----------------------------------------------------------------------------------------------
# Decoding selected frames at model resolution. A reader's `read` returns the frames it decoded and
# their true presentation times (a frame lost to corruption is not silently replaced).


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _import_torch_before_decord() -> None:
    """decord2 dlopens every `nvidia/*/lib/*.so` it finds (torch's CUDA wheels, libnvblas among them)
    with RTLD_GLOBAL. A torch imported after that sends its CPU matrix products to NVBLAS, which aborts
    the process ("[NVBLAS] CPU Blas library need to be provided") or crashes it. Torch imported first
    keeps its own BLAS. Matters wherever decode and the model share a process (tests, reused workers)."""
    import contextlib

    with contextlib.suppress(ImportError):
        import torch  # noqa: F401


class _DecordReader:
    """decord2: multithreaded, seeks to key frames, resizes inside the decoder."""

    CHUNK = 16  # frames per decord call: the granularity of the time limit

    def __init__(self, path: str, size: int, threads: int, probe: VideoProbe) -> None:
        _import_torch_before_decord()
        import decord

        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), width=size, height=size, num_threads=threads)
        self.skipped = 0
        if len(self._vr) == len(probe.frame_times):
            # Same frames in the same order: keep the container's exact (float64) times.
            self.frame_times = probe.frame_times
        else:
            stamps = self._vr.get_frame_timestamp(list(range(len(self._vr))))
            self.frame_times = np.asarray(stamps[:, 0], dtype=np.float64)

    def read(self, indices: list[int], times: np.ndarray, deadline: Deadline) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for i in range(0, len(indices), self.CHUNK):
            deadline.check("decoding frames")
            parts.append(np.asarray(self._vr.get_batch(indices[i : i + self.CHUNK]).asnumpy(), dtype=np.uint8))
        return np.concatenate(parts), np.asarray(times, dtype=np.float64)


class _PyAVReader:
    """PyAV: seek to the window, decode forward, convert (and resize) only the wanted frames; skips
    corrupt packets.

    Frames nobody sampled are not even decoded when no other frame depends on them: a packet whose
    frame is not wanted is decoded with `skip_frame = NONREF`, so FFmpeg drops it if it is a
    non-reference frame (most B-frames of H.264/HEVC) and decodes it as usual if other frames predict
    from it. Every decoded frame is therefore bit-identical to a full decode (tests/test_decode_skip.py);
    at 2 fps from 30 fps H.264 this is most of the decoding work of a window (BENCHMARKS.md, item 1).
    """

    def __init__(self, path: str, size: int, threads: int, probe: VideoProbe) -> None:
        import av

        self._av = av
        self._path = path
        self._size = size
        self._threads = threads
        self._start = probe.start_pts
        self._tol = 0.25 / probe.fps if probe.fps > 0 else 1e-3  # a quarter frame: float noise, not a neighbour
        self.frame_times = probe.frame_times
        self.skipped = 0
        self.skip_unsampled = True
        self.decoded = 0  # frames the decoder produced (sampled or not): what skipping saves shows here

    def _wanted(self, t: float | None, wanted: np.ndarray) -> bool:
        """Whether a frame at time `t` is (within a quarter frame) one of the sampled times (ascending)."""
        if t is None or not len(wanted):
            return True  # no time: never skip what we cannot place
        i = int(np.searchsorted(wanted, t))
        near = wanted[max(0, i - 1) : i + 1]
        return bool(np.any(np.abs(near - t) <= self._tol))

    def read(self, indices: list[int], times: np.ndarray, deadline: Deadline) -> tuple[np.ndarray, np.ndarray]:
        del indices
        wanted = [float(t) for t in times]  # ascending, like the frames a window samples
        wanted_arr = np.asarray(wanted, dtype=np.float64)
        got: list[np.ndarray] = []
        got_times: list[float] = []
        with self._av.open(self._path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self._threads:
                stream.codec_context.thread_count = self._threads
            tb = float(stream.time_base or 0)
            start = self._start
            target = int(wanted[0] / tb) + start if wanted and tb else start
            container.seek(max(target, start), stream=stream, backward=True)
            pos = 0
            ctx = stream.codec_context
            try:
                for packet in container.demux(stream):
                    deadline.check("decoding frames")
                    if self.skip_unsampled:
                        # Packets arrive in decode order; a packet's pts is the time of the frame it holds.
                        t_packet = None if packet.pts is None else (packet.pts - start) * tb
                        ctx.skip_frame = "DEFAULT" if self._wanted(t_packet, wanted_arr) else "NONREF"
                    try:
                        frames = packet.decode()
                    except self._av.error.InvalidDataError:
                        self.skipped += 1  # corrupt packet: keep going, the caller reports a partial decode
                        continue
                    self.decoded += len(frames)
                    for frame in frames:
                        if frame.pts is None:
                            continue
                        t = (frame.pts - start) * tb
                        while pos < len(wanted) and t > wanted[pos] + self._tol:
                            pos += 1  # that wanted frame's packet was lost: skip it, never substitute
                        if pos < len(wanted) and abs(t - wanted[pos]) <= self._tol:
                            got.append(frame.to_ndarray(width=self._size, height=self._size, format="rgb24"))
                            got_times.append(wanted[pos])
                            pos += 1
                        if pos >= len(wanted):
                            break
                    if pos >= len(wanted):
                        break
            except self._av.error.InvalidDataError:
                self.skipped += 1  # the demuxer itself hit damage: what was decoded so far stands
        if not got:
            raise DecodeError(f"no frame of the window could be decoded ({self.skipped} corrupt packet(s))")
        return np.stack(got).astype(np.uint8, copy=False), np.asarray(got_times, dtype=np.float64)


def _open_reader(path: str, settings: DecodeSettings, probe: VideoProbe) -> tuple[Any, str]:
    # A truncated file's index lists frames whose data is gone; decord would stall on them.
    if settings.decoder == "decord" and not probe.truncated:
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
        "source_metadata": str(ref.get("source_metadata") or "") or None,
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
        "error_message": redact(str(exc) or type(exc).__name__)[:2000],
    }


def decode_video(ref: dict[str, Any], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """Yield one row per window of `ref` (a VideoRef row), or a failed row where decoding stopped."""
    deadline = Deadline(settings.timeout_s)
    stage = "fetch"
    probe: VideoProbe | None = None
    emitted = 0
    try:
        if ref.get("source_error"):
            stage = "source"
            raise SourceUnreadable(str(ref["source_error"]))
        with local_copy(
            str(ref.get("source_url") or "") or str(ref["uri"]),
            endpoint_url=settings.endpoint_url,
            max_bytes=settings.max_video_bytes,
            policy=settings.retry,
            deadline=deadline,
            byte_offset=int(ref.get("byte_offset") or 0),
            byte_length=int(ref["byte_length"]) if ref.get("byte_length") is not None else -1,
        ) as path:
            stage = "probe"
            deadline.check("opening the video")
            probe = probe_video(path, deadline)
            stage = "decode"
            reader, decoder = _open_reader(path, settings, probe)
            frame_times = np.asarray(reader.frame_times, dtype=np.float64)
            windows = plan_windows(probe.duration_s, settings.window_s, settings.overlap_s)
            if not windows:
                raise DecodeError("video has no duration")
            for window in windows:
                deadline.check(f"at window {window.index} of {len(windows)}")
                try:
                    row = _decode_window(reader, decoder, window, len(windows), frame_times, probe, ref, settings, deadline)
                except (DecodeTimeout, DecodeError):
                    raise
                except Exception:
                    if decoder != "decord":
                        raise
                    # decord failed on this window (corrupt data, a codec quirk): PyAV takes over for the
                    # rest of the video, skipping what cannot be decoded and saying so.
                    reader, decoder = _PyAVReader(path, settings.frame_size, settings.threads, probe), "pyav"
                    row = _decode_window(reader, decoder, window, len(windows), frame_times, probe, ref, settings, deadline)
                emitted += 1
                yield row
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
    deadline: Deadline,
) -> dict[str, Any]:
    is_last = window.index == num_windows - 1
    in_window = frames_in_window(frame_times, window, is_last=is_last)
    if not in_window:
        raise DecodeError(f"window {window.index} [{window.start:.2f}, {window.end:.2f}] s holds no frames")
    local = settings.sampler.sample(frame_times[in_window].tolist(), probe.fps)
    indices = [in_window[i] for i in local]
    wanted = frame_times[indices]
    skipped_before = getattr(reader, "skipped", 0)
    frames, times = reader.read(indices, wanted, deadline)
    problems = []
    etype = "PartialDecode"
    if len(frames) < len(indices):
        problems.append(f"decoded {len(frames)} of {len(indices)} sampled frames")
    skipped = getattr(reader, "skipped", 0) - skipped_before
    if skipped:
        problems.append(f"{skipped} corrupt packet(s) skipped")
    if is_last and probe.truncated:
        problems.append(probe.truncated)
        etype = "Truncated"
    message = "; ".join(problems) or None
    frames = _rotate(frames, probe.rotation)
    return {
        **_video_fields(ref, probe, num_windows),
        "window_index": window.index,
        "t_start": float(window.start),
        "t_end": float(window.end),
        "frames": frames,
        "frame_times": np.asarray(times, dtype=np.float64),
        "decoder": decoder,
        "decode_status": "partial" if message else "ok",
        "error_stage": "decode" if message else None,
        "error_type": etype if message else None,
        "error_message": message,
    }


def decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """Ray Data UDF: a batch of VideoRef rows in, window rows out (one output batch per window)."""
    from pipeline.progress import record_window_decoded  # Ray metrics (issue 6)

    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        ref = {k: batch[k][i] for k in keys}
        t0 = time.perf_counter()  # metrics: time to produce each window row
        for row in _decode_guarded(ref, settings):
            record_window_decoded(time.perf_counter() - t0, row.get("decode_status", "ok"))  # metrics
            yield {k: [v] if not isinstance(v, np.ndarray) else v[None, ...] for k, v in row.items()}
            t0 = time.perf_counter()  # metrics


def _decode_guarded(ref: dict[str, Any], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """`decode_video`, unless this video already killed its decode process too often.

    A native crash in FFmpeg (a poison file) kills the whole task, which Ray retries (graph.py bounds
    it). The ledger, owned by the driver, counts decodes of each video that started and never finished;
    past `crash_retries` the video becomes one `DecoderCrashed` error row instead of another crash, and
    the other videos of the block are decoded normally.
    """
    key = f"decode:{ref['video_id']}"
    crashes = ledger.begin(settings.ledger, key) - 1
    if crashes > settings.crash_retries:
        yield _error_row(ref, None, "decode", DecoderCrashed(
            f"the decode process died {crashes} times on this video (a native crash or an OOM kill); "
            f"not retried past decode_crash_retries={settings.crash_retries}"
        ), settings.frame_size, 0)
        return  # the ledger keeps the count: a later retry of this block skips the video again
    needle = testhooks.get("DECODE_CRASH_ON", settings.test_hooks)
    if needle and needle in str(ref["uri"]):  # TEST-ONLY: die the way a native decoder crash does
        os._exit(1)
    yield from decode_video(ref, settings)
    ledger.done(settings.ledger, key)
