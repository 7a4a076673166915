"""The toy world keeps the spec of issue 16 on many seeds, and its ground-truth answers read back, through
the pipeline's own parser, as exactly the truth (pure: numpy, plus PyAV for the two mp4 checks)."""

from __future__ import annotations

import colorsys
from itertools import combinations

import numpy as np
import pytest

from pipeline.devtools import toyworld as tw
from pipeline.results.grounding import display_size
from pipeline.results.parse import parse_answer
from pipeline.video.probe import probe_video

SPEC_SEEDS = range(7_000, 7_060)  # any seeds: the spec must hold for every world the generator makes


def _pairs_too_close(world: tw.World) -> list[tuple[int, int, float]]:
    """(id, id, time) where one disc covers the other's centre while either centre is in the frame."""
    xy, vis = world.positions(world.frame_times)
    bad = []
    for a, b in combinations(range(len(world.people)), 2):
        dist = np.hypot(*(xy[a] - xy[b]).T)
        cover = dist < max(world.people[a].radius, world.people[b].radius)
        hit = np.flatnonzero(cover & (vis[a] | vis[b]))
        if len(hit):
            bad.append((world.people[a].pid, world.people[b].pid, float(world.frame_times[hit[0]])))
    return bad


@pytest.mark.parametrize("seed", SPEC_SEEDS)
def test_world_is_within_the_spec(seed: int) -> None:
    world = tw.make_world(seed)
    portrait = world.rotation % 180 == 90
    short, long = sorted((world.width, world.height))
    assert 240 <= short <= 720 and 320 <= long <= 1280
    assert (world.height > world.width) == portrait
    coded_w, coded_h = world.coded_size
    assert coded_w >= coded_h  # stored landscape: a portrait clip is portrait only through its rotation
    assert 10 <= world.fps <= 30
    assert 4.0 - 1.0 / world.fps <= world.duration <= 180.0 + 1.0 / world.fps
    _h, s, v = colorsys.rgb_to_hsv(*world.floor.base)
    assert s <= 0.15 + 1e-9
    for person in world.people:
        assert 0.06 <= 2 * person.radius / world.width <= 0.12
        assert np.hypot(person.vx, person.vy) <= 0.25 * world.width + 1e-9
        _h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in person.color))
        assert s >= 0.64 and v >= 0.54  # saturated (rounded to 8 bits)
    _xy, vis = world.positions(world.frame_times)
    assert vis.sum(0).max(initial=0) <= tw.MAX_IN_VIEW
    assert _pairs_too_close(world) == []


def test_the_seeds_cover_the_spec() -> None:
    """The spec test above is not vacuous: its seeds include portrait clips, crowds, arrivals, long clips."""
    worlds = [tw.make_world(seed) for seed in SPEC_SEEDS]
    in_view = [int(w.positions(w.frame_times)[1].sum(0).max(initial=0)) for w in worlds]
    assert any(w.rotation in (90, 270) for w in worlds)
    assert max(in_view) == tw.MAX_IN_VIEW and min(in_view) <= 1
    assert max(len(w.people) for w in worlds) > tw.MAX_IN_VIEW  # people enter and leave
    assert max(w.duration for w in worlds) > 120 and min(w.duration for w in worlds) < 30


def test_cover_check_sees_a_covered_centre() -> None:
    world = tw.make_world(1, width=640, height=360, fps=10, duration=1.0, n_start=0, arrival_rate=0.0)
    world.people = [tw.Person(1, 100, 100, 0, 0, 30, (255, 0, 0)), tw.Person(2, 120, 100, 0, 0, 30, (0, 0, 255))]
    assert _pairs_too_close(world) == [(1, 2, 0.0)]


def test_ground_truth_is_every_centre_per_source_frame() -> None:
    world = tw.make_world(11, duration=6.0)
    truth = tw.ground_truth(world)
    assert len(truth["frame_times"]) == world.n_frames
    assert [p["id"] for p in truth["people"]] == [p.pid for p in world.people]
    for person, row in zip(world.people, truth["people"], strict=True):
        x, y = person.pos(world.frame_times)
        inside = (x >= 0) & (x < world.width) & (y >= 0) & (y < world.height)
        assert (row["visible"] == inside).all()
        np.testing.assert_allclose(row["centres"][inside], np.stack([x, y], -1)[inside])
        assert np.isnan(row["centres"][~inside]).all()


