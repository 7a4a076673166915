"""The retail analytics from synthetic tracks (pure: no Ray, no model): line crossings, zone visits,
occupancy, the hourly rollup and its exact merge, and the camera geometry's checks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.retail_analytics import (
    AnalyticsSettings,
    ClipKey,
    Crossing,
    Presence,
    TrackPoint,
    analyse_clip,
    apply_hysteresis,
    clip_hourly,
    dwell_stats,
    hourly_rollup,
    line_crossings,
    merge_hourly,
    minute_occupancy,
    occupancy_rows,
    owned_points,
    raw_crossings,
    track_paths,
)
from jobs.retail_geometry import CameraGeometry, LineSpec, ZoneSpec, load_geometry, parse_geometry
from pipeline.config import ConfigError

W, H = 640, 480  # display size of the synthetic camera
DOOR = LineSpec(name="door", start=(0.0, 0.5), end=(1.0, 0.5))  # left of start->end is the top: in = up
ZONE = ZoneSpec(name="queue", polygon=[(0.2, 0.2), (0.4, 0.2), (0.4, 0.4), (0.2, 0.4)])
CAMERA = CameraGeometry(store="17", camera="3", lines=[DOOR], zones=[ZONE])
START = datetime(2026, 11, 1, 13, 45, tzinfo=UTC)


def pts(track: int, path: list[tuple[float, float, float]], window: int = 0) -> list[TrackPoint]:
    """Track points from (t, x_norm, y_norm)."""
    return [TrackPoint(track, window, t, x * W, y * H, x, y) for t, x, y in path]


def one_path(path: list[tuple[float, float, float]], track: int = 0) -> Any:
    (p,) = track_paths(pts(track, path))
    return p


def clip(duration: float = 60.0, start: datetime = START, video: str = "v1") -> ClipKey:
    return ClipKey(video, "17", "3", start, duration, "person")


def crossings(path: list[tuple[float, float, float]], line: LineSpec = DOOR, hysteresis: float = 1.0) -> list[Crossing]:
    return line_crossings(one_path(path), line, "normalized", hysteresis)


# -- lines ------------------------------------------------------------------------------------------


def test_a_walk_through_the_door_is_one_crossing_at_the_interpolated_time_and_place() -> None:
    (c,) = crossings([(0.0, 0.5, 0.9), (1.0, 0.5, 0.7), (2.0, 0.5, 0.4), (3.0, 0.5, 0.1)])
    assert (c.direction, c.line, c.track_id) == ("in", "door", 0)
    assert c.t == pytest.approx(1.0 + 0.2 / 0.3)  # y 0.7 -> 0.4 meets 0.5 two thirds of the way
    assert (c.x_px, c.y_px) == pytest.approx((0.5 * W, 0.5 * H))
    assert c.segment_dt_s == pytest.approx(1.0)
    (back,) = crossings([(0.0, 0.5, 0.1), (1.0, 0.5, 0.9)])
    assert back.direction == "out" and back.t == pytest.approx(0.5)


def test_touching_the_line_without_crossing_counts_nothing() -> None:
    # Down to the line and back: the point on the line has no side.
    assert crossings([(0.0, 0.3, 0.8), (1.0, 0.3, 0.6), (2.0, 0.3, 0.5), (3.0, 0.3, 0.7)]) == []
    # Along the line, then back to where it came from.
    assert crossings([(0.0, 0.1, 0.6), (1.0, 0.2, 0.5), (2.0, 0.4, 0.5), (3.0, 0.6, 0.5), (4.0, 0.7, 0.6)]) == []
    # Touching, then going on through: one crossing, at the touch.
    (c,) = crossings([(0.0, 0.3, 0.7), (1.0, 0.3, 0.5), (2.0, 0.3, 0.3)])
    assert c.direction == "in" and c.t == pytest.approx(1.0)


def test_jitter_on_the_line_counts_once_and_real_back_and_forth_counts_both() -> None:
    # Standing on the door for 3 s with the point flickering either side every 0.25 s, then going in.
    jitter = [(0.25 * i, 0.5, 0.52 if i % 2 == 0 else 0.48) for i in range(12)]
    path = [(-1.0, 0.5, 0.8), *jitter, (3.5, 0.5, 0.2)]
    raw = raw_crossings(one_path(path), DOOR, "normalized")
    assert len(raw) > 5  # the flicker is there ...
    (c,) = crossings(path)  # ... and counted once
    assert c.direction == "in"
    # In, stay 5 s, out: both count, in order.
    both = crossings([(0.0, 0.5, 0.8), (1.0, 0.5, 0.2), (6.0, 0.5, 0.2), (7.0, 0.5, 0.8)])
    assert [(c.direction, round(c.t, 3)) for c in both] == [("in", 0.5), ("out", 6.5)]
    # The same in/out 0.4 s apart is jitter at a 1 s hysteresis, two crossings at 0.
    quick = [(0.0, 0.5, 0.8), (0.2, 0.5, 0.2), (0.6, 0.5, 0.8)]
    assert crossings(quick) == []
    assert [c.direction for c in crossings(quick, hysteresis=0.0)] == ["in", "out"]


def test_a_gap_across_the_line_is_one_crossing_interpolated_over_the_gap() -> None:
    (c,) = crossings([(0.0, 0.5, 0.8), (1.0, 0.5, 0.7), (9.0, 0.5, 0.3), (10.0, 0.5, 0.2)])
    assert c.direction == "in" and c.t == pytest.approx(5.0) and c.segment_dt_s == pytest.approx(8.0)


def test_passing_beside_the_line_or_round_its_end_is_no_crossing() -> None:
    short = LineSpec(name="door", start=(0.4, 0.5), end=(0.6, 0.5))
    assert crossings([(0.0, 0.8, 0.8), (1.0, 0.8, 0.2)], short) == []  # beside it
    round_end = [(0.0, 0.5, 0.8), (1.0, 0.7, 0.7), (2.0, 0.7, 0.3), (3.0, 0.5, 0.2)]
    assert crossings(round_end, short) == []
    # ... and coming back through it afterwards is one "out".
    (c,) = crossings([*round_end, (4.0, 0.5, 0.8)], short)
    assert c.direction == "out"


def test_in_side_right_swaps_directions_and_pixels_units_use_pixel_coordinates() -> None:
    right = LineSpec(name="door", start=(0.0, 0.5), end=(1.0, 0.5), in_side="right")
    assert [c.direction for c in crossings([(0.0, 0.5, 0.8), (1.0, 0.5, 0.2)], right)] == ["out"]
    # Drawn right to left, "left" is the bottom of the picture.
    reversed_line = LineSpec(name="door", start=(1.0, 0.5), end=(0.0, 0.5))
    assert [c.direction for c in crossings([(0.0, 0.5, 0.8), (1.0, 0.5, 0.2)], reversed_line)] == ["out"]
    pixels = LineSpec(name="door", start=(0, 240), end=(640, 240))
    (c,) = line_crossings(one_path([(0.0, 0.5, 0.8), (1.0, 0.5, 0.2)]), pixels, "pixels", 1.0)
    assert c.direction == "in" and c.t == pytest.approx(0.5)


# -- overlapping windows ----------------------------------------------------------------------------

WINDOWS = {0: (0.0, 10.0), 1: (8.0, 18.0)}  # 2 s overlap


def _walker_seen_twice(track_in_second_window: int) -> list[TrackPoint]:
    """One person crossing the door in the overlap of two windows, each window's view slightly off."""
    first = [(t, 0.5, 0.9 - 0.05 * t) for t in (6.0, 7.0, 8.0, 8.5, 9.0, 9.5, 10.0)]  # crosses at 8.0
    second = [(t, 0.5, 0.92 - 0.05 * t) for t in (8.0, 8.5, 9.0, 9.5, 10.0, 11.0, 12.0)]  # at 8.4
    return pts(0, first, window=0) + pts(track_in_second_window, second, window=1)


