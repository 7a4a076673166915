"""Frame sampling and windowing (pure), checked against the installed Molmo2 processor where it applies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.video.sampling import FrameSampler, Window, frames_in_window, plan_windows


def _times(n: int, fps: float, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(n)]


def test_native_caps_at_max_fps_for_short_video() -> None:
    # 3 s at 30 fps = 90 frames; 2 fps -> 6 frames, evenly spaced by 15 frames
    idx = FrameSampler("native", 64, 2.0).sample(_times(90, 30.0), 30.0)
    assert idx == [0, 15, 30, 45, 60, 75]


def test_native_caps_at_num_frames_for_long_video() -> None:
    # 120 s at 25 fps: 2 fps would be 240 frames, the budget is 64
    idx = FrameSampler("native", 64, 2.0).sample(_times(3000, 25.0), 25.0)
    assert len(idx) in (64, 65)  # the processor's float32 arange may add one (kept on purpose)
    assert idx[0] == 0 and idx == sorted(set(idx)) and idx[-1] < 3000


def test_native_slow_video_takes_every_frame_up_to_budget() -> None:
    # 1 fps video: under max_fps, so the frame budget alone decides
    assert FrameSampler("native", 64, 2.0).sample(_times(10, 1.0), 1.0) == list(range(10))


def test_native_single_frame() -> None:
    assert FrameSampler().sample([0.0], 30.0) == [0]


def test_empty_window_samples_nothing() -> None:
    assert FrameSampler().sample([], 30.0) == []


@pytest.mark.parametrize("total,fps", [(90, 30.0), (150, 30.0), (1441, 24.0), (17, 7.0), (26, 11.0), (3000, 25.0), (7, 30.0)])
def test_native_equals_transformers_processor(total: int, fps: float) -> None:
    from transformers.models.molmo2.video_processing_molmo2 import Molmo2VideoProcessor
    from transformers.video_utils import VideoMetadata

    proc = Molmo2VideoProcessor()
    meta = VideoMetadata(total_num_frames=total, fps=fps)
    expected = [i for i in proc.sample_frames(meta).tolist() if i < total]
    assert FrameSampler("native", 64, 2.0).sample(_times(total, fps), fps) == expected


def test_uniform_last_frame_includes_last_frame() -> None:
    times = _times(300, 30.0)  # 10 s
    idx = FrameSampler("uniform_last_frame", 8, 2.0).sample(times, 30.0)
    assert idx[0] == 0 and idx[-1] == 299 and len(idx) == 8


def test_uniform_last_frame_uses_max_fps_when_it_fits() -> None:
    times = _times(90, 30.0)  # 3 s: 0, .5, ..., 2.5 and the end -> 7 frames
    idx = FrameSampler("uniform_last_frame", 64, 2.0).sample(times, 30.0)
    assert idx == [0, 15, 30, 45, 60, 75, 89]


def test_uniform_last_frame_matches_molmo_utils_times() -> None:
    from molmo_utils.vision_process import sample_times

    times = _times(600, 30.0)
    idx = FrameSampler("uniform_last_frame", 16, 2.0).sample(times, 30.0)
    targets = sample_times(20.0, 16, "uniform_last_frame", None, 2.0)
    ends = np.array([*times[1:], 20.0])
    expected = np.minimum(np.searchsorted(ends, targets, side="right"), 599)
    assert idx == sorted(set(expected.tolist()))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    fps=st.floats(0.5, 120.0),
    budget=st.integers(1, 128),
    mode=st.sampled_from(["native", "uniform_last_frame"]),
)
def test_sampler_invariants(n: int, fps: float, budget: int, mode: str) -> None:
    idx = FrameSampler(mode, budget, 2.0).sample(_times(n, fps), fps)  # type: ignore[arg-type]
    assert idx and idx == sorted(set(idx))
    assert idx[0] >= 0 and idx[-1] < n
    assert len(idx) <= budget + 1
    duration = n / fps
    if mode == "native" and fps > 2.0:
        assert len(idx) <= max(1, int(duration * 2.0)) + 1


def test_single_window_for_short_video() -> None:
    assert plan_windows(9.0, 10.0, 2.0) == [Window(0, 0.0, 9.0)]


def test_windows_overlap_and_absolute_times() -> None:
    ws = plan_windows(26.0, 10.0, 2.0)
    assert [(w.start, w.end) for w in ws] == [(0.0, 10.0), (8.0, 18.0), (16.0, 26.0)]
    assert [w.index for w in ws] == [0, 1, 2]


def test_last_partial_window() -> None:
    ws = plan_windows(125.0, 60.0, 5.0)
    assert [(w.start, w.end) for w in ws] == [(0.0, 60.0), (55.0, 115.0), (110.0, 125.0)]
    assert ws[-1].duration == 15.0


def test_windows_reject_bad_overlap() -> None:
    with pytest.raises(ValueError):
        plan_windows(100.0, 10.0, 10.0)


def test_zero_duration_has_no_windows() -> None:
    assert plan_windows(0.0, 10.0, 1.0) == []


@settings(max_examples=200, deadline=None)
@given(duration=st.floats(0.1, 20000.0), length=st.floats(1.0, 600.0), frac=st.floats(0.0, 0.9))
def test_windows_cover_video(duration: float, length: float, frac: float) -> None:
    overlap = length * frac
    ws = plan_windows(duration, length, overlap)
    assert ws[0].start == 0.0
    assert math.isclose(ws[-1].end, duration, abs_tol=1e-5)
    for a, b in itertools.pairwise(ws):
        assert b.start <= a.end + 1e-6  # no gaps
        assert b.start > a.start
    assert all(w.duration <= length + 1e-6 for w in ws)


def test_frames_in_window_half_open_except_last() -> None:
    times = _times(100, 10.0)  # 0.0 .. 9.9
    first = frames_in_window(times, Window(0, 0.0, 5.0), is_last=False)
    last = frames_in_window(times, Window(1, 4.0, 9.9), is_last=True)
    assert first == list(range(0, 50))
    assert last == list(range(40, 100))
