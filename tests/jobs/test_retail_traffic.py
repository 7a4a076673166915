"""The retail job's analytics end to end, without a model: scripted shoppers walk through a door line and
into a queue zone of a store camera; their tracks are written as the pipeline writes them (the real
`TableSink`, two overlapping windows per clip, one person whose stitching failed), the job's
post-processing runs, and its crossings, visits and hourly rows are compared with the script's truth.

What this does not prove: that Molmo2 tracks people well enough for these numbers. The tracks here are
hand-made (exact positions of the script); a run with the real model's tracks is future work
(docs/retail.md, "What is proven").
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs import retail_counting
from jobs.common import read_table
from jobs.layout import ClipLayout
from jobs.retail_geometry import parse_geometry
from jobs.retail_tables import TRAFFIC_MERGE_SQL
from pipeline.tables.sink import TableSink

W, H = 640, 480
STEP = 0.5  # 2 fps, as the pipeline samples
GEOMETRY = {"cameras": [{
    "store": "17", "camera": "3",
    "lines": [{"name": "entrance", "start": [0.0, 0.8], "end": [1.0, 0.8]}],  # in = above the line (walking up)
    "zones": [{"name": "queue", "polygon": [[0.1, 0.2], [0.5, 0.2], [0.5, 0.5], [0.1, 0.5]]}],
}]}
PROV = {"model_id": "handmade", "prompt": "Track the person.", "decoding": "greedy", "max_new_tokens": 64,
        "sampling_mode": "native", "num_frames": 64, "max_fps": 2.0}


# -- the script: piecewise-linear walks whose crossings and dwell are known exactly -------------------

def shopper(t0: float, queue_s: float, leave: bool = True) -> list[tuple[float, float, float]]:
    """Corners (t, x, y) of one shopper: up through the entrance (y 0.8 at t0 + 2), into the queue
    (y 0.5 at t0 + 4), stand `queue_s` s, out of the queue to the right (x 0.5 at t0 + 6 + queue_s), and,
    if `leave`, back down through the entrance (y 0.8 at t0 + 10 + queue_s)."""
    path = [(t0, 0.3, 1.0), (t0 + 3, 0.3, 0.65), (t0 + 5, 0.3, 0.35), (t0 + 5 + queue_s, 0.3, 0.35),
            (t0 + 7 + queue_s, 0.7, 0.35)]
    if leave:
        path += [(t0 + 9 + queue_s, 0.7, 0.65), (t0 + 13 + queue_s, 0.7, 0.95)]
    return path


def truth(t0: float, queue_s: float, leave: bool = True) -> dict[str, Any]:
    """What the script says: crossing times and directions, the queue visit (enter, exit)."""
    crossings = [("in", t0 + 3 * (0.2 / 0.35))]  # y 1.0 -> 0.65 over 3 s meets 0.8 after 0.2 / 0.35 of it
    if leave:
        crossings.append(("out", t0 + 9 + queue_s + 4 * (0.15 / 0.3)))
    enter = t0 + 3 + 2 * (0.15 / 0.3)  # y 0.65 -> 0.35 over 2 s meets 0.5 half way
    exit_ = t0 + 5 + queue_s + 2 * (0.2 / 0.4)  # x 0.3 -> 0.7 over 2 s meets 0.5 half way
    return {"crossings": crossings, "visit": (enter, exit_)}


def position(path: list[tuple[float, float, float]], t: float) -> tuple[float, float]:
    ts = [p[0] for p in path]
    return float(np.interp(t, ts, [p[1] for p in path])), float(np.interp(t, ts, [p[2] for p in path]))


def track_rows(vid: str, run_id: str, walkers: dict[int, list[tuple[float, float, float]]],
               windows: list[tuple[float, float]], *, renumber: dict[int, int] | None = None,
               wobble: float = 0.06) -> list[dict[str, Any]]:
    """The `tracks` rows the pipeline would write: every window samples each walker at 2 fps over the
    part of the window the walker is in view. A later window sees the first half of its overlap with the
    window before `wobble` lower (a model's window-to-window disagreement, which only the overlap
    ownership keeps out of the counts). `renumber` {track: new id}: stitching failed for that track (its
    points in windows after the first carry a new id)."""
    rows = []
    for w, (start, end) in enumerate(windows):
        handover = (start + windows[w - 1][1]) / 2 if w > 0 else start
        for track, path in walkers.items():
            t = math.ceil(max(start, path[0][0]) / STEP) * STEP
            while t <= min(end, path[-1][0]) + 1e-9:
                x, y = position(path, t)
                if t < handover:
                    y += wobble
                tid = (renumber or {}).get(track, track) if w > 0 else track
                rows.append({"video_id": vid, "query": "person", "track_id": tid, "window_index": w, "local_id": track,
                             "t": t, "x_px": x * W, "y_px": y * H, "x_norm": x, "y_norm": y,
                             "frame_matched": True, "parse_status": "ok", "run_id": run_id, **PROV})
                t += STEP
    return rows


def count_rows(vid: str, run_id: str, windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    return [{"video_id": vid, "window_index": w, "t_start": a, "t_end": b, "query": "person", "count": 1,
             "count_method": "points", "parse_status": "ok", "run_id": run_id, **PROV} for w, (a, b) in enumerate(windows)]


def video_row(vid: str, uri: str, run_id: str, duration: float, windows: int, at: datetime) -> dict[str, Any]:
    return {"video_id": vid, "uri": uri, "duration_s": duration, "windows": windows, "status": "ok",
            "tasks": "count:person,track:person", "run_id": run_id, "model_id": "handmade", "processed_at": at,
            "width": W, "height": H}


CLIP_S = 120.0
WINDOWS = [(0.0, 60.0), (58.0, 118.0), (116.0, 120.0)]  # 60 s windows overlapping by 2 s, a 120 s clip
Shoppers = dict[int, tuple[float, float, bool]]  # track -> (t0, queue seconds, leaves?)
# clip start -> (shoppers, tracks whose stitching failed). Night 1's shopper 1 crosses the entrance inside
# the first overlap (58..60) and its tracks in the two windows were not joined: the worst case there.
# Shopper 2 is still queueing when the clip ends.
NIGHT1: dict[str, tuple[Shoppers, dict[int, int]]] = {
    "2026-11-01T13:58:00Z": ({0: (10.0, 20.0, True), 1: (57.0, 30.0, True), 2: (100.0, 30.0, False)}, {1: 7}),
}
# Night 2 brings one more clip of hour 13 (the same hour over two nights) and one of hour 14.
NIGHT2: dict[str, tuple[Shoppers, dict[int, int]]] = {
    "2026-11-01T13:54:00Z": ({0: (20.0, 10.0, True)}, {}),
    "2026-11-01T14:00:00Z": ({0: (5.0, 12.0, True), 1: (30.0, 45.0, True)}, {}),
}


def expected_visit(t0: float, queue_s: float, leave: bool) -> tuple[float, float, bool]:
    """(enter, exit, cut at the clip's end) of a shopper's queue visit within the clip."""
    enter, exit_ = truth(t0, queue_s, leave)["visit"]
    return (enter, min(exit_, CLIP_S), exit_ > CLIP_S)


def write_night(out: Path, run_id: str, clips: dict[str, tuple[Shoppers, dict[int, int]]], camera: str = "3") -> None:
    sink = TableSink(str(out), run_date=f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}")
    for start, (shoppers, renumber) in clips.items():
        vid = f"{camera}-{start}"
        uri = f"s3://cams/store=17/camera={camera}/{start}.mp4"
        walkers = {k: shopper(*v) for k, v in shoppers.items()}
        sink.add_video(vid, {
            "videos": [video_row(vid, uri, run_id, CLIP_S, len(WINDOWS), datetime.now(UTC))],
            "tracks": track_rows(vid, run_id, walkers, WINDOWS, renumber=renumber),
            "counts": count_rows(vid, run_id, WINDOWS),
        })
    sink.flush()


def rows(out: Path, table: str) -> list[dict[str, Any]]:
    return read_table(str(out), table, commit_table="retail_videos").to_pylist()


def merged_hourly(out: Path) -> list[dict[str, Any]]:
    import duckdb

    con: Any = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    con.register("retail_traffic_hourly", read_table(str(out), "retail_traffic_hourly", commit_table="retail_videos"))
    return con.sql(f"SELECT * FROM ({TRAFFIC_MERGE_SQL}) ORDER BY store, camera, query, kind, name, hour").to_arrow_table().to_pylist()


def analytics() -> retail_counting.RetailAnalytics:
    return retail_counting.RetailAnalytics(parse_geometry(GEOMETRY))


def test_crossings_and_dwell_of_scripted_shoppers_match_the_truth(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    write_night(out, "20261102T010000Z-n1", NIGHT1)
    post = retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261102T020000Z-r1", analytics=analytics())
    assert post.clips == 1
    start = datetime(2026, 11, 1, 13, 58, tzinfo=UTC)
    shoppers, _ = NIGHT1["2026-11-01T13:58:00Z"]

    expected = sorted(((d, t) for v in shoppers.values() for d, t in truth(*v)["crossings"]), key=lambda e: e[1])
    found = sorted(rows(out, "retail_crossings"), key=lambda c: c["t"])
    assert [(c["direction"], c["line"]) for c in found] == [(d, "entrance") for d, _ in expected]
    for c, (_, t) in zip(found, expected, strict=True):
        assert c["t"] == pytest.approx(t, abs=1e-6)
        assert abs((c["wall_time"] - (start + timedelta(seconds=t))).total_seconds()) < 1e-3  # stored in ms
        assert (c["store"], c["camera"], c["query"]) == ("17", "3", "person")

    visits = sorted(rows(out, "retail_zone_visits"), key=lambda v: v["t_enter"])
    want = sorted(expected_visit(*v) for v in shoppers.values())
    assert [(v["zone"], v["cut_at_start"], v["cut_at_end"]) for v in visits] == [("queue", False, cut) for _, _, cut in want]
    assert want[-1][2]  # the last shopper's visit is cut at the clip's end
    for v, (enter, exit_, _) in zip(visits, want, strict=True):
        assert (v["t_enter"], v["t_exit"]) == (pytest.approx(enter, abs=1e-6), pytest.approx(exit_, abs=1e-6))
        assert v["dwell_s"] == pytest.approx(exit_ - enter, abs=1e-6)

    hourly = {(r["kind"], r["name"], r["hour"].hour): r for r in merged_hourly(out)}
    assert {h for _, _, h in hourly} == {13}  # 13:58:00 + 120 s ends at the instant 14:00:00
    door = hourly[("line", "entrance", 13)]
    assert (door["crossings_in"], door["crossings_out"], door["tracks"]) == (3, 2, 4)  # shopper 1 is 2 tracks
    queue = hourly[("zone", "queue", 13)]
    complete = [e - s for s, e, cut in want if not cut]
    assert (queue["visits"], queue["visits_cut"]) == (3, 1)
    assert queue["dwell_sum_s"] == pytest.approx(sum(complete)) and queue["dwell_max_s"] == pytest.approx(max(complete))
    assert hourly[("view", "view", 13)]["observed_s"] == pytest.approx(CLIP_S)
    occupancy = [r for r in rows(out, "retail_occupancy") if r["kind"] == "zone"]
    assert [(r["minute"].minute, r["observed_s"]) for r in occupancy] == [(58, 60.0), (59, 60.0)]


def test_without_overlap_ownership_the_overlap_would_count_twice(tmp_path: Path) -> None:
    """The check above fails without `owned_points`: shopper 1's second-window track crosses again."""
    from jobs.retail_analytics import TrackPoint, line_crossings, track_paths

    shoppers, renumber = NIGHT1["2026-11-01T13:58:00Z"]
    raw = track_rows("v", "r", {k: shopper(*v) for k, v in shoppers.items()}, WINDOWS, renumber=renumber)
    points = [TrackPoint(r["track_id"], r["window_index"], r["t"], r["x_px"], r["y_px"], r["x_norm"], r["y_norm"])
              for r in raw]
    line = parse_geometry(GEOMETRY).cameras[0].lines[0]
    every = [c for p in track_paths(points) for c in line_crossings(p, line, "normalized", 1.0)]
    assert sum(c.direction == "in" for c in every) > 3


def test_two_nights_merge_to_the_same_hours_as_one_run_over_both(tmp_path: Path) -> None:
    nightly, once = tmp_path / "nightly", tmp_path / "once"
    write_night(nightly, "20261102T010000Z-n1", NIGHT1)
    retail_counting.postprocess(str(nightly), ClipLayout.create(), run_id="20261102T020000Z-r1", analytics=analytics())
    write_night(nightly, "20261103T010000Z-n2", NIGHT2)
    post = retail_counting.postprocess(str(nightly), ClipLayout.create(), run_id="20261103T020000Z-r2", analytics=analytics())
    assert post.clips == 2 and post.already_done == 1
    write_night(once, "20261102T010000Z-n1", {**NIGHT1, **NIGHT2})
    retail_counting.postprocess(str(once), ClipLayout.create(), run_id="20261103T020000Z-r2", analytics=analytics())

    two, one = merged_hourly(nightly), merged_hourly(once)
    assert len(read_table(str(nightly), "retail_traffic_hourly", commit_table="retail_videos")) > len(two)  # hour 13 twice
    assert [{k: v for k, v in r.items() if not isinstance(v, float)} for r in two] == \
        [{k: v for k, v in r.items() if not isinstance(v, float)} for r in one]
    for a, b in zip(two, one, strict=True):
        assert {k: v for k, v in a.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in b.items() if isinstance(v, float)})
    door = {r["hour"].hour: r for r in two if (r["kind"], r["name"]) == ("line", "entrance")}
    assert (door[13]["crossings_in"], door[13]["crossings_out"], door[13]["clips"]) == (4, 3, 2)
    assert (door[14]["crossings_in"], door[14]["crossings_out"], door[14]["clips"]) == (2, 2, 1)