@pytest.mark.parametrize("second_id", [0, 1], ids=["stitched", "stitching-failed"])
def test_a_crossing_in_a_window_overlap_counts_once(second_id: int) -> None:
    points = _walker_seen_twice(second_id)
    traffic = analyse_clip(clip(), points, CAMERA, windows=WINDOWS, settings=AnalyticsSettings(crossing_hysteresis_s=0.0))
    assert [(c.direction, c.line) for c in traffic.crossings] == [("in", "door")]
    # The overlap [8, 10] is split at 9 (a tie goes to the earlier window): one window's points at a time.
    kept = owned_points(points, WINDOWS)
    assert sorted((p.window, p.t) for p in kept if 8 <= p.t <= 10) == [
        (0, 8.0), (0, 8.5), (0, 9.0), (1, 9.5), (1, 10.0)]
    # Without ownership the unstitched case would count the person twice.
    if second_id == 1:
        both = [c for p in track_paths(points) for c in line_crossings(p, DOOR, "normalized", 0.0)]
        assert len(both) == 2


def test_ownership_without_known_windows_uses_the_spans_the_points_show() -> None:
    points = _walker_seen_twice(1)
    traffic = analyse_clip(clip(), points, CAMERA, settings=AnalyticsSettings(crossing_hysteresis_s=0.0))
    assert len(traffic.crossings) == 1


