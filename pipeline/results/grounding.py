"""Turn what the model wrote (0..1000 coordinates, clip-relative seconds) into video pixels and times.

Molmo2 writes ``X Y`` on a 0..1000 scale of the frame it saw and ``TIME`` in seconds from the start of
the clip it saw. A long video is cut into windows, so a time is made absolute by adding the window's
start. The decoder rotates frames upright (rotation metadata) before the model sees them, so the
pixel scale is the *display* size, not the coded size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FrameMatch", "absolute_time", "display_size", "match_frame_time", "normalized", "to_pixels"]


COORD_SCALE = 1000.0


def to_pixels(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """Pixel position of a point written on the 0..1000 scale.

    Args:
        x, y: coordinates as written by the model (0..1000).
        width, height: DISPLAY size of the source video (see :func:`display_size`).

    Returns:
        ``(x / 1000 * width, y / 1000 * height)``, computed as ``x * width / 1000`` so that whole
        inputs give the correctly rounded result (255 of 720 px is exactly ``183.6``).
    """
    return x * width / COORD_SCALE, y * height / COORD_SCALE


def normalized(x: float, y: float) -> tuple[float, float]:
    """Position of a point written on the 0..1000 scale as fractions 0..1 of the frame width and height
    (the `x_norm`/`y_norm` columns; what track stitching measures distances in)."""
    return x / COORD_SCALE, y / COORD_SCALE


def display_size(coded_width: int, coded_height: int, rotation: int) -> tuple[int, int]:
    """Width and height of frames as displayed (and as the model sees them) after rotation.

    Args:
        coded_width, coded_height: size of the frames as stored in the stream.
        rotation: rotation metadata in degrees, a multiple of 90 (negative values allowed).

    Raises:
        ValueError: the rotation is not a multiple of 90 degrees or a size is negative.
    """
    if coded_width < 0 or coded_height < 0:
        raise ValueError(f"negative frame size {coded_width}x{coded_height}")
    if rotation % 90 != 0:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    if rotation % 180 == 90:  # 90, 270, -90, -270, 450, ...
        return coded_height, coded_width
    return coded_width, coded_height


def absolute_time(window_start: float, t: float) -> float:
    """Seconds from the start of the video of a time ``t`` written relative to a window's start."""
    return window_start + t


@dataclass(frozen=True)
class FrameMatch:
    """The sampled frame nearest to a time."""

    frame_time: float | None
    """Absolute time of the nearest sampled frame; None when there is none or the time is not finite."""
    distance: float
    """Seconds between the time and that frame (``inf`` when there is no frame)."""
    matched: bool
    """False (flag the point) when ``distance`` exceeds the tolerance or there is no frame."""


def match_frame_time(t_abs: float, frame_times: Sequence[float], *, tolerance: float) -> FrameMatch:
    """Find the sampled frame a model-written time refers to.

    The model should only name times of frames it was shown; a time far from every sampled frame
    means a misread timestamp, so it is flagged rather than silently snapped.

    Args:
        t_abs: absolute time in seconds.
        frame_times: absolute times of the frames the model saw, in any order.
        tolerance: largest distance in seconds still counted as a match (e.g. half the frame interval).

    Returns:
        The nearest frame (the earlier one on a tie); ``matched`` False when it is further than
        ``tolerance``, when there are no frames or when ``t_abs`` is not finite.

    Raises:
        ValueError: ``tolerance`` is negative or NaN.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    best: float | None = None
    best_distance = math.inf
    if math.isfinite(t_abs):
        for frame_time in frame_times:
            if not math.isfinite(frame_time):
                continue
            distance = abs(frame_time - t_abs)
            if distance < best_distance or (
                distance == best_distance and best is not None and frame_time < best
            ):
                best, best_distance = frame_time, distance
    return FrameMatch(
        frame_time=best, distance=best_distance, matched=best is not None and best_distance <= tolerance
    )
