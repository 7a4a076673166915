"""Unit tests of pipeline.results.grounding: 0..1000 coordinates to pixels, window times to video times."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.results.grounding import (
    FrameMatch,
    absolute_time,
    display_size,
    match_frame_time,
    normalized,
    to_pixels,
)
from pipeline.results.parse import parse_answer
from pipeline.video.readers import rotate_frames


def test_format_md_720x720_example() -> None:
    parsed = parse_answer('<points coords="8.5 1 255 301 2 610 288">penguins</points>')
    got = [(p.t, *to_pixels(p.x, p.y, 720, 720)) for p in parsed.points]
    # FORMAT.md: (8.5 s, 183.6 px, 216.7 px) and (8.5 s, 439.2 px, 207.4 px), rounded to 0.1 px.
    assert [(t, round(x, 1), round(y, 1)) for t, x, y in got] == [(8.5, 183.6, 216.7), (8.5, 439.2, 207.4)]
    assert got[0][1] == 183.6 and got[1][1] == 439.2  # whole inputs give the exact decimal result


@pytest.mark.parametrize(
    ("coded", "rotation", "display"),
    [
        ((1920, 1080), 0, (1920, 1080)),
        ((1920, 1080), 90, (1080, 1920)),
        ((1920, 1080), 180, (1920, 1080)),
        ((1920, 1080), 270, (1080, 1920)),
        ((1920, 1080), -90, (1080, 1920)),
        ((1920, 1080), -270, (1080, 1920)),
        ((1920, 1080), 360, (1920, 1080)),
        ((1920, 1080), 450, (1080, 1920)),
    ],
)
def test_display_size(coded: tuple[int, int], rotation: int, display: tuple[int, int]) -> None:
    assert display_size(*coded, rotation) == display


@pytest.mark.parametrize("rotation", [45, 1, -30])
def test_display_size_rejects_odd_rotations(rotation: int) -> None:
    with pytest.raises(ValueError, match="multiple of 90"):
        display_size(1920, 1080, rotation)


def test_display_size_rejects_negative_sizes() -> None:
    with pytest.raises(ValueError, match="negative"):
        display_size(-1, 1080, 0)


def test_window_at_30s_landscape_round_trip() -> None:
    # The model saw the window starting at 30 s and wrote clip-relative times.
    parsed = parse_answer('<tracks coords="0.0 1 500 250;2.5 1 250 500;8.5 1 1000 0">car</tracks>')
    width, height = display_size(1920, 1080, 0)
    got = [(absolute_time(30.0, p.t), *to_pixels(p.x, p.y, width, height)) for p in parsed.points]
    assert got == [(30.0, 960.0, 270.0), (32.5, 480.0, 540.0), (38.5, 1920.0, 0.0)]


def test_window_at_30s_portrait_round_trip() -> None:
    # Coded 1920x1080 with rotation 90: the decoder shows the model upright 1080x1920 frames,
    # so the model's 0..1000 scale spans 1080 px across and 1920 px down.
    parsed = parse_answer('<tracks coords="0.0 1 500 250;2.5 1 250 500;8.5 1 1000 0">person</tracks>')
    width, height = display_size(1920, 1080, 90)
    assert (width, height) == (1080, 1920)
    got = [(absolute_time(30.0, p.t), *to_pixels(p.x, p.y, width, height)) for p in parsed.points]
    assert got == [(30.0, 540.0, 480.0), (32.5, 270.0, 960.0), (38.5, 1080.0, 0.0)]


def test_to_pixels_corners() -> None:
    assert to_pixels(0, 0, 640, 480) == (0.0, 0.0)
    assert to_pixels(1000, 1000, 640, 480) == (640.0, 480.0)
    assert to_pixels(500, 500, 641, 481) == (320.5, 240.5)


@given(
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=1, max_value=8192),
    st.integers(min_value=1, max_value=8192),
)
def test_to_pixels_stays_in_frame_and_is_correctly_rounded(x: int, y: int, w: int, h: int) -> None:
    px, py = to_pixels(x, y, w, h)
    assert 0 <= px <= w and 0 <= py <= h
    # The exact rational position, rounded once to the nearest float: what "correctly rounded" means.
    assert (px, py) == (float(Fraction(x * w, 1000)), float(Fraction(y * h, 1000)))


@given(st.integers(min_value=1, max_value=48), st.integers(min_value=1, max_value=48), st.integers(-8, 8))
def test_display_size_is_the_shape_of_the_frames_the_decoder_turns_upright(w: int, h: int, quarter_turns: int) -> None:
    # The model sees frames after pipeline.video.readers.rotate_frames; the display size must be their size.
    coded = np.zeros((1, h, w, 3), dtype=np.uint8)
    upright = rotate_frames(coded, 90 * quarter_turns)
    assert display_size(w, h, 90 * quarter_turns) == (upright.shape[2], upright.shape[1])


def test_normalized() -> None:
    assert normalized(250, 800) == (0.25, 0.8)
    assert normalized(0, 1000) == (0.0, 1.0)


def test_absolute_time() -> None:
    assert absolute_time(30.0, 8.5) == 38.5
    assert absolute_time(0.0, 0.0) == 0.0


# --- match_frame_time ----------------------------------------------------------------------------

FRAMES = [30.0 + 0.5 * i for i in range(20)]  # window at 30 s sampled at 2 fps


def test_match_exact_frame() -> None:
    assert match_frame_time(38.5, FRAMES, tolerance=0.25) == FrameMatch(38.5, 0.0, True)


def test_match_nearest_frame_within_tolerance() -> None:
    match = match_frame_time(38.6, FRAMES, tolerance=0.25)
    assert match.frame_time == 38.5
    assert match.distance == pytest.approx(0.1)
    assert match.matched


def test_far_from_every_frame_is_flagged() -> None:
    match = match_frame_time(45.0, FRAMES, tolerance=0.25)
    assert match.frame_time == FRAMES[-1]
    assert match.distance == pytest.approx(45.0 - 39.5)
    assert not match.matched


def test_tie_takes_the_earlier_frame() -> None:
    assert match_frame_time(30.25, FRAMES, tolerance=0.25) == FrameMatch(30.0, 0.25, True)


def test_unsorted_frames() -> None:
    assert match_frame_time(2.1, [5.0, 2.0, 0.0, 3.0], tolerance=0.2).frame_time == 2.0


def test_no_frames() -> None:
    assert match_frame_time(1.0, [], tolerance=1.0) == FrameMatch(None, math.inf, False)


def test_non_finite_inputs_do_not_raise() -> None:
    assert match_frame_time(math.nan, FRAMES, tolerance=1.0) == FrameMatch(None, math.inf, False)
    assert match_frame_time(1.0, [math.nan, 1.5], tolerance=1.0) == FrameMatch(1.5, 0.5, True)


def test_negative_tolerance_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        match_frame_time(1.0, FRAMES, tolerance=-0.1)