# -- zones ------------------------------------------------------------------------------------------


def test_entering_a_zone_twice_is_two_visits_with_interpolated_dwell() -> None:
    path = [(0.0, 0.1, 0.3), (1.0, 0.3, 0.3), (5.0, 0.3, 0.3), (6.0, 0.5, 0.3),  # in 0.5 .. 5.5
            (10.0, 0.5, 0.3), (11.0, 0.3, 0.3), (13.0, 0.3, 0.3), (14.0, 0.3, 0.5)]  # in 10.5 .. 13.5
    traffic = analyse_clip(clip(), pts(0, path), CAMERA)
    assert [(v.zone, round(v.t_enter, 3), round(v.t_exit, 3), v.cut_at_start, v.cut_at_end) for v in traffic.visits] == [
        ("queue", 0.5, 5.5, False, False), ("queue", 10.5, 13.5, False, False)]
    assert [v.dwell_s for v in traffic.visits] == pytest.approx([5.0, 3.0])
    # Stepping out for 0.6 s (under the 1 s merge gap) is one visit.
    flicker = [(0.0, 0.1, 0.3), (1.0, 0.3, 0.3), (5.0, 0.39, 0.3), (5.2, 0.45, 0.3), (5.6, 0.39, 0.3),
               (9.0, 0.3, 0.3), (10.0, 0.1, 0.3)]
    (v,) = analyse_clip(clip(), pts(0, flicker), CAMERA).visits
    assert v.t_enter == pytest.approx(0.5) and v.t_exit == pytest.approx(9.5) and v.points == 4


def test_a_clip_that_starts_with_people_inside_marks_their_visits_cut() -> None:
    inside_from_start = [(0.0, 0.3, 0.3), (4.0, 0.3, 0.3), (5.0, 0.5, 0.3)]  # already queuing at 0
    inside_to_end = [(50.0, 0.1, 0.3), (51.0, 0.3, 0.3), (60.0, 0.3, 0.3)]  # still queuing at the end
    late_arrival = [(20.0, 0.3, 0.3), (25.0, 0.3, 0.3), (26.0, 0.5, 0.3)]  # first seen inside, mid-clip
    traffic = analyse_clip(clip(60.0), pts(0, inside_from_start) + pts(1, inside_to_end) + pts(2, late_arrival), CAMERA)
    visits = {v.track_id: v for v in traffic.visits}
    assert (visits[0].t_enter, visits[0].cut_at_start, visits[0].cut_at_end) == (0.0, True, False)
    assert visits[0].t_exit == pytest.approx(4.5)
    assert (visits[1].t_exit, visits[1].cut_at_start, visits[1].cut_at_end) == (60.0, False, True)
    assert (visits[2].t_enter, visits[2].cut) == (20.0, False)
    # A person first seen on the inside of the door crossed nothing.
    seen_inside = analyse_clip(clip(), pts(0, [(0.0, 0.5, 0.3), (3.0, 0.5, 0.2)]), CAMERA)
    assert seen_inside.crossings == []


