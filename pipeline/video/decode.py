"""Decode stage (CPU): one video in, one row per window out, frames already at model resolution.

Why decode here and not in the model actor: decoding is CPU work that would idle a GPU, and resizing in
the decoder to the model's square frame (378 px for Molmo2) hands ~14x fewer bytes per 1080p frame
through Ray's object store than full frames would. Only the frames the sampler picks are converted to
pixels at all; the default PyAV reader does not even decode the unsampled frames that no other frame
predicts from (docs/benchmarks.md item 1: ~2.3-2.5x the frames per CPU-second of the model card's decord path).
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

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import faults, ledger
from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.io.secrets import redact
from pipeline.observe.metrics import record_window_decoded
from pipeline.video.errors import Deadline, DecodeError, DecoderCrashed, DecodeTimeout, SourceUnreadable
from pipeline.video.fetch import local_copy
from pipeline.video.probe import VideoProbe, probe_video
from pipeline.video.readers import PyAVReader, open_reader, rotate_frames
from pipeline.video.sampling import FrameSampler, Window, frames_in_window, plan_windows


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
    test_hooks: faults.Hooks = ()  # TEST-ONLY fault injection (pipeline.faults)
    # One sampler per task sampling group (`pipeline.results.tasks.sampling_groups`: e.g. tracking at 8 fps,
    # captions at 2): each window becomes one row per group, its `task_group`. Empty: `sampler` alone.
    group_samplers: tuple[FrameSampler, ...] = ()

    @property
    def samplers(self) -> tuple[FrameSampler, ...]:
        return self.group_samplers or (self.sampler,)


def _task_ids(value: Any) -> list[int]:
    """A ref's task indexes as a plain list (Ray hands a numpy array; None or empty means all tasks)."""
    return [] if value is None else [int(i) for i in value]


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
        "task_ids": _task_ids(ref.get("task_ids")),
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
        "task_group": 0,
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
            size_hint=int(ref.get("size_bytes") or 0),
        ) as path:
            stage = "probe"
            deadline.check("opening the video")
            probe = probe_video(path, deadline)
            stage = "decode"
            reader, decoder = open_reader(path, settings.decoder, settings.frame_size, settings.threads, probe)
            frame_times = np.asarray(reader.frame_times, dtype=np.float64)
            windows = plan_windows(probe.duration_s, settings.window_s, settings.overlap_s)
            if not windows:
                raise DecodeError("video has no duration")
            for window in windows:
                deadline.check(f"at window {window.index} of {len(windows)}")
                try:
                    rows = _decode_window(reader, decoder, window, len(windows), frame_times, probe, ref, settings, deadline)
                except (DecodeTimeout, DecodeError):
                    raise
                except Exception:
                    if decoder != "decord":
                        raise
                    # decord failed on this window (corrupt data, a codec quirk): PyAV takes over for the
                    # rest of the video, skipping what cannot be decoded and saying so.
                    reader, decoder = PyAVReader(path, settings.frame_size, settings.threads, probe), "pyav"
                    rows = _decode_window(reader, decoder, window, len(windows), frame_times, probe, ref, settings, deadline)
                emitted += 1
                # A window's rows (one per sampling group) are made before any is yielded: a window is
                # emitted whole or not at all, as the collector counts it.
                yield from rows
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
) -> list[dict[str, Any]]:
    """One row per sampling group of the window; the frames of every group are decoded in one pass."""
    is_last = window.index == num_windows - 1
    in_window = frames_in_window(frame_times, window, is_last=is_last)
    if not in_window:
        raise DecodeError(f"window {window.index} [{window.start:.2f}, {window.end:.2f}] s holds no frames")
    window_times = frame_times[in_window].tolist()
    picks = [sampler.sample(window_times, probe.fps) for sampler in settings.samplers]
    indices = [in_window[i] for i in sorted(set().union(*picks))]
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
    frames = rotate_frames(frames, probe.rotation)
    times = np.asarray(times, dtype=np.float64)
    rows = []
    for group, local in enumerate(picks):
        # The readers return the wanted times themselves for the frames they decoded: select by time.
        keep = np.isin(times, frame_times[[in_window[i] for i in local]]) if len(picks) > 1 else slice(None)
        rows.append({
            **_video_fields(ref, probe, num_windows),
            "window_index": window.index,
            "t_start": float(window.start),
            "t_end": float(window.end),
            "frames": frames[keep],
            "frame_times": times[keep],
            "decoder": decoder,
            "decode_status": "partial" if message else "ok",
            "error_stage": "decode" if message else None,
            "error_type": etype if message else None,
            "error_message": message,
            "task_group": group,
        })
    return rows


def decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """Ray Data UDF: a batch of VideoRef rows in, window rows out (one output batch per window)."""

    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        ref = {k: batch[k][i] for k in keys}
        t0 = time.perf_counter()  # metrics: time to produce each window row
        for row in _decode_guarded(ref, settings):
            record_window_decoded(time.perf_counter() - t0, row.get("decode_status", "ok"))  # metrics
            if row["window_index"] >= 0:
                faults.event("window-decoded", settings.test_hooks)  # TEST-ONLY (benchmarks time the first)
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
    needle = faults.get("DECODE_CRASH_ON", settings.test_hooks)
    if needle and needle in str(ref["uri"]):  # TEST-ONLY: die the way a native decoder crash does
        os._exit(1)
    yield from decode_video(ref, settings)
    ledger.done(settings.ledger, key)