def _truth_points(ct: tw.ClipTruth, *, every_frame: bool) -> set[tuple[float, int, int, int]]:
    """(time, id, X, Y) the answer must hold: each person once at its first frame, or at every visible one."""
    out = set()
    for k in range(len(ct.pids)):
        frames = np.flatnonzero(ct.visible[k]) if every_frame else [ct.first[k]]
        for f in frames:
            out.add((float(ct.labels[f]), k + 1, int(ct.units[k, f, 0]), int(ct.units[k, f, 1])))
    return out


@pytest.mark.parametrize("seed", range(8_000, 8_040))
def test_truth_answers_parse_to_exactly_the_truth(seed: int) -> None:
    world = tw.make_world(seed, duration=float(np.random.default_rng(seed).uniform(4, 30)))
    window = min(world.n_frames, round(4.0 * world.fps))  # the toy checkpoint's window: 8 frames at 2 fps
    times = tw.native_sample_times(window, world.fps, 8, 2.0) / world.fps
    ct = tw.clip_truth(world, times)
    answers = tw.answers(world, times)
    n = len(ct.pids)
    for task, every_frame in (("count", False), ("point", False), ("track", True)):
        parsed = parse_answer(answers[task])
        assert parsed.status == ("ok" if n else "no_tags"), (task, answers[task])
        got = {(p.t, p.object_id, int(p.x), int(p.y)) for p in parsed.points}
        assert got == _truth_points(ct, every_frame=every_frame), task
        assert len(parsed.points) == len(got)  # nobody twice at one frame
    assert parse_answer(answers["count"]).number == n
    if n:
        assert parse_answer(answers["caption"]).number == n  # "The video shows 3 people ..."


def test_portrait_rotation_is_read_by_the_pipeline_probe(tmp_path) -> None:
    for seed, rotation in ((21, 90), (22, 270), (23, 180), (24, 0)):
        world = tw.make_world(seed, width=360, height=640, rotation=rotation, fps=10, duration=1.0) if rotation % 180 \
            else tw.make_world(seed, width=640, height=360, rotation=rotation, fps=10, duration=1.0)
        path = tmp_path / f"clip_{rotation}.mp4"
        tw.write_mp4(world, str(path))
        probe = probe_video(str(path))
        assert probe.rotation % 360 == rotation
        assert (probe.width, probe.height) == (world.width, world.height)
        assert display_size(probe.coded_width, probe.coded_height, probe.rotation) == (world.width, world.height)
        assert (probe.coded_width, probe.coded_height) == world.coded_size
        assert probe.fps == pytest.approx(world.fps)


def test_decoded_mp4_matches_the_in_memory_renderer(tmp_path) -> None:
    """Training renders frames in memory; the pipeline decodes mp4s: the two must look alike to the model."""
    for seed in (31, 32, 33):
        world = tw.make_world(3 * 10**9 + seed, duration=4.0)
        times = tw.native_sample_times(world.n_frames, world.fps, 8, 2.0) / world.fps
        path = tmp_path / f"clip_{seed}.mp4"
        tw.write_mp4(world, str(path))
        frames, _times, info = tw.decode_frames(str(path), times, 252)
        assert len(frames) == len(times) and info["rotation"] == world.rotation
        rendered = tw.render_model_frames(world, times, 252)
        assert np.abs(frames.astype(float) - rendered.astype(float)).mean() < 4.0
        # and the frames differ where the discs are: a blank floor would not pass
        if world.positions(times)[1].any():
            empty = tw.World(world.seed, world.width, world.height, world.fps, world.n_frames, world.rotation,
                             world.floor, [])
            assert np.abs(tw.render_model_frames(empty, times, 252).astype(float) - rendered).max() > 50