# -- occupancy --------------------------------------------------------------------------------------


def test_occupancy_per_minute_across_a_minute_boundary() -> None:
    start = datetime(2026, 11, 1, 13, 59, 30, tzinfo=UTC)
    presence = [Presence(0, 0.0, 40.0), Presence(1, 20.0, 50.0), Presence(2, 45.0, 45.0)]
    rows = minute_occupancy(presence, start, 90.0)
    assert [(r.minute.strftime("%H:%M"), r.observed_s, r.person_seconds, r.tracks, r.max_present) for r in rows] == [
        ("13:59", 30.0, 40.0, 2, 2),  # 0..30 s of the clip: track 0 30 s, track 1 10 s, both from 20 s
        ("14:00", 60.0, 30.0, 3, 2),  # 30..90: track 0 10 s, track 1 20 s, track 2 an instant at 45 s
    ]


def test_occupancy_rows_cover_every_minute_even_empty_ones() -> None:
    traffic = analyse_clip(clip(120.0), [], CAMERA)
    rows = occupancy_rows(traffic)
    assert {(r["kind"], r["name"]) for r in rows} == {("view", "view"), ("zone", "queue")}
    assert len(rows) == 2 * 2  # 13:45:00 + 120 s: 13:45 and 13:46 (which holds the closing instant 13:47:00)
    assert all(r["person_seconds"] == 0 and r["tracks"] == 0 and r["max_present"] == 0 for r in rows)


# -- hourly rollup ----------------------------------------------------------------------------------


def _store_clip(start: datetime, video: str, walkers: list[list[tuple[float, float, float]]],
                duration: float = 600.0) -> Any:
    points = [p for i, w in enumerate(walkers) for p in pts(i, w)]
    return analyse_clip(ClipKey(video, "17", "3", start, duration, "person"), points, CAMERA)


def _walk_in_and_queue(t0: float, queue_s: float) -> list[tuple[float, float, float]]:
    """From below the door up through it, into the queue at t0 + 3.5, stay `queue_s` seconds, leave the
    queue at t0 + 4.5 + queue_s (to the left), then back out through the door."""
    return [(t0, 0.3, 0.9), (t0 + 2, 0.3, 0.5), (t0 + 3, 0.3, 0.45), (t0 + 4, 0.3, 0.35),
            (t0 + 4 + queue_s, 0.3, 0.35), (t0 + 5 + queue_s, 0.1, 0.35), (t0 + 20 + queue_s, 0.1, 0.45),
            (t0 + 22 + queue_s, 0.1, 0.9)]


def test_hourly_rollup_counts_by_hour_and_merges_exactly() -> None:
    a = _store_clip(datetime(2026, 11, 1, 13, 55, tzinfo=UTC), "a", [_walk_in_and_queue(10, 30), _walk_in_and_queue(400, 60)])
    rows = {(r["kind"], r["name"], r["hour"].hour): r for r in clip_hourly(a)}
    assert set(rows) == {(k, n, h) for k, n in (("line", "door"), ("zone", "queue"), ("view", "view")) for h in (13, 14)}
    door13, door14 = rows[("line", "door", 13)], rows[("line", "door", 14)]
    assert (door13["crossings_in"], door13["crossings_out"], door13["tracks"]) == (1, 1, 1)
    assert (door14["crossings_in"], door14["crossings_out"], door14["tracks"]) == (1, 1, 1)
    queue13 = rows[("zone", "queue", 13)]
    assert (queue13["visits"], queue13["visits_cut"]) == (1, 0)
    assert queue13["dwell_sum_s"] == pytest.approx(30.0 + 1.0)  # enters half a step early, leaves half a step late
    assert rows[("view", "view", 13)]["observed_s"] == 300.0 and rows[("view", "view", 14)]["observed_s"] == 300.0
    assert rows[("view", "view", 14)]["occupancy_max"] == 1 and rows[("line", "door", 13)]["occupancy_max"] is None
    # Two clips of hour 14 on two nights: the merged rows equal one rollup of both clips.
    b = _store_clip(datetime(2026, 11, 1, 14, 20, tzinfo=UTC), "b", [_walk_in_and_queue(5, 10), _walk_in_and_queue(8, 200)])
    night1, night2 = hourly_rollup([a]), hourly_rollup([b])
    assert merge_hourly(night1 + night2) == hourly_rollup([a, b])
    merged = {(r["kind"], r["name"], r["hour"].hour): r for r in merge_hourly(night1 + night2)}
    door = merged[("line", "door", 14)]
    assert (door["crossings_in"], door["crossings_out"], door["tracks"], door["clips"]) == (3, 3, 3, 2)
    queue = merged[("zone", "queue", 14)]
    assert queue["visits"] == 3 and queue["dwell_min_s"] == pytest.approx(11.0) and queue["dwell_max_s"] == pytest.approx(201.0)
    mean, std = dwell_stats(queue)
    dwells = [61.0, 11.0, 201.0]
    assert mean == pytest.approx(sum(dwells) / 3)
    assert std == pytest.approx((sum((d - sum(dwells) / 3) ** 2 for d in dwells) / 3) ** 0.5)
    assert merged[("view", "view", 14)]["occupancy_max"] == 2  # b's two walkers overlap


