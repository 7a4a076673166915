"""From model answers to table rows (pure): completeness, statuses, pixels/times, stitching."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.results.collect import (
    RowContext,
    VideoCollector,
    count_objects,
    object_keys,
    tables_for_tasks,
    video_tables,
)
from pipeline.results.tasks import build_tasks

CTX = RowContext(run_id="r1", model_id="m", max_new_tokens=64, sampling_mode="native", num_frames=64, max_fps=2.0)


def _row(window: int, t0: float, t1: float, task: str, query: str, answer: str, **kw: Any) -> dict[str, Any]:
    base = {
        "video_id": "v1", "uri": "s3://b/v1.mp4", "size_bytes": 10, "duration_s": 50.0, "fps": 30.0,
        "width": 1920, "height": 1080, "codec": "h264", "rotation": 0, "num_windows": 2,
        "window_index": window, "t_start": t0, "t_end": t1,
        "frame_times": [t0 + 0.5 * i for i in range(int((t1 - t0) * 2))],
        "decoder": "decord", "decode_status": "ok", "error_stage": None, "error_type": None, "error_message": None,
        "task": task, "query": query, "prompt": f"{task} {query}", "answer": answer, "prompt_tokens": 100,
        "generated_tokens": 10, "hit_max_new_tokens": False, "latency_s": 0.5, "frames_used": 8,
        "infer_error_type": None, "infer_error_message": None,
    }
    base.update(kw)
    return base


def test_collector_waits_for_every_window_and_task() -> None:
    c = VideoCollector(num_tasks=2)
    assert c.add(_row(1, 25, 50, "caption", "", "b")) is None
    assert c.add(_row(0, 0, 30, "caption", "", "a")) is None
    assert c.add(_row(0, 0, 30, "count", "person", "2")) is None
    done = c.add(_row(1, 25, 50, "count", "person", "1"))
    assert done is not None and [r["window_index"] for r in done] == [0, 0, 1, 1]
    assert c.in_flight == 0


def test_collector_decode_failure_midway_completes_with_emitted_windows() -> None:
    c = VideoCollector(num_tasks=1)
    err = _row(-1, 0, 0, None, None, None, num_windows=1, decode_status="failed", error_stage="decode",
               error_type="DecodeError", error_message="boom")  # type: ignore[arg-type]
    assert c.add(err) is None  # window 0 is still in flight
    done = c.add(_row(0, 0, 30, "caption", "", "a", num_windows=3))
    assert done is not None and len(done) == 2
    tables = video_tables(done, build_tasks(["caption"]), CTX)
    assert tables["videos"][0]["status"] == "partial"
    assert [(e["stage"], e["error_type"]) for e in tables["errors"]] == [("decode", "DecodeError")]


def test_failed_video_row() -> None:
    err = _row(-1, 0, 0, None, None, None, num_windows=0, decode_status="failed", error_stage="probe",
               error_type="DecodeError", error_message="no video stream", width=None, height=None)  # type: ignore[arg-type]
    done = VideoCollector(1).add(err)
    assert done is not None
    tables = video_tables(done, build_tasks(["caption"]), CTX)
    v = tables["videos"][0]
    assert v["status"] == "failed" and v["windows"] == 0 and "no video stream" in v["error_summary"]
    assert tables["errors"][0]["stage"] == "probe" and tables["captions"] == []


def test_points_in_source_pixels_and_absolute_times() -> None:
    answer = 'I see <points coords="8.5 1 255 301 2 610 288">carts</points> here'
    rows = [_row(0, 30.0, 60.0, "point", "cart", answer, num_windows=1)]
    tables = video_tables(rows, build_tasks(["point:cart"]), CTX)
    pts = tables["points"]
    assert [(p["t"], p["x_px"], p["y_px"], p["object_index"]) for p in pts] == [
        (38.5, pytest.approx(489.6), pytest.approx(325.08), 1),
        (38.5, pytest.approx(1171.2), pytest.approx(311.04), 2),
    ]
    assert all(p["frame_t"] == 38.5 and p["frame_matched"] and p["frame_dt"] == 0.0 for p in pts)
    assert all(p["parse_status"] == "ok" and p["run_id"] == "r1" and p["prompt"] == "point cart" for p in pts)


def test_rotated_portrait_uses_display_size() -> None:
    rows = [_row(0, 0.0, 10.0, "point", "cart", '<points coords="1.0 1 500 250">c</points>', num_windows=1,
                 width=1080, height=1920, rotation=90)]
    p = video_tables(rows, build_tasks(["point:cart"]), CTX)["points"][0]
    assert (p["x_px"], p["y_px"], p["t"]) == (540.0, 480.0, 1.0)


def test_point_time_matching_no_frame_is_flagged() -> None:
    rows = [_row(0, 0.0, 10.0, "point", "cart", '<points coords="3.7 1 500 500">c</points>', num_windows=1,
                 frame_times=[0.0, 2.0, 4.0])]
    p = video_tables(rows, build_tasks(["point:cart"]), CTX)["points"][0]
    assert p["frame_t"] == 4.0 and p["frame_dt"] == pytest.approx(0.3) and p["frame_matched"] is False


def test_counts_by_pointing_text_and_none() -> None:
    tasks = build_tasks(["count:person"])
    rows = [
        _row(0, 0.0, 30.0, "count", "person", 'Counting <points coords="1.0 1 100 100 2 200 200;1.5 3 300 300">person</points> gives 3.'),
        _row(1, 25.0, 50.0, "count", "person", "There are two people."),
    ]
    tables = video_tables(rows, tasks, CTX)
    c0, c1 = tables["counts"]
    assert (c0["count"], c0["count_method"], c0["parse_status"]) == (3, "points", "ok")
    assert (c1["count"], c1["count_method"], c1["parse_status"]) == (2, "text_number", "no_tags")
    vc = tables["video_counts"][0]
    assert (vc["task"], vc["query"], vc["max_window_count"], vc["windows"]) == ("count", "person", 3, 2)
    assert vc["distinct_objects"] is None  # two windows: count points cannot be joined across them


def test_unparseable_and_truncated_answers_get_a_status_not_a_crash() -> None:
    tasks = build_tasks(["count:person", "point:cart"])
    rows = [
        _row(0, 0.0, 30.0, "count", "person", '<points coords="1.0 1 100', hit_max_new_tokens=True, num_windows=1),
        _row(0, 0.0, 30.0, "point", "cart", '<points coords="1.0 1 5000 100">x</points>', num_windows=1),
    ]
    tables = video_tables(rows, tasks, CTX)
    assert tables["counts"][0]["parse_status"] == "truncated"
    assert tables["points"] == [] or all(p["parse_status"] != "ok" for p in tables["points"])
    assert tables["videos"][0]["status"] == "ok"


def test_tracks_stitched_across_overlapping_windows() -> None:
    tasks = build_tasks(["track:person"])
    # Object A moves right across the 25-30 s overlap (local id 1 in w0, 2 in w1); B appears only in w1.
    w0 = '<tracks coords="24.0 1 400 500;25.0 1 420 500;26.0 1 440 500;27.0 1 460 500">p</tracks>'
    w1 = '<tracks coords="0.0 2 420 500 1 900 100;1.0 2 440 500 1 900 110;2.0 2 460 500 1 900 120">p</tracks>'
    rows = [_row(0, 0.0, 30.0, "track", "person", w0), _row(1, 25.0, 50.0, "track", "person", w1)]
    tables = video_tables(rows, tasks, CTX)
    ids = {(r["window_index"], r["local_id"]): r["track_id"] for r in tables["tracks"]}
    assert ids[(0, 1)] == ids[(1, 2)] == 0
    assert ids[(1, 1)] == 1
    vc = tables["video_counts"][0]
    assert (vc["distinct_objects"], vc["max_window_count"]) == (2, 2)
    assert sorted({r["t"] for r in tables["tracks"] if r["track_id"] == 0}) == [24.0, 25.0, 26.0, 27.0]


def test_infer_error_rows_and_status() -> None:
    tasks = build_tasks(["caption"])
    rows = [_row(0, 0.0, 30.0, "caption", "", "", infer_error_type="MemoryError", infer_error_message="oom"),
            _row(1, 25.0, 50.0, "caption", "", "fine")]
    tables = video_tables(rows, tasks, CTX)
    assert tables["videos"][0]["status"] == "partial"
    assert [(e["stage"], e["window_index"], e["task"]) for e in tables["errors"]] == [("infer", 0, "caption")]
    assert len(tables["captions"]) == 1


def test_every_task_table_is_declared() -> None:
    tasks = build_tasks(["caption", "track:x", "ask:why?"])
    assert tables_for_tasks(tasks) == ["answers", "captions", "errors", "points", "tracks", "video_counts", "videos"]
    tables = video_tables([_row(0, 0.0, 5.0, "caption", "", "a", num_windows=1)], build_tasks(["caption"]), CTX)
    assert set(tables) == {"captions", "errors", "videos"}


# --- "distinct objects": one rule for counts, video_counts and tracks ------------------------------


def test_object_keys_rule() -> None:
    assert object_keys([]) == [] and count_objects([]) == 0
    assert object_keys([1, 2, 3]) == [1, 2, 3]
    assert object_keys([1, 1, 2]) == [1, 1, 2] and count_objects([1, 1, 2]) == 2  # an ID seen twice is one object
    assert object_keys([None, None]) == [-1, -2] and count_objects([None, None]) == 2  # no ID: its own object
    assert object_keys([0, None, 1, None]) == [0, -1, 1, -2] and count_objects([0, None, 1, None]) == 4
    assert count_objects([None, 1, 1]) == 2  # a missing ID never merges with a written one


def _one_window_count(answer: str) -> tuple[Any, Any, Any, list[Any]]:
    """(counts.count, count_method, video_counts.distinct_objects, points' object_index) of one window."""
    tables = video_tables([_row(0, 0.0, 30.0, "count", "person", answer, num_windows=1)],
                          build_tasks(["count:person"]), CTX)
    (c,) = tables["counts"]
    (vc,) = tables["video_counts"]
    assert vc["max_window_count"] == c["count"]
    return c["count"], c["count_method"], vc["distinct_objects"], [p["object_index"] for p in tables["points"]]


@pytest.mark.parametrize(
    ("answer", "count", "object_index"),
    [
        # IDs: three objects, one of them seen in two frames.
        ('<points coords="1.0 1 100 100 2 200 200;1.5 1 110 100 3 300 300">p</points>', 3, [1, 2, 1, 3]),
        # Missing IDs (X Y pairs; the parser reads this answer with status "ok"): two points, two objects.
        ('<points coords="8.5 255 301 610 288">p</points>', 2, [None, None]),
        # Duplicate IDs in one frame: the model says they are the same object.
        ('<points coords="1.0 7 100 100 7 120 120">p</points>', 1, [7, 7]),
        # Mixed: one object with an ID, then two without (another tag): three objects.
        ('<points coords="1.0 1 100 100">a</points> and <points coords="1.0 100 100 200 200">b</points>', 3,
         [1, None, None]),
    ],
)
def test_counts_and_video_counts_agree_on_distinct_objects(answer: str, count: int, object_index: list[Any]) -> None:
    assert _one_window_count(answer) == (count, "points", count, object_index)


def test_id_less_points_are_stitched_across_windows_like_any_other() -> None:
    # Window 0 (0-30 s) and window 1 (25-50 s) both track, without IDs, an object at (500, 500) in the
    # overlap, and window 1 also a second object far from it: 2 objects in the video, not 3 and not 1.
    rows = [
        _row(0, 0.0, 30.0, "track", "person", '<tracks coords="26.0 500 500">p</tracks>'),
        _row(1, 25.0, 50.0, "track", "person", '<tracks coords="1.0 500 500 100 900">p</tracks>'),
    ]
    tables = video_tables(rows, build_tasks(["track:person"]), CTX)
    (vc,) = tables["video_counts"]
    assert (vc["distinct_objects"], vc["max_window_count"]) == (2, 2)


def test_a_count_over_several_windows_has_no_video_wide_distinct_count() -> None:
    # The same person, pointed once per window at a frame of each window's choosing (Molmo2's counting):
    # nothing joins the two points, so the video-wide number is unknown, not 2; each window's count stays.
    rows = [
        _row(0, 0.0, 30.0, "count", "person", '<points coords="3.0 1 500 500">people</points>'),
        _row(1, 25.0, 50.0, "count", "person", '<points coords="0.0 1 520 500">people</points>'),
    ]
    tables = video_tables(rows, build_tasks(["count:person"]), CTX)
    assert [c["count"] for c in tables["counts"]] == [1, 1]
    (vc,) = tables["video_counts"]
    assert (vc["distinct_objects"], vc["max_window_count"], vc["windows"]) == (None, 1, 2)


def test_id_less_track_points_are_tracks_of_their_own() -> None:
    rows = [_row(0, 0.0, 10.0, "track", "person", '<tracks coords="1.0 100 100 900 900;2.0 3 500 500">p</tracks>',
                 num_windows=1)]
    tables = video_tables(rows, build_tasks(["track:person"]), CTX)
    got = sorted((r["local_id"] is None, r["x_px"]) for r in tables["tracks"])
    assert got == [(False, 960.0), (True, 192.0), (True, 1728.0)]
    assert len({r["track_id"] for r in tables["tracks"]}) == 3
    (vc,) = tables["video_counts"]
    assert (vc["distinct_objects"], vc["max_window_count"]) == (3, 3)


def test_point_rows_carry_normalised_and_pixel_coordinates_separately() -> None:
    # x and y differ (and width != height), so a coordinate computed from the other axis shows.
    rows = [_row(0, 12.0, 22.0, "point", "cart", '<points coords="2.0 4 250 800">c</points>', num_windows=1,
                 width=640, height=360)]
    (p,) = video_tables(rows, build_tasks(["point:cart"]), CTX)["points"]
    assert (p["x_norm"], p["y_norm"]) == (0.25, 0.8)
    assert (p["x_px"], p["y_px"]) == (160.0, 288.0)
    assert (p["t"], p["t_start"], p["window_index"], p["object_index"]) == (14.0, 12.0, 0, 4)


def test_a_video_no_window_pointed_in_has_no_distinct_objects_not_zero() -> None:
    tasks = build_tasks(["count:person", "track:person"])
    rows = [
        _row(0, 0.0, 30.0, "count", "person", "There are two people."),
        _row(0, 0.0, 30.0, "track", "person", "Nobody moves."),
        _row(1, 25.0, 50.0, "count", "person", "I see 3."),
        _row(1, 25.0, 50.0, "track", "person", "Nobody."),
    ]
    tables = video_tables(rows, tasks, CTX)
    assert [(c["count"], c["count_method"], c["parse_status"]) for c in tables["counts"]] == [
        (2, "text_number", "no_tags"), (3, "text_number", "no_tags")]
    got = sorted((vc["task"], vc["distinct_objects"], vc["max_window_count"], vc["windows"]) for vc in tables["video_counts"])
    assert got == [("count", None, 3, 2), ("track", None, 0, 2)]
    assert tables["points"] == [] and tables["tracks"] == []


@pytest.mark.parametrize(
    ("changes", "status", "errors"),
    [
        ({}, "ok", []),
        # A window decoded only in part: its answers are kept, the video is partial, one decode error row.
        ({1: {"decode_status": "partial", "error_type": "PartialDecode", "error_message": "bad packets"}},
         "partial", [("decode", "PartialDecode", 1, None)]),
        ({0: {"infer_error_type": "OutOfMemoryError", "infer_error_message": "oom"}},
         "partial", [("infer", "OutOfMemoryError", 0, "caption")]),
        # Every answer failed: nothing was learnt about the video.
        ({0: {"infer_error_type": "RuntimeError", "infer_error_message": "x"},
          1: {"infer_error_type": "RuntimeError", "infer_error_message": "y"}},
         "failed", [("infer", "RuntimeError", 0, "caption"), ("infer", "RuntimeError", 1, "caption")]),
    ],
)
def test_video_status_from_its_windows(changes: dict[int, dict[str, Any]], status: str,
                                       errors: list[tuple[Any, ...]]) -> None:
    rows = [_row(w, t0, t1, "caption", "", f"caption {w}", **changes.get(w, {}))
            for w, (t0, t1) in enumerate([(0.0, 30.0), (25.0, 50.0)])]
    tables = video_tables(rows, build_tasks(["caption"]), CTX)
    assert tables["videos"][0]["status"] == status
    assert [(e["stage"], e["error_type"], e["window_index"], e["task"]) for e in tables["errors"]] == errors
