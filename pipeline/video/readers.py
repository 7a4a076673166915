"""Frame readers (PyAV, decord2): the sampled frames of one window, resized to the model's frame size."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from pipeline.video.errors import Deadline, DecodeError
from pipeline.video.probe import VideoProbe


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _import_torch_before_decord() -> None:
    """decord2 dlopens every `nvidia/*/lib/*.so` it finds (torch's CUDA wheels, libnvblas among them)
    with RTLD_GLOBAL. A torch imported after that sends its CPU matrix products to NVBLAS, which aborts
    the process ("[NVBLAS] CPU Blas library need to be provided") or crashes it. Torch imported first
    keeps its own BLAS. Matters wherever decode and the model share a process (tests, reused workers)."""

    with contextlib.suppress(ImportError):
        import torch  # noqa: F401


class DecordReader:
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


class PyAVReader:
    """PyAV: seek to the window, decode forward, convert (and resize) only the wanted frames; skips
    corrupt packets.

    Frames nobody sampled are not even decoded when no other frame depends on them: a packet whose
    frame is not wanted is decoded with `skip_frame = NONREF`, so FFmpeg drops it if it is a
    non-reference frame (most B-frames of H.264/HEVC) and decodes it as usual if other frames predict
    from it. Every decoded frame is therefore bit-identical to a full decode (tests/video/test_readers.py);
    at 2 fps from 30 fps H.264 this is most of the decoding work of a window (docs/benchmarks.md, item 1).
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


def open_reader(path: str, decoder: str, frame_size: int, threads: int, probe: VideoProbe) -> tuple[Any, str]:
    # A truncated file's index lists frames whose data is gone; decord would stall on them.
    if decoder == "decord" and not probe.truncated:
        try:
            return DecordReader(path, frame_size, threads, probe), "decord"
        except Exception:  # decord lacks a codec or chokes on the container: PyAV decodes what FFmpeg can
            pass
    return PyAVReader(path, frame_size, threads, probe), "pyav"