def test_a_camera_without_geometry_gets_view_occupancy_only() -> None:
    traffic = analyse_clip(clip(30.0), pts(0, [(1.0, 0.5, 0.9), (5.0, 0.5, 0.1)]), None)
    assert traffic.crossings == [] and traffic.visits == []
    assert {(r["kind"], r["name"]) for r in clip_hourly(traffic)} == {("view", "view")}
    (row,) = clip_hourly(traffic)
    assert (row["tracks"], row["person_seconds"], row["occupancy_max"]) == (1, pytest.approx(4.0), 1)


# -- properties -------------------------------------------------------------------------------------

ys = st.floats(min_value=0.01, max_value=0.99, allow_nan=False).filter(lambda y: y != 0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.05, max_value=3.0), st.floats(min_value=0.01, max_value=0.99), ys),
                min_size=2, max_size=30),
       st.floats(min_value=0.0, max_value=3.0))
def test_property_in_minus_out_is_the_net_change_of_side(steps: list[tuple[float, float, float]], hysteresis: float) -> None:
    t, path = 0.0, []
    for dt, x, y in steps:
        t += dt
        path.append((t, x, y))
    found = crossings(path, hysteresis=hysteresis)
    side = [1 if y < 0.5 else -1 for _, _, y in path]  # the door's in side is the top
    net = sum(1 if c.direction == "in" else -1 for c in found)
    assert net == (side[-1] - side[0]) // 2
    for a, b in itertools.pairwise(found):
        assert a.direction != b.direction and b.t - a.t >= hysteresis  # never two ins in a row, no flicker


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=10.0), st.sampled_from(["in", "out"])), max_size=20),
       st.floats(min_value=0.0, max_value=2.0))
def test_property_hysteresis_keeps_the_net_count(events: list[tuple[float, str]], hysteresis: float) -> None:
    ordered = [Crossing("door", 0, d, t, 0.0, 0.0, 0.0) for t, d in sorted(events)]  # type: ignore[arg-type]
    kept = apply_hysteresis(ordered, hysteresis)
    def net(cs: list[Crossing]) -> int:
        return sum(1 if c.direction == "in" else -1 for c in cs)
    assert net(kept) == net(ordered) and set(kept) <= set(ordered)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(min_value=0, max_value=500), st.floats(min_value=1, max_value=80)),
                min_size=1, max_size=6),
       st.lists(st.booleans(), min_size=6, max_size=6))
