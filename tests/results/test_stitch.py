"""Unit tests of pipeline.results.stitch: joining per-window track IDs into video-wide IDs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.results.stitch import StitchResult, WindowTrackPoint, stitch_tracks

# Windows of 10 s every 8 s, sampled at 2 fps: windows 0 and 1 share the frames 8.0 .. 10.0 s.
W0 = [0.5 * i for i in range(21)]  # 0.0 .. 10.0
W1 = [8.0 + 0.5 * i for i in range(21)]  # 8.0 .. 18.0
W2 = [16.0 + 0.5 * i for i in range(21)]  # 16.0 .. 26.0

Path = Callable[[float], tuple[float, float]]


def track(window: int, local_id: int, times: Iterable[float], path: Path) -> list[WindowTrackPoint]:
    return [WindowTrackPoint(window, local_id, t, *path(t)) for t in times]


def moving(x0: float, vx: float, y: float = 0.5) -> Path:
    return lambda t: (x0 + vx * t, y)


def still(x: float, y: float = 0.5) -> Path:
    return lambda t: (x, y)


def between(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start <= t <= end]


def test_one_object_crossing_the_boundary_keeps_one_id() -> None:
    path = moving(0.1, 0.02)
    noisy = moving(0.105, 0.02, y=0.505)  # the second window's estimate is a little off
    result = stitch_tracks(track(0, 1, W0, path) + track(1, 4, W1, noisy) + track(2, 2, W2, path))
    assert result == StitchResult({(0, 1): 0, (1, 4): 0, (2, 2): 0}, 1)


def test_object_entering_after_the_overlap_gets_a_new_id() -> None:
    points = (
        track(0, 0, W0, moving(0.1, 0.02))
        + track(1, 0, W1, moving(0.1, 0.02))
        + track(1, 1, between(W1, 12.0, 18.0), moving(0.3, 0.0))  # same place as nothing before: new
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 0): 0, (1, 0): 0, (1, 1): 1}
    assert result.num_objects == 2


def test_object_entering_in_the_overlap_unseen_by_the_first_window_gets_a_new_id() -> None:
    points = track(0, 0, W0, still(0.2)) + track(1, 0, W1, still(0.2)) + track(1, 1, W1, still(0.8))
    assert stitch_tracks(points).global_ids == {(0, 0): 0, (1, 0): 0, (1, 1): 1}


def test_object_leaving_before_the_overlap() -> None:
    points = (
        track(0, 0, W0, moving(0.1, 0.02))
        + track(0, 1, between(W0, 1.0, 5.0), still(0.7, 0.2))  # leaves at 5 s, never in window 1
        + track(1, 0, W1, moving(0.1, 0.02))
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 0): 0, (0, 1): 1, (1, 0): 0}
    assert result.num_objects == 2


def test_two_objects_swapping_local_ids() -> None:
    points = (
        track(0, 0, W0, moving(0.2, 0.01))
        + track(0, 1, W0, moving(0.8, -0.01))
        + track(1, 0, W1, moving(0.8, -0.01))
        + track(1, 1, W1, moving(0.2, 0.01))
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0}
    assert result.num_objects == 2


def test_optimal_assignment_beats_greedy() -> None:
    # Window 0 tracks X at x=0.50 and Y at x=0.55; window 1 sees A at 0.52 and B at 0.47 (both
    # shifted by -0.03: a consistent bias of the second window's estimate).
    # Costs: A-X 0.02, A-Y 0.03, B-X 0.03, B-Y 0.08. Greedy takes the cheapest pair first (A-X) and is
    # left with B-Y (total 0.10); the optimal assignment is A-Y + B-X (total 0.06).
    points = (
        track(0, 0, W0, still(0.50))  # X
        + track(0, 1, W0, still(0.55))  # Y
        + track(1, 0, W1, still(0.52))  # A
        + track(1, 1, W1, still(0.47))  # B
    )
    result = stitch_tracks(points)
    assert result.global_ids[(1, 0)] == result.global_ids[(0, 1)]  # A is Y
    assert result.global_ids[(1, 1)] == result.global_ids[(0, 0)]  # B is X
    assert result.num_objects == 2

    costs = {("A", "X"): 0.02, ("A", "Y"): 0.03, ("B", "X"): 0.03, ("B", "Y"): 0.08}
    taken: dict[str, str] = {}
    for (a, x), _ in sorted(costs.items(), key=lambda item: item[1]):
        if a not in taken and x not in taken.values():
            taken[a] = x
    assert taken == {"A": "X", "B": "Y"}  # greedy would have got it wrong


def test_two_objects_close_together() -> None:
    # 0.03 apart, moving in parallel; window 1 numbers them the other way round and is slightly off.
    rng = np.random.default_rng(0)

    def jitter(path: Path) -> Path:
        return lambda t: tuple(v + float(rng.normal(0, 0.003)) for v in path(t))  # type: ignore[return-value]

    points = (
        track(0, 0, W0, moving(0.40, 0.01))
        + track(0, 1, W0, moving(0.43, 0.01))
        + track(1, 0, W1, jitter(moving(0.43, 0.01)))
        + track(1, 1, W1, jitter(moving(0.40, 0.01)))
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0}


def test_objects_of_one_window_are_never_merged() -> None:
    points = track(0, 0, W0, still(0.5)) + track(0, 1, W0, still(0.5)) + track(1, 3, W1, still(0.5))
    result = stitch_tracks(points)
    assert result.num_objects == 2
    assert result.global_ids[(0, 0)] != result.global_ids[(0, 1)]
    assert result.global_ids[(1, 3)] in (result.global_ids[(0, 0)], result.global_ids[(0, 1)])


def test_non_overlapping_windows_are_not_matched() -> None:
    first = [0.5 * i for i in range(20)]  # 0.0 .. 9.5
    second = [10.0 + 0.5 * i for i in range(20)]  # 10.0 .. 19.5: 0.5 s from the last frame, > tolerance
    path = moving(0.1, 0.001)
    result = stitch_tracks(track(0, 0, first, path) + track(1, 0, second, path))
    assert result.global_ids == {(0, 0): 0, (1, 0): 1}
    assert result.num_objects == 2


@pytest.mark.parametrize(("max_distance", "joined"), [(0.1, False), (0.2, True)])
def test_distance_threshold(max_distance: float, joined: bool) -> None:
    points = track(0, 0, W0, still(0.30)) + track(1, 0, W1, still(0.45))  # 0.15 apart in the overlap
    result = stitch_tracks(points, max_distance=max_distance)
    assert (result.global_ids[(0, 0)] == result.global_ids[(1, 0)]) is joined
    assert result.num_objects == (1 if joined else 2)


def test_distance_exactly_at_the_threshold_is_joined() -> None:
    # 0.25 and 0.375 are exact in binary, so the cost is exactly 0.125.
    points = track(0, 0, W0, still(0.25)) + track(1, 0, W1, still(0.375))
    assert stitch_tracks(points, max_distance=0.125).num_objects == 1
    assert stitch_tracks(points, max_distance=0.124).num_objects == 2


def test_cost_is_the_mean_over_shared_times_only() -> None:
    # Far apart outside the overlap, identical inside it: only the shared frames count.
    points = track(0, 0, W0, lambda t: (0.5 if t >= 8 else 0.0, 0.5)) + track(
        1, 0, W1, lambda t: (0.5 if t <= 10 else 1.0, 0.5)
    )
    assert stitch_tracks(points).num_objects == 1


def test_frames_sampled_at_different_phases_match_within_tolerance() -> None:
    shifted = [t + 0.25 for t in W1]  # 8.25, 8.75, ...: never the same instant as window 0's frames
    points = track(0, 0, W0, still(0.5)) + track(1, 0, shifted, still(0.5))
    assert stitch_tracks(points).num_objects == 1
    assert stitch_tracks(points, time_tolerance=0.1).num_objects == 2


def test_matches_an_earlier_window_still_active_in_the_overlap() -> None:
    # Windows every 4 s: window 2 (8..18) still overlaps window 0 (0..10). Window 1 missed the object.
    w0 = [0.5 * i for i in range(21)]
    w1 = [4.0 + 0.5 * i for i in range(21)]
    w2 = [8.0 + 0.5 * i for i in range(21)]
    points = (
        track(0, 0, w0, still(0.3))
        + track(1, 0, w1, still(0.9))  # another object
        + track(2, 5, w2, still(0.3))
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 0): 0, (1, 0): 1, (2, 5): 0}


def test_chain_through_three_windows_with_changing_local_ids() -> None:
    path = moving(0.05, 0.03, y=0.4)
    other = moving(0.9, -0.02, y=0.7)
    points = (
        track(0, 0, W0, path)
        + track(0, 1, W0, other)
        + track(1, 1, W1, path)
        + track(1, 0, W1, other)
        + track(2, 7, W2, path)
        + track(2, 3, W2, other)
    )
    result = stitch_tracks(points)
    assert result.num_objects == 2
    assert {result.global_ids[k] for k in [(0, 0), (1, 1), (2, 7)]} == {0}
    assert {result.global_ids[k] for k in [(0, 1), (1, 0), (2, 3)]} == {1}


def test_ids_numbered_by_first_appearance() -> None:
    points = (
        track(0, 0, between(W0, 3.0, 10.0), still(0.2))  # first seen at 3 s
        + track(0, 1, between(W0, 1.0, 10.0), still(0.5))  # first seen at 1 s
        + track(1, 2, between(W1, 8.0, 9.0), still(0.9))  # new object, first seen at 8 s
        + track(0, 9, between(W0, 1.0, 2.0), still(0.7))  # also at 1 s, higher local id
    )
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 1): 0, (0, 9): 1, (0, 0): 2, (1, 2): 3}


def test_ties_in_time_are_broken_by_window() -> None:
    # An object that both windows see first at 8 s, but window 0 never matched (too far apart).
    points = track(0, 4, between(W0, 8.0, 10.0), still(0.1)) + track(1, 0, W1, still(0.9))
    assert stitch_tracks(points).global_ids == {(0, 4): 0, (1, 0): 1}


def test_empty_input() -> None:
    assert stitch_tracks([]) == StitchResult({}, 0)


def test_single_window_keeps_local_objects_apart() -> None:
    points = [WindowTrackPoint(3, oid, 1.0, 0.1 * oid, 0.5) for oid in (5, 2, 9)]
    result = stitch_tracks(points)
    assert result.num_objects == 3
    assert sorted(result.global_ids.values()) == [0, 1, 2]
    assert result.global_ids == {(3, 2): 0, (3, 5): 1, (3, 9): 2}  # same time, same window: by local id


def test_non_finite_points_do_not_crash() -> None:
    points = [
        WindowTrackPoint(0, 0, math.nan, 0.5, 0.5),
        WindowTrackPoint(0, 1, 9.0, math.nan, 0.5),
        WindowTrackPoint(0, 1, 9.5, 0.5, 0.5),
        WindowTrackPoint(1, 0, 9.5, 0.5, 0.5),
    ]
    result = stitch_tracks(points)
    assert result.global_ids == {(0, 1): 0, (1, 0): 0, (0, 0): 1}  # the all-NaN track appears "last"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_distance": -0.1},
        {"max_distance": math.inf},
        {"time_tolerance": -1.0},
        {"time_tolerance": math.nan},
    ],
)
def test_bad_configuration_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        stitch_tracks([], **kwargs)


# --- properties ----------------------------------------------------------------------------------


@st.composite
def windowed_scene(draw: st.DrawFn) -> list[WindowTrackPoint]:
    """Random straight-line objects seen through windows of 10 s every 8 s, with shuffled local IDs."""
    num_objects = draw(st.integers(min_value=1, max_value=5))
    num_windows = draw(st.integers(min_value=1, max_value=4))
    starts = [draw(st.floats(0.0, 0.9)) for _ in range(num_objects)]
    speeds = [draw(st.floats(-0.02, 0.02)) for _ in range(num_objects)]
    points: list[WindowTrackPoint] = []
    for window in range(num_windows):
        local_ids = draw(st.permutations(range(num_objects)))
        for obj, local_id in enumerate(local_ids):
            times = [8.0 * window + 0.5 * i for i in range(21)]
            points += track(window, local_id, times, moving(starts[obj], speeds[obj]))
    return points


@settings(max_examples=50, deadline=None)
@given(windowed_scene(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_point_order(points: list[WindowTrackPoint], rnd: object) -> None:
    shuffled = list(points)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    result = stitch_tracks(points)
    assert stitch_tracks(shuffled) == result
    keys = {(p.window, p.local_id) for p in points}
    assert set(result.global_ids) == keys
    assert sorted(set(result.global_ids.values())) == list(range(result.num_objects))
    for window in {p.window for p in points}:  # one window's objects keep distinct ids
        ids = [gid for (w, _), gid in result.global_ids.items() if w == window]
        assert len(ids) == len(set(ids))
