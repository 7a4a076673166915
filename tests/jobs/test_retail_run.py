"""The retail job for real, with the tiny random Molmo2 on a local Ray: clips in the store/camera layout,
one camera with a door line and a zone, one without geometry, tracking sampled at its own rate.

What it proves: the job runs count and track tasks (tracks at 2 fps, counts at 1 fps: two clips of each
window, answered and written with their own rates), and a camera whose tracks are empty gets zero
crossings, zero visits and zero occupancy for every hour and minute it covers, next to its counts. What it
does not prove: crossings or dwell from real model tracks (the tiny model's weights are random, so it
writes no tracks; `test_retail_traffic.py` checks the analytics on hand-made tracks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs import retail_counting
from jobs.common import read_table
from pipeline.devtools.samples import SampleSpec, write_video

pytestmark = pytest.mark.integration

GEOMETRY = """\
cameras:
  - store: "17"
    camera: "3"
    lines: [{name: door, start: [0.0, 0.6], end: [1.0, 0.6]}]
    zones: [{name: queue, polygon: [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]]}]
"""


def test_retail_job_with_the_tiny_model(ray_local: None, tiny_model_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    videos, out, charts = tmp_path / "videos", tmp_path / "tables", tmp_path / "charts"
    write_video(videos / "store=17/camera=3/2026-11-01T13:59:58Z.mp4", SampleSpec("a", seconds=4.0, fps=6, width=128, height=96, seed=1))
    write_video(videos / "store=17/camera=4/2026-11-01T14:05:00Z.mp4", SampleSpec("b", seconds=2.0, fps=6, width=128, height=96, seed=2))
    geometry = tmp_path / "cameras.yaml"
    geometry.write_text(GEOMETRY)
    code = retail_counting.main([
        "--input", str(videos), "--output", str(out), "--model", str(tiny_model_dir), "--geometry", str(geometry),
        "--queries", "person", "--track-queries", "person", "--window-s", "2", "--overlap-s", "0.5",
        "--num-frames", "2", "--max-fps", "1", "--task-max-fps", "track=2", "--task-num-frames", "track=4",
        "--max-new-tokens", "8", "--batch-size", "4", "--progress", "off", "--charts-dir", str(charts),
        "--run-id", "20261102T010000Z-tiny",
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "2 clip(s) added" in printed and "without geometry (in-view occupancy only): store=17/camera=4" in printed

    def rows(table: str, commit: str = "retail_videos") -> list[dict[str, Any]]:
        return read_table(str(out), table, commit_table=commit).to_pylist()

    # The premise: random weights and 8 new tokens write no complete <tracks> answer.
    assert rows("tracks", "videos") == [], "the tiny model wrote tracks: this test's premise no longer holds"
    assert {v["tasks"] for v in rows("videos", "videos")} == {"count:person,track:person"}
    # Each window was asked twice, at two rates: counts from its 1 fps clip, tracks from its 2 fps clip.
    counts = rows("retail_counts")
    assert {c["camera"] for c in counts} == {"3", "4"} and len(counts) == 3 + 1  # 4 s and 2 s clips, 2 s windows
    assert all((c["max_fps"], c["num_frames"]) == (1.0, 2) and 1 <= c["frames_used"] <= 2 for c in counts)
    tracked = [r for r in rows("video_counts", "videos") if r["task"] == "track"]
    assert len(tracked) == 2 and all((r["max_fps"], r["num_frames"]) == (2.0, 4) for r in tracked)

    assert rows("retail_crossings") == [] and rows("retail_zone_visits") == []
    hourly = {(r["camera"], r["kind"], r["name"], r["hour"].hour): r for r in rows("retail_traffic_hourly")}
    assert set(hourly) == {("3", kind, name, h) for kind, name in (("line", "door"), ("zone", "queue"), ("view", "view"))
                           for h in (13, 14)} | {("4", "view", "view", 14)}
    for h in (13, 14):
        door = hourly[("3", "line", "door", h)]
        assert (door["crossings_in"], door["crossings_out"], door["tracks"]) == (0, 0, 0)
        queue = hourly[("3", "zone", "queue", h)]
        assert (queue["visits"], queue["person_seconds"], queue["occupancy_max"]) == (0, 0.0, 0)
    assert hourly[("3", "view", "view", 13)]["observed_s"] == pytest.approx(2.0)  # 13:59:58 .. 14:00:00
    occupancy = rows("retail_occupancy")
    assert {(r["camera"], r["kind"]) for r in occupancy} == {("3", "view"), ("3", "zone"), ("4", "view")}
    assert all(r["person_seconds"] == 0 and r["max_present"] == 0 for r in occupancy)
    assert sorted(p.name for p in charts.glob("*.png")) == ["dwell-17.png", "footfall-17.png"]