def test_property_hourly_rows_merge_to_the_rollup_of_all_clips(clips: list[tuple[int, float, float]], night: list[bool]) -> None:
    traffic = [_store_clip(datetime(2026, 11, 1, 13, 50, tzinfo=UTC) + timedelta(minutes=7 * i * k), f"c{i}",
                           [_walk_in_and_queue(t0, q)]) for i, (k, t0, q) in enumerate(clips)]
    first = [t for t, n in zip(traffic, night, strict=False) if n]
    second = [t for t, n in zip(traffic, night, strict=False) if not n]
    merged = merge_hourly(hourly_rollup(first) + hourly_rollup(second))
    whole = hourly_rollup(traffic)
    assert [{k: v for k, v in r.items() if not isinstance(v, float)} for r in merged] == \
        [{k: v for k, v in r.items() if not isinstance(v, float)} for r in whole]
    for r, s in zip(merged, whole, strict=True):
        for k, v in r.items():
            if isinstance(v, float):
                assert v == pytest.approx(s[k]), k


# -- geometry ---------------------------------------------------------------------------------------


def _camera(**changes: Any) -> dict[str, Any]:
    cam: dict[str, Any] = {"store": 17, "camera": 3, "lines": [{"name": "door", "start": [0, 0.5], "end": [1, 0.5]}],
                           "zones": [{"name": "queue", "polygon": [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4]]}]}
    cam.update(changes)
    return cam


def test_geometry_parses_and_finds_cameras_by_layout_keys() -> None:
    geometry = parse_geometry({"cameras": [_camera(), _camera(camera="4", units="pixels", lines=[], zones=[])]})
    cam = geometry.for_camera("17", "3")
    assert cam is not None and cam.units == "normalized" and cam.lines[0].in_side == "left"
    assert geometry.for_camera("17", "9") is None and geometry.for_camera("17", "4") is not None


@pytest.mark.parametrize(("camera", "message"), [
    (_camera(lines=[{"name": "door", "start": [0.5, 0.5], "end": [0.5, 0.5]}]), "same point"),
    (_camera(zones=[{"name": "q", "polygon": [[0, 0], [1, 1], [1, 0], [0, 0.6]]}]), "not a simple polygon"),
    (_camera(zones=[{"name": "q", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]}]), "no area"),
    (_camera(zones=[{"name": "q", "polygon": [[0, 0], [1, 1]]}]), "at least 3"),
    (_camera(zones=[{"name": "door", "polygon": [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4]]}]), "names used twice"),
    (_camera(lines=[{"name": "door", "start": [0, 0.5], "end": [1.5, 0.5]}]), "outside 0..1"),
    (_camera(units="pixels", lines=[{"name": "door", "start": [-3, 5], "end": [100, 5]}]), "negative pixel"),
    (_camera(lines=[{"name": "door", "start": [0, 0.5], "end": [1, 0.5], "in_side": "up"}]), "in_side"),
    (_camera(lines=[{"name": "door", "start": [0, 0.5], "end": [1, 0.5], "inside": "left"}]), "unknown setting"),
])
def test_bad_geometry_is_one_line_that_says_where(camera: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_geometry({"cameras": [_camera(camera="1"), camera]})
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("retail.geometry.cameras[1]"), text


def test_geometry_twice_for_one_camera_and_from_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cameras listed twice: store=17/camera=3"):
        parse_geometry({"cameras": [_camera(), _camera()]})
    as_yaml = tmp_path / "g.yaml"
    as_yaml.write_text("cameras:\n  - store: 17\n    camera: 3\n    lines: [{name: door, start: [0, 0.5], end: [1, 0.5]}]\n")
    as_json = tmp_path / "g.json"
    as_json.write_text(json.dumps({"cameras": [_camera()]}))
    assert load_geometry(str(as_yaml)).for_camera("17", "3") is not None
    assert load_geometry(as_json).for_camera("17", "3") is not None
    assert load_geometry(None).cameras == [] and load_geometry({"cameras": []}).cameras == []
    with pytest.raises(ConfigError, match="does not exist"):
        load_geometry(str(tmp_path / "missing.yaml"))
    as_json.write_text(json.dumps({"cameras": [_camera(lines=[{"name": "x", "start": [0, 0], "end": [0, 0]}])]}))
    with pytest.raises(ConfigError, match=r"g\.json\.cameras\[0\]"):
        load_geometry(as_json)


def test_the_analytics_import_neither_ray_nor_torch() -> None:
    code = ("import sys, jobs.retail_analytics, jobs.retail_geometry; "
            "print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
