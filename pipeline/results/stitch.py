"""Join the tracks of overlapping windows into video-wide object IDs.

Why: Molmo2 sees a bounded number of frames, so a long video is cut into windows that overlap in
time, and each window's ``<tracks>`` answer numbers its objects from scratch. Local ID 1 in one
window says nothing about local ID 1 in the next. But because the windows overlap, an object that
crosses a window boundary is tracked in *both* windows at the shared frame times, at (nearly) the
same place. That shared stretch is the evidence used to join the two local tracks.

Algorithm:

1. Group points into local tracks keyed by ``(window, local_id)``.
2. Process windows in increasing order. Video-wide tracks built so far hold the points of every
   earlier window joined to them.
3. For each local track of the current window and each video-wide track, pair every point of the
   local track with the video-wide track's point nearest in time, if it is within
   ``time_tolerance`` (windows may sample frames at different phases; points of one video-wide track
   at the same time, from several earlier windows, are averaged). Such pairs only exist where both
   windows have frames, i.e. in the overlap region; a video-wide track from any earlier window still
   active there is a candidate, not only the previous window's. The cost is the mean Euclidean
   distance (normalised coordinates) over those pairs; no pair at all means "cannot match".
4. Solve the assignment with ``scipy.optimize.linear_sum_assignment`` (optimal, not greedy: two
   close objects are matched to minimise the total cost, so one good match cannot steal the partner
   of the other). Every local track also has its own "new object" column whose cost is
   ``max_distance``, so a track is left unmatched rather than forced onto a poor partner, and pairs
   costing more than ``max_distance`` are never taken.
5. Matched local tracks join their video-wide track; the rest, including objects that first appear
   after the overlap region and every track of a window that shares no time with earlier ones, start
   new video-wide tracks.
6. Video-wide IDs are numbered 0..n-1 by first appearance: earliest time, then window, then local ID.

Limits: an object hidden throughout an overlap gets a new ID after it; an identity switch inside one
window is trusted as the model wrote it; a local track joins at most one video-wide track per window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

__all__ = ["StitchResult", "WindowTrackPoint", "stitch_tracks"]


_Key = tuple[int, int]  # (window, local_id)


_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class WindowTrackPoint:
    """One tracked point from one window's answer, already converted to video coordinates."""

    window: int
    """Index of the window (windows are processed in increasing order)."""
    local_id: int
    """Object ID as written by the model in that window."""
    t: float
    """Absolute time in seconds from the start of the video."""
    x: float
    """Normalised 0..1 across the frame width."""
    y: float
    """Normalised 0..1 across the frame height."""


@dataclass(frozen=True)
class StitchResult:
    """Video-wide identities of the local tracks."""

    global_ids: dict[tuple[int, int], int]
    """``(window, local_id)`` -> video-wide track ID, numbered 0..n-1 by first appearance."""
    num_objects: int


@dataclass
class _Track:
    """Points of one local or video-wide track: sorted unique times and the mean position at each."""

    times: _Array
    xy: _Array  # shape (len(times), 2)

    @classmethod
    def from_rows(cls, rows: _Array) -> _Track:
        """Build from an (n, 3) array of (t, x, y) rows; non-finite rows are ignored."""
        rows = rows[np.isfinite(rows).all(axis=1)]
        times, inverse = np.unique(rows[:, 0], return_inverse=True)
        xy = np.zeros((len(times), 2))
        np.add.at(xy, inverse, rows[:, 1:])
        xy /= np.bincount(inverse, minlength=len(times))[:, None]
        return cls(times=times, xy=xy)


