"""The jobs without Ray: clip layouts, the retail post-processing over pipeline tables, and the jobs'
command lines (every option documented, YAML + flags, exit codes). The runs themselves are in
tests/jobs/test_jobs_s3.py."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobs import nightly_captions, retail_counting
from jobs.common import build_parser, latest_videos, read_table
from jobs.layout import ClipLayout, LayoutError, parse_clip_start, template_to_regex
from pipeline.config import SECTIONS, VIDEO_GLOBS
from pipeline.source.listing import list_videos
from pipeline.tables.sink import TableSink
from tests.handmade_tables import video_row

REPO = Path(__file__).resolve().parents[2]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- layout -----------------------------------------------------------------------------------------


def test_layout_template_and_clip_times() -> None:
    layout = ClipLayout.create()
    key = layout.parse("s3://bucket/any/prefix/store=17/camera=3/2026-11-01T13:45:00Z.mp4")
    assert key is not None and (key.store, key.camera, key.clip_start) == ("17", "3", ts("2026-11-01T13:45:00+00:00"))
    assert layout.parse("s3://bucket/store=17/2026-11-01T13:45:00Z.mp4") is None  # no camera
    assert layout.parse("s3://bucket/store=17/camera=3/not-a-time.mp4") is None
    assert layout.parse("s3://bucket/store=17/camera=3/2026-11-01T13:45:00Z.mkv") is None
    for text in ("2026-11-01T13:45:00Z", "20261101T134500Z", "2026-11-01T13-45-00Z", "2026-11-01T14:45:00+01:00",
                 "2026-11-01T14-45-00+0100"):
        assert parse_clip_start(text) == ts("2026-11-01T13:45:00+00:00"), text
    berlin = ClipLayout.create(naive_timezone="Europe/Berlin")
    naive = berlin.parse("store=1/camera=2/2026-11-01T14:45:00.mp4")
    assert naive is not None and naive.clip_start == ts("2026-11-01T13:45:00+00:00")  # CET = UTC+1
    custom = ClipLayout.create(template="{store}/cam{camera}/*/{clip_start}.mkv")
    key = custom.parse("s3://b/s9/cam04/day/2026-11-01T00:00:00Z.mkv")
    assert key is not None and (key.store, key.camera) == ("s9", "04")
    assert template_to_regex("store={store}/x.mp4") == r"(?:^|/)store=(?P<store>[^/]+?)/x\.mp4$"


def test_layout_regex_and_errors() -> None:
    layout = ClipLayout.create(regex=r"(?P<store>\w+)_(?P<camera>\d+)_(?P<clip_start>\d{8}T\d{6}Z)\.mp4$")
    key = layout.parse("s3://b/flat/berlin_2_20261101T134500Z.mp4")
    assert key is not None and (key.store, key.camera, key.clip_start.hour) == ("berlin", "2", 13)
    with pytest.raises(LayoutError, match="camera"):
        ClipLayout.create(template="store={store}/{clip_start}.mp4")
    with pytest.raises(LayoutError, match="compile"):
        ClipLayout.create(regex="(?P<store>")
    with pytest.raises(LayoutError, match="time zone"):
        ClipLayout.create(naive_timezone="Mars/Olympus")


# -- retail post-processing -------------------------------------------------------------------------

PROV = {"model_id": "tiny", "prompt": "How many?", "decoding": "greedy", "max_new_tokens": 8,
        "sampling_mode": "native", "num_frames": 4, "max_fps": 2.0}


def _video(vid: str, uri: str, run_id: str, status: str, duration: float, windows: int, at: str) -> dict[str, Any]:
    return {"video_id": vid, "uri": uri, "duration_s": duration, "windows": windows, "status": status,
            "run_id": run_id, "model_id": "tiny", "processed_at": ts(at)}


def _count(vid: str, w: int, length: float, query: str, count: int | None, run_id: str) -> dict[str, Any]:
    return {"video_id": vid, "window_index": w, "t_start": w * length, "t_end": (w + 1) * length, "query": query,
            "count": count, "count_method": "points" if count is not None else "none", "parse_status": "ok",
            "run_id": run_id, **PROV}


def _point(vid: str, t: float, run_id: str) -> dict[str, Any]:
    return {"video_id": vid, "window_index": 0, "t_start": 0.0, "t_end": 60.0, "task": "count", "query": "person",
            "object_index": 0, "t": t, "x_px": 1.0, "y_px": 2.0, "x_norm": 0.1, "y_norm": 0.2,
            "parse_status": "ok", "run_id": run_id, **PROV}


def _vc(vid: str, query: str, n: int, run_id: str) -> dict[str, Any]:
    return {"video_id": vid, "query": query, "task": "count", "distinct_objects": n, "max_window_count": n,
            "windows": 1, "run_id": run_id, **PROV}


def _night(out: Path, run_id: str, videos: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]) -> None:
    sink = TableSink(str(out), run_date=f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}")
    for video, rows in videos:
        sink.add_video(video["video_id"], {"videos": [video], **rows})
    sink.flush()


def _hourly_merged(out: Path) -> dict[tuple[str, str, str, int], tuple[int, int, int | None, int | None, int]]:
    con: Any = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    con.register("retail_hourly", read_table(str(out), "retail_hourly", commit_table="retail_videos"))
    rows = con.sql(
        "SELECT store, camera, query, hour, sum(windows), sum(counted_windows), sum(count_sum), max(count_max), "
        "sum(videos) FROM retail_hourly GROUP BY ALL"
    ).fetchall()
    return {(r[0], r[1], r[2], r[3].hour): tuple(int(x) if x is not None else None for x in r[4:]) for r in rows}


def test_retail_postprocess_adds_keys_wall_times_and_hourly_rollup(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    a, b = "20261101T000000Z-a", "20261102T000000Z-b"
    base = "s3://cams/store=17/camera=3/"
    clip1 = _video("c1", base + "2026-11-01T13:45:00Z.mp4", a, "ok", 120.0, 2, "2026-11-01T01:00:00+00:00")
    clip2 = _video("c2", base + "2026-11-01T13:59:30Z.mp4", a, "partial", 60.0, 1, "2026-11-01T01:00:01+00:00")
    clip3 = _video("c3", "s3://cams/store=17/camera=4/20261101T140000Z.mp4", a, "ok", 60.0, 1, "2026-11-01T01:00:02+00:00")
    broken = _video("c4", base + "2026-11-01T13:00:00Z.mp4", a, "failed", None, 0, "2026-11-01T01:00:03+00:00")  # type: ignore[arg-type]
    stray = _video("x1", "s3://cams/elsewhere/clip.mp4", a, "ok", 60.0, 1, "2026-11-01T01:00:04+00:00")
    _night(out, a, [
        (clip1, {"counts": [_count("c1", 0, 60, "person", 2, a), _count("c1", 1, 60, "person", 3, a),
                            _count("c1", 0, 60, "cart", 1, a), _count("c1", 1, 60, "cart", None, a)],
                 "points": [_point("c1", 10.0, a), _point("c1", 20.5, a)],
                 "video_counts": [_vc("c1", "person", 3, a)]}),
        (clip2, {"counts": [_count("c2", 0, 60, "person", 4, a), _count("c2", 0, 60, "cart", 0, a)]}),
        (clip3, {"counts": [_count("c3", 0, 60, "person", 1, a)]}),
        (broken, {"errors": [{"video_id": "c4", "stage": "decode", "error_type": "Broken", "run_id": a}]}),
        (stray, {"counts": [_count("x1", 0, 60, "person", 9, a)]}),
    ])
    layout = ClipLayout.create()
    messages: list[str] = []
    post = retail_counting.postprocess(str(out), layout, run_id=a, echo=messages.append)
    assert post.clips == 3 and post.not_matching == ["s3://cams/elsewhere/clip.mp4"]
    assert (out / "retail_hourly" / "run_date=2026-11-01").is_dir()

    def rows(table: str) -> list[dict[str, Any]]:
        return read_table(str(out), table, commit_table="retail_videos").to_pylist()

    videos = {v["video_id"]: v for v in rows("retail_videos")}
    assert set(videos) == {"c1", "c2", "c3"}
    assert videos["c1"]["clip_end"] == ts("2026-11-01T13:47:00+00:00") and videos["c2"]["status"] == "partial"
    assert videos["c1"]["source_run_id"] == a and videos["c1"]["run_id"] == a
    counts = {(c["video_id"], c["query"], c["window_index"]): c for c in rows("retail_counts")}
    assert len(counts) == 7
    c = counts[("c1", "person", 1)]
    assert (c["store"], c["camera"], c["count"]) == ("17", "3", 3)
    assert (c["wall_start"], c["wall_end"]) == (ts("2026-11-01T13:46:00+00:00"), ts("2026-11-01T13:47:00+00:00"))
    assert c["prompt"] == "How many?" and c["model_id"] == "tiny"  # the pipeline's provenance is kept
    points = sorted(p["wall_time"] for p in rows("retail_points"))
    assert points == [ts("2026-11-01T13:45:10+00:00"), ts("2026-11-01T13:45:20.500000+00:00")]
    vc = rows("retail_video_counts")
    assert [(r["video_id"], r["store"], r["clip_end"]) for r in vc] == [("c1", "17", ts("2026-11-01T13:47:00+00:00"))]
    hourly = _hourly_merged(out)
    assert hourly == {
        ("17", "3", "person", 13): (3, 3, 9, 4, 2),  # windows, counted, sum, max, videos
        ("17", "3", "cart", 13): (3, 2, 1, 1, 2),
        ("17", "4", "person", 14): (1, 1, 1, 1, 1),
    }

    # Idempotent: nothing new, nothing written.
    files = sorted(p for p in out.rglob("*.parquet"))
    assert retail_counting.postprocess(str(out), layout, run_id=a).clips == 0
    assert sorted(p for p in out.rglob("*.parquet")) == files

    # Next night: a new clip in the same hour, and the failed clip retried successfully. Only the new
    # run's rows of the retried clip are used; the hour gets a second, mergeable rollup row.
    clip5 = _video("c5", base + "2026-11-01T13:30:00Z.mp4", b, "ok", 60.0, 1, "2026-11-02T01:00:00+00:00")
    retried = {**broken, "run_id": b, "status": "ok", "duration_s": 60.0, "windows": 1,
               "processed_at": ts("2026-11-02T01:00:01+00:00")}
    _night(out, b, [
        (clip5, {"counts": [_count("c5", 0, 60, "person", 5, b)]}),
        (retried, {"counts": [_count("c4", 0, 60, "person", 6, b)]}),
    ])
    post = retail_counting.postprocess(str(out), layout, run_id=b)
    assert post.clips == 2 and post.already_done == 3
    assert (out / "retail_hourly" / "run_date=2026-11-02").is_dir()
    assert _hourly_merged(out)[("17", "3", "person", 13)] == (5, 5, 20, 6, 4)
    assert {v["video_id"]: v["source_run_id"] for v in rows("retail_videos")}["c4"] == b
    # The retried clip's history stays in the pipeline's tables; its latest row is the current state.
    latest = {v["video_id"]: v["status"] for v in latest_videos(str(out)).to_pylist()}
    assert latest["c4"] == "ok"
    assert sorted(v["status"] for v in read_table(str(out), "videos").to_pylist() if v["video_id"] == "c4") == ["failed", "ok"]


# -- command lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [nightly_captions, retail_counting])
def test_every_job_option_has_help(module: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in module.OPTIONS:
        assert opt.flag in text
    for model in SECTIONS.values():
        for name in model.model_fields:
            assert "--" + name.replace("_", "-") in text
    parser = build_parser("x", "x", module.SECTION, module.OPTIONS)
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, action.option_strings


def test_nightly_config_yaml_flags_and_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, config, job = nightly_captions.build(["--config", str(REPO / "jobs/configs/nightly_captions.yaml")])
    assert config.tasks.tasks == ["caption", "count:person"] and config.output.retry_statuses == ["failed"]
    assert config.source.input == "s3://my-videos/incoming/" and job["extra_tasks"] == ["count:person"]
    yaml_file = tmp_path / "n.yaml"
    yaml_file.write_text("source: {input: /v}\noutput: {output: /o}\nnightly: {extra_tasks: ['point:cart']}\n")
    _, config, _ = nightly_captions.build(
        ["--config", str(yaml_file), "--extra-tasks", "count:person,caption", "--retry-statuses", "failed,partial"]
    )
    assert config.tasks.tasks == ["caption", "count:person"]  # flags override the YAML section
    assert config.output.retry_statuses == ["failed", "partial"]
    _, config, _ = nightly_captions.build(["--input", "/v", "--output", "/o", "--retry-statuses", ""])
    assert config.output.retry_statuses == []  # retrying can be switched off
    assert nightly_captions.main(["--input", "/v", "--output", "/o", "--print-config"]) == 0
    assert "retry_statuses:\n  - failed" in capsys.readouterr().out

    yaml_file.write_text("nightly: {extra_task: ['x']}\n")
    assert nightly_captions.main(["--config", str(yaml_file)]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert nightly_captions.main(["--extra-tasks", "summarize", "--input", "/v", "--output", "/o"]) == 2
    assert nightly_captions.main(["--output", "/o"]) == 2  # no input
    assert "no input" in capsys.readouterr().err


def test_retail_config_yaml_flags_and_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, config, job, layout = retail_counting.build(["--config", str(REPO / "jobs/configs/retail_counting.yaml")])
    assert config.tasks.tasks == ["count:person", "count:shopping cart", "track:person"]
    assert (config.window.window_s, config.window.overlap_s) == (30.0, 2.0)
    assert (config.tasks.task_max_fps, config.tasks.task_num_frames) == ({"track": 8.0}, {"track": 240})
    assert layout.parse("s3://my-store-cameras/store=1/camera=2/2026-11-01T13:45:00Z.mp4") is not None
    geometry = retail_counting.analytics_of(job).geometry.for_camera("17", "3")
    assert geometry is not None and [z.name for z in geometry.zones] == ["checkout_queue", "promo_shelf"]
    _, config, job, _ = retail_counting.build(["--input", "/v", "--output", "/o", "--queries", "cart",
                                               "--window-s", "20", "--track-queries", ""])
    assert config.tasks.tasks == ["count:cart"] and job["queries"] == ["cart"] and job["track_queries"] == []
    assert (config.window.window_s, config.window.overlap_s) == (20.0, 0.0)  # no overlap unless asked or tracking
    _, config, job, _ = retail_counting.build(["--input", "/v", "--output", "/o", "--queries", "cart"])
    assert config.tasks.tasks == ["count:cart", "track:person"] and config.window.overlap_s == 2.0
    _, config, _, _ = retail_counting.build(["--input", "/v", "--output", "/o", "--window-s", "2"])
    assert config.window.overlap_s == 0.5  # a quarter of a short window
    assert retail_counting.main(["--input", "/v", "--output", "/o", "--layout", "{store}/{clip_start}.mp4"]) == 2
    assert "camera" in capsys.readouterr().err
    # --postprocess-only needs no input and no model.
    out = tmp_path / "empty"
    out.mkdir()
    assert retail_counting.main(["--output", str(out), "--postprocess-only", "--run-id", "20261101T000000Z-x"]) == 0
    assert "0 clip(s) added" in capsys.readouterr().out


def test_retail_bad_geometry_exits_2_in_one_line_before_any_model_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pipeline ran despite bad geometry")

    monkeypatch.setattr(retail_counting, "run_pipeline", no_model_work)
    bad = tmp_path / "cameras.yaml"
    bad.write_text("cameras:\n  - {store: 1, camera: 2, zones: [{name: q, polygon: [[0, 0], [1, 1]]}]}\n")
    for argv, says in ((["--geometry", str(bad)], "cameras.yaml.cameras[0].zones[0].polygon: List should have at least 3"),
                       (["--geometry", str(tmp_path / "missing.yaml")], "missing.yaml does not exist")):
        assert retail_counting.main(["--input", "/v", "--output", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("configuration error: ") and err.count("\n") == 1 and says in err, err
    yaml_file = tmp_path / "retail.yaml"
    yaml_file.write_text("retail:\n  geometry:\n    cameras:\n      - {store: 1, camera: 2, lines: "
                         "[{name: door, start: [0.5, 0.5], end: [0.5, 0.5]}]}\n")
    assert retail_counting.main(["--config", str(yaml_file), "--input", "/v", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "retail.geometry.cameras[0].lines[0]: line 'door': start and end are the same point" in err
    assert err.count("\n") == 1
    # Also with --postprocess-only and --print-config: nothing runs on bad geometry.
    assert retail_counting.main(["--config", str(yaml_file), "--output", str(tmp_path / "o"), "--postprocess-only"]) == 2
    assert retail_counting.main(["--config", str(yaml_file), "--print-config"]) == 2
    assert not (tmp_path / "o").exists()


def test_retail_per_task_rate_is_checked_against_the_frame_budget(capsys: pytest.CaptureFixture[str]) -> None:
    # 8 fps over 30 s windows needs 240 frames: the run's 64 would quietly lower the rate.
    argv = ["--input", "/v", "--output", "/o", "--window-s", "30", "--task-max-fps", "track=8"]
    assert retail_counting.main(argv) == 2
    assert "track:person: 8 fps over a 30 s window needs 240 frames, above its budget of 64" in capsys.readouterr().err
    assert retail_counting.main([*argv, "--task-num-frames", "track=500"]) == 2  # 500 x 81 tokens: over the context
    assert "num_frames=500" in capsys.readouterr().err


# -- what a night processes: new, changed and failed videos; never the done ones (no Ray, no model) ------


def _nightly_todo(tmp_path: Path, *extra: str) -> tuple[set[str], int, int]:
    """The nightly job's config (its defaults, then `extra` flags) through the driver's done-work step and
    the listing's decision (`results.work.decide_work`, what each streamed batch runs): (the names of the
    videos it would process, videos retried, videos skipped). No Ray, no model."""
    from pipeline.results.work import decide_work
    from pipeline.run.driver import RunDriver

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "molmo2"}')  # the driver reads its geometry only
    _, config, _ = nightly_captions.build(["--input", str(tmp_path / "videos"), "--output", str(tmp_path / "out"),
                                           "--model", str(model), "--progress", "off", *extra])
    driver = RunDriver(config, echo=lambda _m: None)
    lookup = driver.done_lookup(TableSink(str(tmp_path / "out"), run_date="2026-01-03"))
    refs = list_videos(str(tmp_path / "videos"), include=VIDEO_GLOBS)
    listed = {r.video_id: Path(r.uri).name for r in refs}
    done, committed = lookup.work_done([r.video_id for r in refs], [r.uri for r in refs])
    decision = decide_work(listed, done, driver.work_keys, committed)
    return {listed[v] for v in decision.todo}, decision.retried, decision.skipped


def test_nightly_retries_failed_videos_and_skips_done_ones(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    names = ["new.mp4", "ok.mp4", "partial.mp4", "failed.mp4", "failed_then_ok.mp4", "failed_twice.mp4"]
    for name in names:
        (videos / name).write_bytes(name.encode())
    ids = {Path(r.uri).name: r.video_id for r in list_videos(str(videos), include=VIDEO_GLOBS)}
    history = [  # earlier nights: one part each
        {"ok.mp4": "ok", "partial.mp4": "partial", "failed.mp4": "failed", "failed_then_ok.mp4": "failed",
         "failed_twice.mp4": "failed"},
        {"failed_then_ok.mp4": "ok", "failed_twice.mp4": "failed"},
    ]
    for night, statuses in enumerate(history):
        sink = TableSink(str(tmp_path / "out"), run_date=f"2026-01-0{night + 1}")
        for name, status in statuses.items():
            # Rows as a run of this model asking `caption` wrote them (no work keys: the older layout, whose
            # `tasks` and `model_id` stand for the work done).
            row = {**video_row(ids[name], str(videos / name), status=status), "model_id": str(tmp_path / "model")}
            sink.add_video(ids[name], {"videos": [row]})
        sink.flush()

    # Default: failed videos are retried (every committed row failed); ok and partial ones are done.
    assert _nightly_todo(tmp_path) == ({"new.mp4", "failed.mp4", "failed_twice.mp4"}, 2, 3)
    assert _nightly_todo(tmp_path, "--retry-statuses", "failed,partial") == (
        {"new.mp4", "failed.mp4", "failed_twice.mp4", "partial.mp4"}, 3, 2)
    assert _nightly_todo(tmp_path, "--retry-statuses", "") == ({"new.mp4"}, 0, 5)  # retrying switched off
