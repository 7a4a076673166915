"""Accuracy of a run's tables on toy-world videos, against the generator's ground truth (pure: numpy, scipy).

Given a clip's `World` (pipeline.devtools.toyworld) and the rows the pipeline wrote for it (counts, points,
tracks, video_counts as plain dicts, the tables' own columns), this scores what a user of the tables would
see. The frames the model saw are recomputed here from the source frame times with the pipeline's own
windowing and sampler (pipeline.video.sampling), never read from the tables, so a wrong window offset, a
swapped width/height or a mis-stitched track shows as a lower figure.

Definitions (docs/benchmarks.md, "Accuracy on the toy world"):

* A person is *in* a window when its centre is inside the frame at one of the window's sampled frames.
* exact count, first window: the `counts` row of window 0 states the number of people in window 0 (the
  clip the model sees: the issue's definition); a null count is wrong. Also reported: over every window,
  and per video (`video_counts.distinct_objects` vs the people in any window) from the stitched tracks and
  from the stitched count points. The latter cannot be exact on several windows even with perfect answers:
  a count answer points to each person once, at its first frame in the window, so the same person is
  pointed to at different times in two overlapping windows and stitching (which joins objects seen at the
  same frames) does not join them.
* point precision / recall: the points of the count and point answers (`points` table), matched one to one
  (scipy `linear_sum_assignment`) to the people in their window; a match needs the person to be visible at
  the point's frame and the distance, in source display pixels, to be within 5% of max(W, H).
* point on a frame: a point's (or track point's) time is one of its window's sampled frame times, to the
  0.1 s the processor writes frame times with (the model copies them; the pipeline adds the window start).
* one id kept (tracks): a true person keeps one id when at every sampled frame (of every window) where it is
  visible, a track point of that window and frame is matched to it (per frame, one to one, within 5%) and
  all those points carry the same `track_id`, which no other person gets.
* IDF1: identity F1 of the stitched tracks over distinct sampled frame times, with the optimal one-to-one
  mapping between true people and track ids, within the same 5%.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.devtools.toyworld import World, time_label
from pipeline.video.sampling import FrameSampler, frames_in_window, plan_windows

MATCH_FRACTION = 0.05  # a point matches a person within 5% of max(W, H) display pixels
Row = Mapping[str, Any]


@dataclass(frozen=True)
class SampledWindow:
    """One window of a clip and the absolute times of the frames the model saw in it."""

    index: int
    start: float
    end: float
    frame_times: np.ndarray

    def frame_of(self, t_abs: float) -> int | None:
        """Index of the sampled frame a written time names (its 0.1 s label), or None when none does."""
        label = time_label(t_abs - self.start)
        for i, t in enumerate(self.frame_times):
            if time_label(float(t) - self.start) == label:
                return i
        return None


def sampled_windows(world: World, *, window_s: float, overlap_s: float, sampler: FrameSampler) -> list[SampledWindow]:
    """The windows the pipeline cuts the clip into and the frames it samples in each (from the source frame
    times: frame i at i / fps, as the toy world's mp4 stores them)."""
    times = world.frame_times
    windows = plan_windows(world.duration, window_s, overlap_s)
    out = []
    for w in windows:
        in_window = frames_in_window(times, w, is_last=w.index == len(windows) - 1)
        picked = sampler.sample(times[in_window].tolist(), world.fps) if in_window else []
        out.append(SampledWindow(w.index, w.start, w.end, times[[in_window[i] for i in picked]]))
    return out


def people_in(world: World, window: SampledWindow) -> list[int]:
    """Indexes (into world.people) of the people visible at one of the window's sampled frames."""
    if not world.people or not len(window.frame_times):
        return []
    _xy, vis = world.positions(window.frame_times)
    return [int(k) for k in np.flatnonzero(vis.any(1))]


@dataclass
class Tally:
    """Counts summed over clips; the figures are ratios of them."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: Mapping[str, int]) -> None:
        for key, value in other.items():
            self.counts[key] += value

    def ratio(self, num: str, den: str) -> float | None:
        return self.counts[num] / self.counts[den] if self.counts[den] else None

    def figures(self) -> dict[str, float | None]:
        """The named figures (None when nothing was there to score)."""
        idf1_den = self.counts["id_true_obs"] + self.counts["id_pred_obs"]
        return {
            "count_exact_first_window": self.ratio("count_exact_first", "count_clips"),
            "count_exact_all_windows": self.ratio("count_exact_windows", "count_windows"),
            "count_exact_video_tracks": self.ratio("count_exact_video_tracks", "count_videos_video_tracks"),
            "count_exact_video_points": self.ratio("count_exact_video_points", "count_videos_video_points"),
            "point_precision": self.ratio("point_tp", "point_pred"),
            "point_recall": self.ratio("point_tp", "point_true"),
            "points_on_sampled_frames": self.ratio("on_frame", "timed_points"),
            "track_id_kept": self.ratio("kept", "track_people"),
            "idf1": 2 * self.counts["idtp"] / idf1_den if idf1_den else None,
        }


def _match(cost: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (row, column) whose cost is within `threshold`."""
    if cost.size == 0:
        return []
    big = 1e12
    gated = np.where(cost <= threshold, cost, big)
    rows, cols = linear_sum_assignment(gated)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if gated[r, c] < big]