def test_a_camera_without_geometry_still_gets_counts_and_view_occupancy(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    write_night(out, "20261102T010000Z-n1", NIGHT1, camera="9")
    post = retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261102T020000Z-r1", analytics=analytics())
    assert post.without_geometry == {("17", "9")} and "without geometry" in post.render()
    assert rows(out, "retail_crossings") == [] and rows(out, "retail_zone_visits") == []
    assert len(rows(out, "retail_counts")) == len(WINDOWS)
    view = {r["hour"].hour: r for r in merged_hourly(out)}
    assert {(r["kind"]) for r in merged_hourly(out)} == {"view"}
    assert view[13]["tracks"] == 4 and view[13]["occupancy_max"] >= 1  # 3 shoppers, one split in two by stitching


def test_named_queries_read_the_merged_rows(tmp_path: Path) -> None:
    from pipeline.tables.reader import open_tables
    from pipeline.tools.query import run_named

    out = tmp_path / "tables"
    write_night(out, "20261102T010000Z-n1", NIGHT1)
    retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261102T020000Z-r1", analytics=analytics())
    write_night(out, "20261103T010000Z-n2", NIGHT2)
    retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261103T020000Z-r2", analytics=analytics())
    tables = open_tables(str(out))
    footfall = run_named(tables, "footfall_hourly", {}).to_pylist()
    assert [(r["line"], r["hour"].hour, r["people_in"], r["people_out"]) for r in footfall] == [
        ("entrance", 13, 4, 3), ("entrance", 14, 2, 2)]
    zones = run_named(tables, "busiest_zones", {"store": "17"}).to_pylist()
    assert [(z["zone"], z["visits"]) for z in zones] == [("queue", 6)]
    dwell = run_named(tables, "dwell_distribution", {}).to_pylist()
    complete = sorted(truth(*v)["visit"][1] - truth(*v)["visit"][0]
                      for night in (NIGHT1, NIGHT2) for shoppers, _ in night.values() for v in shoppers.values() if v[2])
    (row,) = dwell
    assert row["visits"] == len(complete) and row["max_s"] == pytest.approx(round(max(complete), 1))
    edges = [0, 10, 30, 60, 120, 300, 600, 1800]
    assert row["histogram"] == [sum(1 for d in complete if lo <= d < hi)
                                for lo, hi in zip(edges, [*edges[1:], math.inf], strict=True)]
    with_cut = run_named(tables, "dwell_distribution", {"include_cut": "true"}).to_pylist()[0]
    assert with_cut["visits"] == len(complete) + 1


def test_charts_show_the_merged_footfall_and_dwell(tmp_path: Path) -> None:
    from PIL import Image

    from jobs.retail_charts import OUT_GREY, main, series_color

    out = tmp_path / "tables"
    write_night(out, "20261102T010000Z-n1", NIGHT1)
    retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261102T020000Z-r1", analytics=analytics())
    write_night(out, "20261103T010000Z-n2", NIGHT2)
    retail_counting.postprocess(str(out), ClipLayout.create(), run_id="20261103T020000Z-r2", analytics=analytics())
    charts = tmp_path / "charts"
    assert main(["--output", str(out), "--out", str(charts)]) == 0
    footfall = json.loads((charts / "footfall-17.json").read_text())
    assert footfall["hours"] == ["2026-11-01T13:00:00+00:00", "2026-11-01T14:00:00+00:00"]
    assert footfall["in"] == {"3/entrance": [4, 2]} and footfall["out"] == [3, 2]
    image = np.asarray(Image.open(charts / "footfall-17.png").convert("RGB"))
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert series_color(0) in colors and OUT_GREY in colors  # the in bars and the out bars are drawn
    dwell = json.loads((charts / "dwell-17.json").read_text())
    complete = [truth(*v)["visit"][1] - truth(*v)["visit"][0]
                for night in (NIGHT1, NIGHT2) for shoppers, _ in night.values() for v in shoppers.values() if v[2]]
    assert sum(dwell["zones"]["3/queue"]) == len(complete)
    assert dwell["zones"]["3/queue"][1] == sum(1 for d in complete if 10 <= d < 30)
    assert main(["--output", str(out), "--out", str(tmp_path / "none"), "--store", "99"]) == 1  # nothing to draw
