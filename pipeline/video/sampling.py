"""Which frames the model sees: windowing and frame sampling (pure: numpy only).

Long videos are cut into overlapping windows, each a clip the model answers about on its own; inside a
window one `FrameSampler` policy picks the frames. Times are always absolute seconds in the video; a
window's frames are handed to the model with times relative to the window start (that is what the
model writes back in its points), and `pipeline.results.grounding` adds the window start again. Tasks
may sample at rates of their own (`pipeline.results.tasks.sampling_groups`): one sampler per rate, each
picking from the same window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SamplingMode = Literal["native", "uniform_last_frame"]


@dataclass(frozen=True)
class Window:
    """A clip of the video the model answers about, in absolute seconds."""

    index: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def plan_windows(duration: float, window_s: float, overlap_s: float) -> list[Window]:
    """Cut [0, duration] into windows of `window_s` seconds that overlap by `overlap_s`.

    A video no longer than one window is one window. Windows start every `window_s - overlap_s`
    seconds; the last one ends at the video's end and may be shorter (a partial window).
    """
    if window_s <= 0 or overlap_s < 0 or overlap_s >= window_s:
        raise ValueError("need window_s > overlap_s >= 0")
    if duration <= 0:
        return []
    if duration <= window_s:
        return [Window(0, 0.0, float(duration))]
    step = window_s - overlap_s
    windows: list[Window] = []
    index = 0
    while True:
        start = index * step
        end = min(start + window_s, duration)
        windows.append(Window(index, round(start, 6), round(end, 6)))
        if end >= duration:
            return windows
        index += 1


@dataclass(frozen=True)
class FrameSampler:
    """One frame-sampling policy, applied to the frames of one window.

    - ``native``: exactly what transformers' ``Molmo2VideoProcessor.sample_frames`` picks for a clip of
      these frames (at most ``num_frames``; at most ``max_fps`` per second when the video is faster),
      including its float32 arithmetic, so batch output equals the model card's processor path.
    - ``uniform_last_frame``: the original Molmo2 code (``molmo_utils``): evenly spaced *times* from the
      first to the last frame, at most ``max_fps`` apart when that fits in ``num_frames``.
    """

    mode: SamplingMode = "native"
    num_frames: int = 64
    max_fps: float | None = 2.0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        if self.max_fps is not None and self.max_fps <= 0:
            raise ValueError("max_fps must be > 0")

    def frames_for_rate(self, duration_s: float) -> int:
        """Frames a window of `duration_s` seconds needs for this policy to sample a faster video at its full
        `max_fps`; a `num_frames` below it caps the window's frames and so lowers the rate."""
        if self.max_fps is None:
            return self.num_frames
        if self.mode == "native":
            return max(1, int(duration_s * self.max_fps))
        return len(np.arange(0.0, duration_s, 1.0 / self.max_fps)) + 1

    def sample(self, frame_times: Sequence[float], fps: float) -> list[int]:
        """Pick frames of one window.

        Args:
            frame_times: presentation time (s) of every frame in the window, ascending.
            fps: the stream's average frame rate.

        Returns:
            Ascending, distinct indices into ``frame_times``.
        """
        total = len(frame_times)
        if total == 0:
            return []
        if self.mode == "native":
            return _native_indices(total, fps, self.num_frames, self.max_fps)
        return _uniform_last_frame_indices(frame_times, fps, self.num_frames, self.max_fps)


def _native_indices(total: int, fps: float, num_frames: int, max_fps: float | None) -> list[int]:
    # Mirrors Molmo2VideoProcessor.sample_frames: duration = frames / fps when not given.
    duration = total / fps if fps > 0 else float(total)
    target = num_frames
    if max_fps is not None and fps > max_fps:
        target = min(target, int(duration * max_fps))
    target = max(min(target, total), 1)
    # torch.arange(0, total, total / target).int(): its length is ceil(total / step) in double and
    # each value is float32(i * step); that can give target + 1 frames, and we keep that quirk.
    step = total / target
    count = math.ceil(total / step)
    indices = [int(np.float32(i * step)) for i in range(count)]
    return sorted(set(i for i in indices if i < total))


def _uniform_last_frame_indices(
    frame_times: Sequence[float], fps: float, num_frames: int, max_fps: float | None
) -> list[int]:
    starts = np.asarray(frame_times, dtype=np.float64)
    frame_len = 1.0 / fps if fps > 0 else 0.0
    ends = np.append(starts[1:], starts[-1] + frame_len)
    duration = float(ends[-1] - starts[0])
    if max_fps is not None and (num_frames - 1) / max_fps >= duration:
        times = np.arange(0.0, duration, 1.0 / max_fps)
        times = np.concatenate([times, [duration]])
    else:
        times = np.linspace(0.0, duration, num=num_frames, endpoint=True, dtype=np.float64)
    # Same mapping as molmo_utils: the frame whose end time first exceeds the target time.
    ix = np.searchsorted(ends - starts[0], times, side="right")
    ix = np.minimum(ix, len(starts) - 1)
    return sorted({int(i) for i in ix})


def frames_in_window(frame_times: Sequence[float] | np.ndarray, window: Window, *, is_last: bool) -> list[int]:
    """Indices of the frames whose presentation time falls in [start, end) ([start, end] for the last)."""
    times = np.asarray(frame_times, dtype=np.float64)
    lo = int(np.searchsorted(times, window.start - 1e-6, side="left"))
    hi = int(np.searchsorted(times, window.end + (1e-6 if is_last else -1e-6), side="right" if is_last else "left"))
    return list(range(lo, hi))