def _threshold(world: World) -> float:
    return MATCH_FRACTION * max(world.width, world.height)


def _by_window(rows: Iterable[Row]) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        out[int(r["window_index"])].append(r)
    return out


def score_counts(world: World, windows: Sequence[SampledWindow], counts: Sequence[Row],
                 video_counts: Sequence[Row] = ()) -> dict[str, int]:
    """Exact counts: on the first window, on every window, and per video (`video_counts.distinct_objects` of
    the track task, stitched tracks, and of the count task, stitched count points)."""
    by_window = {int(r["window_index"]): r.get("count") for r in counts}
    out = {"count_clips": 1, "count_exact_first": 0, "count_windows": 0, "count_exact_windows": 0}
    everyone: set[int] = set()
    for w in windows:
        truth = people_in(world, w)
        everyone.update(truth)
        stated = by_window.get(w.index)
        exact = stated is not None and int(stated) == len(truth)
        out["count_windows"] += 1
        out["count_exact_windows"] += exact
        if w.index == 0:
            out["count_exact_first"] += exact
    for task, key in (("count", "count_exact_video_points"), ("track", "count_exact_video_tracks")):
        row = next((r for r in video_counts if r.get("task") == task), None)
        if row is None:
            continue
        distinct = row.get("distinct_objects")
        # null distinct_objects: no answer pointed to anything; that says 0 people only if every window said 0
        if distinct is None and task == "count" and by_window and all(c == 0 for c in by_window.values()):
            distinct = 0
        if distinct is None and task == "track" and row.get("max_window_count") == 0:
            distinct = 0
        out[key.replace("count_exact", "count_videos")] = 1
        out[key] = int(distinct is not None and int(distinct) == len(everyone))
    return out


def score_points(world: World, windows: Sequence[SampledWindow], points: Sequence[Row],
                 tasks: Sequence[str] = ("count", "point")) -> dict[str, int]:
    """Precision / recall of the points of the answers to `tasks` (count, point: each answer points to every
    person of its window once), each answer against its window's people."""
    out = {"point_tp": 0, "point_pred": 0, "point_true": 0, "on_frame": 0, "timed_points": 0}
    threshold = _threshold(world)
    answers: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for p in points:
        if p["task"] in ("count", "point"):
            answers[(int(p["window_index"]), str(p["task"]))].append(p)
    for w in windows:
        truth = people_in(world, w)
        xy, vis = world.positions(w.frame_times)
        for task in tasks:
            pts = answers.get((w.index, task), [])
            out["point_true"] += len(truth)
            out["point_pred"] += len(pts)
            cost = np.full((len(pts), len(truth)), np.inf)
            for i, p in enumerate(pts):
                f = w.frame_of(float(p["t"]))
                out["timed_points"] += 1
                if f is None:
                    continue
                out["on_frame"] += 1
                for j, k in enumerate(truth):
                    if vis[k, f]:
                        cost[i, j] = np.hypot(float(p["x_px"]) - xy[k, f, 0], float(p["y_px"]) - xy[k, f, 1])
            out["point_tp"] += len(_match(cost, threshold))
    return out


