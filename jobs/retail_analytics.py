"""Retail analytics from a clip's stitched tracks: line crossings, zone visits and dwell, occupancy per
minute, and an hourly rollup that merges exactly (pure: numpy and shapely; no Ray, no torch, no I/O).

Input: the `tracks` rows of one clip and one tracked query (persistent, video-wide `track_id`s, `t` in
seconds from the clip's start, display pixels and their 0..1 fractions) and the camera's geometry
(`jobs.retail_geometry`). Output: plain rows for the retail job's tables (`jobs.retail_tables`).

What a track is here
    The points of one `track_id`, in time order. Where consecutive windows overlap, the model tracked the
    same people twice (once per window); `owned_points` keeps, for every moment, the points of one window
    only: the window in which that moment lies farthest from the window's edges (the overlap is split in
    its middle). A crossing in an overlap is therefore seen once even when stitching failed to join the
    two windows' tracks (it then belongs to the track of the owning window). Points of one track at the
    same time are averaged. Between points a track moves in a straight line, however long the gap.

Line crossings (supervision's `LineZone` semantics, computed from consecutive points)
    A point's side is the sign of its cross product with the line (start -> end, y down); the configured
    `in_side` is "in". A crossing is a move between two points on opposite sides whose straight segment
    passes between the line's two ends (segment intersection); its time and place are where that segment
    meets the line (linear interpolation, also across a gap: `segment_dt_s` says how long the gap was).
    Points exactly on the line have no side: touching the line and going back is no crossing. Going round
    an end of the line changes the side without a crossing. Jitter: a crossing followed by the opposite
    crossing of the same track and line less than `crossing_hysteresis_s` later cancels both, so a person
    standing on the line counts at most once and every track's in - out equals its net change of side.

Zone visits
    A point is in a zone when it lies inside the polygon or on its edge. A visit runs from entering to
    leaving: both are interpolated where the segment between the last point outside and the first point
    inside meets the outline. A track that already stands in the zone at its first point enters at that
    point; one that ends in the zone leaves at its last. Two visits of one track and zone less than
    `zone_merge_gap_s` apart are one (jitter on the edge). `cut_at_start` / `cut_at_end`: the visit
    begins within `clip_edge_s` of the clip's start / ends within it of the clip's end, so the person was
    probably there before / after the clip: its dwell is a lower bound.

Occupancy per minute (wall-clock minutes)
    A person is in view from the track's first point to its last, and in a zone during its visits.
    Per minute and area: `observed_s` (seconds of the minute the clip covers), `person_seconds` (summed
    presence), `tracks` (tracks present at some moment of the minute) and `max_present` (most people
    present at one moment). Mean occupancy = person_seconds / observed_s.

Hourly rollup (per store, camera, query, kind = line | zone | view, name, hour)
    Only sums, counts, minima and maxima, so rows of the same hour written by different runs (clips of
    one hour processed on different nights) merge exactly with sum / min / max (`merge_hourly`, and the
    SQL in `jobs.retail_tables`). Crossings count in the hour of their time, visits in the hour they
    begin (with their whole dwell); dwell statistics cover complete visits only (`visits - visits_cut`
    of them) and give mean and standard deviation (`dwell_sq_sum_s2`). Percentiles do not merge and are
    not stored: `retail_zone_visits` holds every visit, and the `dwell_distribution` named query computes
    exact percentiles from it. `tracks` counts (clip, track) pairs: track ids are per clip, so a person
    seen in two clips counts twice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, Polygon
from shapely.geometry import Point as ShapelyPoint

from jobs.retail_geometry import CameraGeometry, LineSpec, Units, ZoneSpec

_Array = npt.NDArray[np.float64]

VIEW = "view"  # the kind and name of the whole picture's occupancy rows
Direction = Literal["in", "out"]


@dataclass(frozen=True)
class AnalyticsSettings:
    """The analytics' tolerances (the retail job's options of the same names)."""

    crossing_hysteresis_s: float = 1.0
    zone_merge_gap_s: float = 1.0
    clip_edge_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("crossing_hysteresis_s", "zone_merge_gap_s", "clip_edge_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class TrackPoint:
    """One row of the `tracks` table, as the analytics need it."""

    track_id: int
    window: int
    t: float  # seconds from the clip's start
    x_px: float
    y_px: float
    x_norm: float
    y_norm: float


@dataclass(frozen=True)
class Crossing:
    line: str
    track_id: int
    direction: Direction
    t: float  # seconds from the clip's start, where the track's segment meets the line
    x_px: float
    y_px: float
    segment_dt_s: float  # time between the two points the crossing was interpolated between


@dataclass(frozen=True)
class Visit:
    zone: str
    track_id: int
    t_enter: float
    t_exit: float
    cut_at_start: bool
    cut_at_end: bool
    points: int  # track points inside the zone during the visit

    @property
    def dwell_s(self) -> float:
        return self.t_exit - self.t_enter

    @property
    def cut(self) -> bool:
        return self.cut_at_start or self.cut_at_end


@dataclass(frozen=True)
class Presence:
    """A track present in an area from `start` to `end` (seconds from the clip's start)."""

    track_id: int
    start: float
    end: float


@dataclass
class TrackPath:
    """One track after overlap ownership: unique times and the mean position at each."""

    track_id: int
    t: _Array
    norm: _Array  # (n, 2) x_norm, y_norm
    px: _Array  # (n, 2) x_px, y_px

    def coords(self, units: Units) -> _Array:
        return self.norm if units == "normalized" else self.px


# -------------------------------------------------------------------------------------------------
# Tracks: overlap ownership and paths


def observed_windows(points: Iterable[TrackPoint]) -> dict[int, tuple[float, float]]:
    """Each window's time span as its points show it (when the true window bounds are not known)."""
    spans: dict[int, tuple[float, float]] = {}
    for p in points:
        lo, hi = spans.get(p.window, (p.t, p.t))
        spans[p.window] = (min(lo, p.t), max(hi, p.t))
    return spans


def owned_points(points: Sequence[TrackPoint], windows: Mapping[int, tuple[float, float]] | None = None,
                 *, tolerance: float = 1e-6) -> list[TrackPoint]:
    """The points of the window that owns their time: in an overlap, the window farther from its edges.

    Args:
        points: every track point of the clip (all tracks of one query), any order.
        windows: window index -> (t_start, t_end) in seconds; windows missing here own their points.
            Default: the spans the points themselves show (`observed_windows`).
    """
    spans = dict(windows) if windows is not None else observed_windows(points)
    order = sorted(spans)
    starts = np.asarray([spans[w][0] for w in order], dtype=np.float64)
    ends = np.asarray([spans[w][1] for w in order], dtype=np.float64)
    kept = []
    for p in points:
        if p.window not in spans:
            kept.append(p)
            continue
        inside = (starts - tolerance <= p.t) & (p.t <= ends + tolerance)
        margin = np.where(inside, np.minimum(p.t - starts, ends - p.t), -np.inf)
        owner = order[int(np.argmax(margin))]  # ties: the earlier window
        if owner == p.window or not inside.any():
            kept.append(p)
    return kept


def track_paths(points: Iterable[TrackPoint]) -> list[TrackPath]:
    """Points grouped per track, sorted by time; points of one track at the same time are averaged."""
    grouped: dict[int, list[TrackPoint]] = defaultdict(list)
    for p in points:
        if all(math.isfinite(v) for v in (p.t, p.x_px, p.y_px, p.x_norm, p.y_norm)):
            grouped[p.track_id].append(p)
    paths = []
    for track_id in sorted(grouped):
        rows = np.asarray([(p.t, p.x_norm, p.y_norm, p.x_px, p.y_px) for p in grouped[track_id]], dtype=np.float64)
        times, inverse = np.unique(rows[:, 0], return_inverse=True)
        sums = np.zeros((len(times), 4))
        np.add.at(sums, inverse, rows[:, 1:])
        sums /= np.bincount(inverse, minlength=len(times))[:, None]
        paths.append(TrackPath(track_id, times, sums[:, :2], sums[:, 2:]))
    return paths


# -------------------------------------------------------------------------------------------------
# Lines


def _signed_in_distance(line: LineSpec, xy: _Array) -> _Array:
    """Signed distance of each point from the line: > 0 on the in side, < 0 on the out side, 0 on it."""
    ax, ay = line.start
    dx, dy = line.end[0] - ax, line.end[1] - ay
    cross = (dx * (xy[:, 1] - ay) - dy * (xy[:, 0] - ax)) / math.hypot(dx, dy)
    # cross < 0 is the left of start -> end on a y-down picture (supervision's "in" side).
    return -cross if line.in_side == "left" else cross


def raw_crossings(path: TrackPath, line: LineSpec, units: Units) -> list[Crossing]:
    """Every move of the track across the line segment, before hysteresis."""
    xy = path.coords(units)
    distance = _signed_in_distance(line, xy)
    side = np.sign(distance)
    a = np.asarray(line.start, dtype=np.float64)
    d = np.asarray(line.end, dtype=np.float64) - a
    length2 = float(d @ d)
    out: list[Crossing] = []
    prev = -1
    for i in np.flatnonzero(side):  # points on the line have no side and are skipped
        if prev >= 0 and side[i] != side[prev]:
            v = distance[prev] / (distance[prev] - distance[i])  # where the segment meets the line's extension
            meet = xy[prev] + v * (xy[i] - xy[prev])
            along = float((meet - a) @ d) / length2
            if -1e-9 <= along <= 1 + 1e-9:  # between the line's two ends
                px = path.px[prev] + v * (path.px[i] - path.px[prev])
                out.append(Crossing(
                    line=line.name, track_id=path.track_id, direction="in" if side[i] > 0 else "out",
                    t=float(path.t[prev] + v * (path.t[i] - path.t[prev])), x_px=float(px[0]), y_px=float(px[1]),
                    segment_dt_s=float(path.t[i] - path.t[prev]),
                ))
        prev = int(i)
    return out


def apply_hysteresis(crossings: Sequence[Crossing], hysteresis_s: float) -> list[Crossing]:
    """Cancel each crossing followed by the opposite one less than `hysteresis_s` later (one track, one
    line, in time order). What is left keeps the track's in - out, and its consecutive opposite crossings
    are at least `hysteresis_s` apart."""
    kept: list[Crossing] = []
    for c in crossings:
        if kept and kept[-1].direction != c.direction and c.t - kept[-1].t < hysteresis_s:
            kept.pop()
        else:
            kept.append(c)
    return kept


def line_crossings(path: TrackPath, line: LineSpec, units: Units, hysteresis_s: float) -> list[Crossing]:
    """The track's crossings of the line, jitter removed (see the module docstring)."""
    return apply_hysteresis(raw_crossings(path, line, units), hysteresis_s)


# -------------------------------------------------------------------------------------------------
# Zones


def _boundary_fraction(outline: Any, p0: _Array, p1: _Array, *, entering: bool) -> float:
    """Where (0..1 from p0 to p1) the segment crosses the zone's outline: the last crossing when entering,
    the first when leaving (a segment may cut a corner of the zone on its way)."""
    segment = LineString([tuple(p0), tuple(p1)])
    hit = segment.intersection(outline)
    coords = [c for part in getattr(hit, "geoms", [hit]) if not part.is_empty for c in part.coords]
    if not coords or segment.length == 0:
        return 0.5  # numerically on the outline: the middle of the segment
    fractions = [segment.project(ShapelyPoint(c), normalized=True) for c in coords]
    return float(max(fractions) if entering else min(fractions))


def zone_visits(path: TrackPath, zone: ZoneSpec, units: Units, *, duration: float,
                settings: AnalyticsSettings) -> list[Visit]:
    """The track's visits of the zone (see the module docstring)."""
    polygon = Polygon(zone.polygon)
    xy = path.coords(units)
    inside = shapely.intersects_xy(polygon, xy[:, 0], xy[:, 1])
    n = len(path.t)
    raw: list[Visit] = []
    i = 0
    while i < n:
        if not inside[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and inside[j + 1]:
            j += 1
        if i == 0:
            enter = float(path.t[0])
        else:
            f = _boundary_fraction(polygon.exterior, xy[i - 1], xy[i], entering=True)
            enter = float(path.t[i - 1] + f * (path.t[i] - path.t[i - 1]))
        if j == n - 1:
            leave = float(path.t[-1])
        else:
            f = _boundary_fraction(polygon.exterior, xy[j], xy[j + 1], entering=False)
            leave = float(path.t[j] + f * (path.t[j + 1] - path.t[j]))
        raw.append(Visit(zone.name, path.track_id, enter, leave,
                         cut_at_start=i == 0 and enter <= settings.clip_edge_s,
                         cut_at_end=j == n - 1 and leave >= duration - settings.clip_edge_s,
                         points=j - i + 1))
        i = j + 1
    merged: list[Visit] = []
    for v in raw:
        if merged and v.t_enter - merged[-1].t_exit < settings.zone_merge_gap_s:
            last = merged.pop()
            v = Visit(v.zone, v.track_id, last.t_enter, v.t_exit, last.cut_at_start, v.cut_at_end, last.points + v.points)
        merged.append(v)
    return merged


# -------------------------------------------------------------------------------------------------
# Occupancy


@dataclass(frozen=True)
class AreaMinute:
    """One area's occupancy in one wall-clock minute (the part of it the clip covers)."""

    minute: datetime
    observed_s: float
    person_seconds: float
    tracks: int
    max_present: int


def _present_at(starts: _Array, ends: _Array, instant: float) -> int:
    # Presence is [start, end); a zero-length presence (one point) counts at its instant.
    return int(np.sum(((starts <= instant) & (instant < ends)) | ((starts == instant) & (ends == instant))))


def occupancy(presence: Sequence[Presence], lo: float, hi: float, *, closed: bool) -> tuple[float, int, int]:
    """(person_seconds, tracks, max_present) of the presences over [lo, hi) ([lo, hi] when `closed`)."""
    starts = np.asarray([p.start for p in presence], dtype=np.float64)
    ends = np.asarray([p.end for p in presence], dtype=np.float64)
    if len(starts) == 0:
        return 0.0, 0, 0
    touching = (starts <= hi if closed else starts < hi) & (ends >= lo)
    overlap = np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0.0, None)
    person_seconds = float(overlap[touching].sum())
    tracks = len({p.track_id for p, hit in zip(presence, touching, strict=True) if hit})
    # The count only rises at a presence's start: the most present is at `lo` or at one of those starts.
    candidates = [lo, *starts[(starts >= lo) & ((starts <= hi) if closed else (starts < hi))].tolist()]
    max_present = max(_present_at(starts, ends, c) for c in candidates)
    return person_seconds, tracks, max_present


def minute_spans(clip_start: datetime, duration: float) -> list[tuple[datetime, float, float, bool]]:
    """The wall-clock minutes a clip covers: (minute, lo, hi, closed) with lo/hi in clip seconds; the
    clip's last instant belongs to its last minute (closed)."""
    if not duration > 0:
        return []
    first = clip_start.replace(second=0, microsecond=0)
    offset = (first - clip_start).total_seconds()  # <= 0
    spans = []
    k = 0
    while True:
        lo, hi = offset + 60.0 * k, offset + 60.0 * (k + 1)
        if lo >= duration:
            break
        last = hi >= duration
        spans.append((first + timedelta(minutes=k), max(lo, 0.0), min(hi, duration), last))
        k += 1
    return spans


def minute_occupancy(presence: Sequence[Presence], clip_start: datetime, duration: float) -> list[AreaMinute]:
    """One row per wall-clock minute the clip covers (zero rows included: no one there is data too)."""
    rows = []
    for minute, lo, hi, closed in minute_spans(clip_start, duration):
        person_seconds, tracks, max_present = occupancy(presence, lo, hi, closed=closed)
        rows.append(AreaMinute(minute, hi - lo, person_seconds, tracks, max_present))
    return rows


# -------------------------------------------------------------------------------------------------
# One clip


@dataclass(frozen=True)
class ClipKey:
    """Which clip (and which tracked query) the analytics are of."""

    video_id: str
    store: str
    camera: str
    clip_start: datetime  # aware, UTC
    duration_s: float
    query: str


@dataclass
class ClipTraffic:
    """Everything the analytics found in one clip for one tracked query (times in clip seconds)."""

    clip: ClipKey
    lines: list[str]
    zones: list[str]
    crossings: list[Crossing] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    in_view: list[Presence] = field(default_factory=list)

    def wall(self, t: float) -> datetime:
        return self.clip.clip_start + timedelta(seconds=t)

    def zone_presence(self, zone: str) -> list[Presence]:
        return [Presence(v.track_id, v.t_enter, v.t_exit) for v in self.visits if v.zone == zone]

    def areas(self) -> list[tuple[str, str, list[Presence]]]:
        """(kind, name, presence) of every area whose occupancy is measured: the view, then each zone."""
        return [(VIEW, VIEW, self.in_view), *(("zone", z, self.zone_presence(z)) for z in self.zones)]


def analyse_clip(clip: ClipKey, points: Sequence[TrackPoint], geometry: CameraGeometry | None, *,
                 windows: Mapping[int, tuple[float, float]] | None = None,
                 settings: AnalyticsSettings | None = None) -> ClipTraffic:
    """Crossings, visits and presence of one clip's tracks of one query (see the module docstring).

    Args:
        points: the clip's `tracks` rows of this query (every window), as `TrackPoint`s.
        geometry: the camera's lines and zones; None: in-view occupancy only.
        windows: window index -> (t_start, t_end) of the run's windows (default: as the points show them).
    """
    settings = settings or AnalyticsSettings()
    lines = list(geometry.lines) if geometry else []
    zones = list(geometry.zones) if geometry else []
    units: Units = geometry.units if geometry else "normalized"
    traffic = ClipTraffic(clip, [x.name for x in lines], [z.name for z in zones])
    for path in track_paths(owned_points(points, windows)):
        start, end = max(0.0, float(path.t[0])), min(clip.duration_s, float(path.t[-1]))
        traffic.in_view.append(Presence(path.track_id, start, max(start, end)))
        for line in lines:
            traffic.crossings.extend(line_crossings(path, line, units, settings.crossing_hysteresis_s))
        for zone in zones:
            traffic.visits.extend(zone_visits(path, zone, units, duration=clip.duration_s, settings=settings))
    traffic.crossings.sort(key=lambda c: (c.t, c.line, c.track_id))
    traffic.visits.sort(key=lambda v: (v.t_enter, v.zone, v.track_id))
    return traffic


def _keys(clip: ClipKey) -> dict[str, Any]:
    return {"store": clip.store, "camera": clip.camera, "clip_start": clip.clip_start, "video_id": clip.video_id,
            "query": clip.query}


def crossing_rows(traffic: ClipTraffic) -> list[dict[str, Any]]:
    """`retail_crossings` rows (without the job's run_id)."""
    return [{**_keys(traffic.clip), "line": c.line, "track_id": c.track_id, "direction": c.direction, "t": c.t,
             "wall_time": traffic.wall(c.t), "x_px": c.x_px, "y_px": c.y_px, "segment_dt_s": c.segment_dt_s}
            for c in traffic.crossings]


def visit_rows(traffic: ClipTraffic) -> list[dict[str, Any]]:
    """`retail_zone_visits` rows (without the job's run_id)."""
    return [{**_keys(traffic.clip), "zone": v.zone, "track_id": v.track_id, "t_enter": v.t_enter,
             "t_exit": v.t_exit, "wall_enter": traffic.wall(v.t_enter), "wall_exit": traffic.wall(v.t_exit),
             "dwell_s": v.dwell_s, "cut_at_start": v.cut_at_start, "cut_at_end": v.cut_at_end, "points": v.points}
            for v in traffic.visits]


def occupancy_rows(traffic: ClipTraffic) -> list[dict[str, Any]]:
    """`retail_occupancy` rows: every minute the clip covers x (the view and each zone)."""
    keys = _keys(traffic.clip)
    del keys["clip_start"]
    out = []
    for kind, name, presence in traffic.areas():
        for m in minute_occupancy(presence, traffic.clip.clip_start, traffic.clip.duration_s):
            out.append({**keys, "minute": m.minute, "kind": kind, "name": name, "observed_s": m.observed_s,
                        "person_seconds": m.person_seconds, "tracks": m.tracks, "max_present": m.max_present})
    return out


# -------------------------------------------------------------------------------------------------
# Hourly rollup

HourKey = tuple[str, str, str, str, str, datetime]  # store, camera, query, kind, name, hour

# How each column of an hourly row merges with the same hour's row from another clip or run.
SUMS = ("clips", "tracks", "crossings_in", "crossings_out", "visits", "visits_cut", "dwell_sum_s",
        "dwell_sq_sum_s2", "person_seconds", "observed_s")
MINS = ("dwell_min_s",)
MAXES = ("dwell_max_s", "occupancy_max")
HOURLY_COLUMNS = ("store", "camera", "query", "kind", "name", "hour", *SUMS, *MINS, *MAXES)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _empty_row(key: HourKey) -> dict[str, Any]:
    store, camera, query, kind, name, hour = key
    row: dict[str, Any] = {"store": store, "camera": camera, "query": query, "kind": kind, "name": name,
                           "hour": hour, **dict.fromkeys((*SUMS, *MINS, *MAXES))}
    row["clips"] = 1
    row["tracks"] = 0
    if kind == "line":
        row.update(crossings_in=0, crossings_out=0)
    else:
        row.update(person_seconds=0.0, observed_s=0.0, occupancy_max=0)
    if kind == "zone":
        row.update(visits=0, visits_cut=0)
    return row


def clip_hourly(traffic: ClipTraffic) -> list[dict[str, Any]]:
    """The clip's hourly rows: every (line, zone, view) x every hour the clip covers, zeros included."""
    clip = traffic.clip
    base = (clip.store, clip.camera, clip.query)
    hours: dict[datetime, list[tuple[float, float, bool]]] = defaultdict(list)
    for minute, lo, hi, closed in minute_spans(clip.clip_start, clip.duration_s):
        hours[_hour(minute)].append((lo, hi, closed))
    rows: dict[HourKey, dict[str, Any]] = {}

    def row_of(key: HourKey) -> dict[str, Any]:
        # A time the model put just past the clip's end can fall in an hour the clip does not cover.
        return rows.setdefault(key, _empty_row(key))

    for line in traffic.lines:
        for hour in hours:
            row_of((*base, "line", line, hour))
    for kind, name, presence in traffic.areas():
        peaks: dict[datetime, int] = defaultdict(int)
        for m in minute_occupancy(presence, clip.clip_start, clip.duration_s):
            peaks[_hour(m.minute)] = max(peaks[_hour(m.minute)], m.max_present)
        for hour, spans in hours.items():
            lo, hi, closed = spans[0][0], spans[-1][1], spans[-1][2]
            person_seconds, tracks, _ = occupancy(presence, lo, hi, closed=closed)
            row = row_of((*base, kind, name, hour))
            row.update(person_seconds=person_seconds, observed_s=hi - lo, occupancy_max=peaks[hour])
            if kind == VIEW:
                row["tracks"] = tracks
    crossed: dict[HourKey, set[int]] = defaultdict(set)
    for c in traffic.crossings:
        key = (*base, "line", c.line, _hour(traffic.wall(c.t)))
        row_of(key)["crossings_in" if c.direction == "in" else "crossings_out"] += 1
        crossed[key].add(c.track_id)
    visited: dict[HourKey, set[int]] = defaultdict(set)
    for v in traffic.visits:
        key = (*base, "zone", v.zone, _hour(traffic.wall(v.t_enter)))
        row = row_of(key)
        row["visits"] += 1
        visited[key].add(v.track_id)
        if v.cut:
            row["visits_cut"] += 1
            continue
        row["dwell_sum_s"] = (row["dwell_sum_s"] or 0.0) + v.dwell_s
        row["dwell_sq_sum_s2"] = (row["dwell_sq_sum_s2"] or 0.0) + v.dwell_s**2
        row["dwell_min_s"] = v.dwell_s if row["dwell_min_s"] is None else min(row["dwell_min_s"], v.dwell_s)
        row["dwell_max_s"] = v.dwell_s if row["dwell_max_s"] is None else max(row["dwell_max_s"], v.dwell_s)
    for key, ids in (*crossed.items(), *visited.items()):
        rows[key]["tracks"] = len(ids)
    return [rows[k] for k in sorted(rows, key=lambda k: (*k[:5], k[5].timestamp()))]


def _merge_value(column: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if column in SUMS:
        return a + b
    return min(a, b) if column in MINS else max(a, b)


def merge_hourly(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same (store, camera, query, kind, name, hour) merged: sums, minima, maxima (exact)."""
    merged: dict[HourKey, dict[str, Any]] = {}
    for row in rows:
        key: HourKey = tuple(row[c] for c in HOURLY_COLUMNS[:6])
        if key not in merged:
            merged[key] = {c: row.get(c) for c in HOURLY_COLUMNS}
            continue
        into = merged[key]
        for column in (*SUMS, *MINS, *MAXES):
            into[column] = _merge_value(column, into[column], row.get(column))
    return [merged[k] for k in sorted(merged, key=lambda k: (*k[:5], k[5].timestamp()))]


def hourly_rollup(traffic: Iterable[ClipTraffic]) -> list[dict[str, Any]]:
    """The hourly rows of several clips, merged (what one part of `retail_traffic_hourly` holds)."""
    return merge_hourly(row for t in traffic for row in clip_hourly(t))


def dwell_stats(row: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(mean, standard deviation) of the complete visits' dwell of a merged hourly row."""
    n = (row.get("visits") or 0) - (row.get("visits_cut") or 0)
    if n <= 0 or row.get("dwell_sum_s") is None:
        return None, None
    mean = row["dwell_sum_s"] / n
    variance = max(0.0, row["dwell_sq_sum_s2"] / n - mean * mean)
    return mean, math.sqrt(variance)