def stitch_tracks(
    points: Sequence[WindowTrackPoint],
    *,
    max_distance: float = 0.1,
    time_tolerance: float = 0.26,
) -> StitchResult:
    """Give every ``(window, local_id)`` track a video-wide ID (see the module docstring).

    Args:
        points: tracked points of all windows, in any order.
        max_distance: largest mean normalised distance at which two tracks are still joined.
        time_tolerance: largest time difference in seconds at which two points count as the same
            frame (default: just over half the 0.5 s frame interval of 2 fps sampling).

    Raises:
        ValueError: ``max_distance`` or ``time_tolerance`` is negative or not finite.
    """
    if not (math.isfinite(max_distance) and max_distance >= 0):
        raise ValueError(f"max_distance must be finite and >= 0, got {max_distance}")
    if not (math.isfinite(time_tolerance) and time_tolerance >= 0):
        raise ValueError(f"time_tolerance must be finite and >= 0, got {time_tolerance}")

    rows_by_key: dict[_Key, list[tuple[float, float, float]]] = {}
    for p in points:
        rows_by_key.setdefault((p.window, p.local_id), []).append((p.t, p.x, p.y))
    rows = {key: np.asarray(value, dtype=np.float64).reshape(-1, 3) for key, value in rows_by_key.items()}
    local = {key: _Track.from_rows(value) for key, value in rows.items()}

    cluster_of: dict[_Key, int] = {}
    cluster_rows: list[list[_Array]] = []  # points of the earlier windows joined to each cluster
    cluster_tracks: list[_Track | None] = []  # cache of _Track.from_rows(cluster_rows[i]); None = stale
    for window in sorted({key[0] for key in rows}):
        keys = sorted(key for key in rows if key[0] == window)
        for index, parts in enumerate(cluster_rows):
            if cluster_tracks[index] is None:
                cluster_tracks[index] = _Track.from_rows(np.concatenate(parts))
        clusters = [track for track in cluster_tracks if track is not None]
        matches = _assign([local[key] for key in keys], clusters, max_distance, time_tolerance)
        for row, key in enumerate(keys):
            cluster = matches.get(row)
            if cluster is None:
                cluster = len(cluster_rows)
                cluster_rows.append([])
                cluster_tracks.append(None)
            cluster_of[key] = cluster
        # Joined only after the whole window is assigned: a window never matches against itself.
        for key in keys:
            cluster_rows[cluster_of[key]].append(rows[key])
            cluster_tracks[cluster_of[key]] = None

    def first_appearance(key: _Key) -> tuple[float, int, int]:
        times = local[key].times
        return (float(times[0]) if len(times) else math.inf, key[0], key[1])

    cluster_first: dict[int, tuple[float, int, int]] = {}
    for key, cluster in cluster_of.items():
        candidate = first_appearance(key)
        if cluster not in cluster_first or candidate < cluster_first[cluster]:
            cluster_first[cluster] = candidate
    order = sorted(cluster_first, key=cluster_first.__getitem__)
    renumber = {cluster: new_id for new_id, cluster in enumerate(order)}
    return StitchResult(
        global_ids={key: renumber[cluster] for key, cluster in cluster_of.items()},
        num_objects=len(order),
    )


def _assign(
    tracks: Sequence[_Track], clusters: Sequence[_Track], max_distance: float, time_tolerance: float
) -> dict[int, int]:
    """Optimal one-to-one matching of a window's local tracks (rows) to video-wide tracks."""
    n, m = len(tracks), len(clusters)
    cost = np.full((n, m), math.inf)
    for i, track in enumerate(tracks):
        for j, cluster in enumerate(clusters):
            cost[i, j] = _track_distance(track, cluster, time_tolerance)
    feasible = cost <= max_distance  # False for inf (no shared time)
    if not feasible.any():
        return {}
    # Columns m..m+n-1: "new object" for each row, priced just above max_distance so that a pair at
    # exactly max_distance is still joined. `forbidden` exceeds any all-"new object" total, so it is
    # never chosen while a feasible alternative exists (and one always does).
    new_object = max_distance + 1e-9 * max(1.0, max_distance)
    forbidden = (n + 1) * (new_object + 1.0)
    matrix = np.full((n, m + n), forbidden)
    matrix[:, :m] = np.where(feasible, cost, forbidden)
    matrix[np.arange(n), m + np.arange(n)] = new_object
    rows, cols = linear_sum_assignment(matrix)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if c < m and feasible[r, c]}


def _track_distance(track: _Track, cluster: _Track, time_tolerance: float) -> float:
    """Mean distance over the track's points that have a cluster point within the time tolerance.

    Each point is paired with the cluster point nearest in time (the earlier one on a tie);
    ``inf`` when no point has a partner.
    """
    if len(track.times) == 0 or len(cluster.times) == 0:
        return math.inf
    if (
        cluster.times[-1] < track.times[0] - time_tolerance
        or cluster.times[0] > track.times[-1] + time_tolerance
    ):
        return math.inf  # no time in common: the usual case for tracks that ended windows ago
    last = len(cluster.times) - 1
    after = np.searchsorted(cluster.times, track.times)
    before = np.clip(after - 1, 0, last)
    after = np.clip(after, 0, last)
    gap_before = np.abs(track.times - cluster.times[before])
    gap_after = np.abs(cluster.times[after] - track.times)
    nearest = np.where(gap_before <= gap_after, before, after)
    shared = np.minimum(gap_before, gap_after) <= time_tolerance
    if not shared.any():
        return math.inf
    offsets = track.xy[shared] - cluster.xy[nearest[shared]]
    return float(np.hypot(offsets[:, 0], offsets[:, 1]).mean())