def score_tracks(world: World, windows: Sequence[SampledWindow], tracks: Sequence[Row]) -> dict[str, int]:
    """One id kept per true person, and IDF1, of the stitched `tracks` rows."""
    threshold = _threshold(world)
    by_window = _by_window(tracks)
    out = {"kept": 0, "track_people": 0, "on_frame": 0, "timed_points": 0, "idtp": 0, "id_true_obs": 0,
           "id_pred_obs": 0}
    assigned: dict[int, list[int | None]] = defaultdict(list)  # person -> track id per visible frame
    # identity observations over distinct frame times: (time key) -> {person: xy}, {track id: xy}
    true_obs: dict[float, dict[int, np.ndarray]] = defaultdict(dict)
    pred_obs: dict[float, dict[int, tuple[float, float]]] = defaultdict(dict)
    for w in windows:
        xy, vis = world.positions(w.frame_times)
        at_frame: dict[int, list[Row]] = defaultdict(list)
        for r in by_window.get(w.index, []):
            f = w.frame_of(float(r["t"]))
            out["timed_points"] += 1
            if f is not None:
                out["on_frame"] += 1
                at_frame[f].append(r)
        for f, t in enumerate(w.frame_times):
            key = round(float(t), 6)
            people = [int(k) for k in np.flatnonzero(vis[:, f])] if len(vis) else []
            for k in people:
                true_obs[key][k] = xy[k, f]
            pts = at_frame.get(f, [])
            for r in pts:
                pred_obs[key].setdefault(int(r["track_id"]), (float(r["x_px"]), float(r["y_px"])))
            cost = np.full((len(pts), len(people)), np.inf)
            for i, r in enumerate(pts):
                for j, k in enumerate(people):
                    cost[i, j] = np.hypot(float(r["x_px"]) - xy[k, f, 0], float(r["y_px"]) - xy[k, f, 1])
            got = {people[j]: int(pts[i]["track_id"]) for i, j in _match(cost, threshold)}
            for k in people:
                assigned[k].append(got.get(k))
    owners: dict[int, set[int]] = defaultdict(set)
    for k, ids in assigned.items():
        for track_id in ids:
            if track_id is not None:
                owners[track_id].add(k)
    for k, ids in assigned.items():
        out["track_people"] += 1
        first_id = ids[0]
        out["kept"] += first_id is not None and all(i == first_id for i in ids) and owners[first_id] == {k}
    # IDF1: IDTP of the best one-to-one person <-> track id mapping
    people_ids = sorted({k for obs in true_obs.values() for k in obs})
    track_ids = sorted({j for obs in pred_obs.values() for j in obs})
    out["id_true_obs"] = sum(len(obs) for obs in true_obs.values())
    out["id_pred_obs"] = sum(len(obs) for obs in pred_obs.values())
    if people_ids and track_ids:
        agree = np.zeros((len(people_ids), len(track_ids)))
        p_index = {k: i for i, k in enumerate(people_ids)}
        t_index = {j: i for i, j in enumerate(track_ids)}
        for key, obs in true_obs.items():
            for j, (x, y) in pred_obs.get(key, {}).items():
                for k, c in obs.items():
                    if np.hypot(x - c[0], y - c[1]) <= threshold:
                        agree[p_index[k], t_index[j]] += 1
        rows, cols = linear_sum_assignment(-agree)
        out["idtp"] = int(agree[rows, cols].sum())
    return out


def score_clip(world: World, windows: Sequence[SampledWindow], tables: Mapping[str, Sequence[Row]],
               video_id: str, tasks: Sequence[str]) -> dict[str, int]:
    """Every tally of one clip for the task kinds asked of it (`tasks`: count, point, track), from its rows in
    `tables` (table name -> rows of any number of videos; a task that wrote nothing scores as missing)."""
    mine = {name: [r for r in rows if r.get("video_id") == video_id] for name, rows in tables.items()}
    out: dict[str, int] = defaultdict(int)
    parts = []
    if "count" in tasks:
        parts.append(score_counts(world, windows, mine.get("counts", []), mine.get("video_counts", [])))
    pointing = [t for t in tasks if t in ("count", "point")]
    if pointing:
        parts.append(score_points(world, windows, mine.get("points", []), pointing))
    if "track" in tasks:
        parts.append(score_tracks(world, windows, mine.get("tracks", [])))
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return dict(out)
