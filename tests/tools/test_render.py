"""`render`: markers drawn where the tables put them, on upright frames decoded at display size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.devtools.samples import SampleSpec, render_frame, write_video
from pipeline.tools.render import color_for, decode_frames_at
from tests.handmade_tables import point_row, track_row, video_row, write_tables

# A portrait phone clip: coded 160x96, rotation 90 -> displayed 96 wide, 160 high.
SPEC = SampleSpec("phone", seconds=3.0, fps=10, width=160, height=96, seed=5, rotation=90)
DISPLAY_W, DISPLAY_H = 96, 160


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("render") / "phone.mp4", SPEC)


def test_decode_frames_at_display_size_upright(video: Path) -> None:
    frames = decode_frames_at(str(video), [0.0, 1.04, 2.5, 99.0])
    assert [(f.frame_t, f.index) for f in frames] == [(0.0, 0), (1.0, 10), (2.5, 25), (pytest.approx(2.9), 29)]
    for f in frames:
        assert f.image.shape == (DISPLAY_H, DISPLAY_W, 3)
        upright = np.rot90(render_frame(SPEC, f.index), k=1)  # rotation 90 = turn counter-clockwise
        wrong = np.rot90(render_frame(SPEC, f.index), k=-1)
        err = np.abs(f.image.astype(int) - upright).mean()
        assert err < 15, err  # lossy H.264 only
        assert np.abs(f.image.astype(int) - wrong).mean() > 3 * err


def test_render_draws_markers_at_their_pixels(video: Path, tmp_path: Path) -> None:
    vid = "d4" * 10
    tracks = [  # two people, known positions at 0.5 s, 1.0 s, 1.5 s
        *(track_row(vid, "person", 1, t, x, y, DISPLAY_W, DISPLAY_H)
          for t, x, y in ((0.5, 20.0, 30.0), (1.0, 30.0, 50.0), (1.5, 40.0, 70.0))),
        *(track_row(vid, "person", 2, t, x, y, DISPLAY_W, DISPLAY_H)
          for t, x, y in ((0.5, 70.0, 120.0), (1.0, 60.0, 110.0))),
    ]
    points = [point_row(vid, "cart", 0, 2.0, 48.0, 80.0, DISPLAY_W, DISPLAY_H)]
    out = tmp_path / "tables"
    write_tables(out, {"videos": [video_row(vid, str(video), width=DISPLAY_W, height=DISPLAY_H, rotation=90)],
                       "tracks": tracks, "points": points})

    from pipeline.cli import main

    sheet_dir = tmp_path / "render"
    # --width above the display width: frames are drawn 1:1, so table pixels are sheet pixels.
    assert main(["render", "--output", str(out), "--video", "phone", "--out", str(sheet_dir), "--width", "200"]) == 0
    png = next(sheet_dir.glob("phone-*.png"))
    layout = json.loads(png.with_suffix(".json").read_text())
    sheet = np.asarray(Image.open(png).convert("RGB"))
    assert layout["scale"] == 1.0 and (layout["display_width"], layout["display_height"]) == (DISPLAY_W, DISPLAY_H)
    cells = {c["t"]: c for c in layout["cells"]}
    assert sorted(cells) == [0.5, 1.0, 1.5, 2.0]

    colors = {1: color_for(0), 2: color_for(1)}  # one colour per track, in (query, track_id) order
    assert colors[1] != colors[2]
    for r in tracks:
        cell = cells[r["t"]]
        x, y = cell["x"] + round(r["x_px"]), cell["y"] + round(r["y_px"])
        assert tuple(sheet[y, x]) == colors[r["track_id"]], (r["t"], r["track_id"])
        assert tuple(sheet[y, x + 3]) == colors[r["track_id"]]  # a filled marker, not a dot
    cart = cells[2.0]
    cart_color = tuple(sheet[cart["y"] + 80, cart["x"] + 48])
    assert cart_color == color_for(2) and cart_color not in colors.values()
    # Nothing is drawn where no marker is: the frame there is the video's own pixels.
    cell = cells[0.5]
    frame = decode_frames_at(str(video), [0.5])[0].image
    assert np.abs(sheet[cell["y"] + 150, cell["x"] + 5].astype(int) - frame[150, 5]).max() <= 2
    assert len(layout["markers"]) == 6
    gif = Image.open(png.with_suffix(".gif"))
    assert gif.n_frames == 4


def test_render_scaled_sheet_and_query_filter(video: Path, tmp_path: Path) -> None:
    from pipeline.tools.render import render_video

    vid = "e5" * 10
    tracks = [track_row(vid, "person", 0, 1.0, 48.0, 80.0, DISPLAY_W, DISPLAY_H)]
    points = [point_row(vid, "cart", 0, 2.0, 10.0, 10.0, DISPLAY_W, DISPLAY_H)]
    out = tmp_path / "tables"
    write_tables(out, {"videos": [video_row(vid, str(video), width=DISPLAY_W, height=DISPLAY_H, rotation=90)],
                       "tracks": tracks, "points": points})
    res = render_video(str(out), vid[:6], tmp_path / "r", query="person", width=48, gif=False)
    assert res.gif is None and res.frames == 1 and res.markers == 1
    m = res.layout["markers"][0]
    cell = res.layout["cells"][0]
    assert res.layout["scale"] == 0.5 and (m["sheet_x"], m["sheet_y"]) == (cell["x"] + 24, cell["y"] + 40)
    sheet = np.asarray(Image.open(res.png).convert("RGB"))
    assert tuple(sheet[m["sheet_y"], m["sheet_x"]]) == color_for(0)


def _crossing(vid: str, t: float, x: float, y: float, direction: str) -> dict[str, object]:
    from datetime import UTC, datetime

    start = datetime(2026, 11, 1, 13, 45, tzinfo=UTC)
    return {"store": "17", "camera": "3", "clip_start": start, "video_id": vid, "query": "person", "line": "door",
            "track_id": 1, "direction": direction, "t": t, "wall_time": start, "x_px": x, "y_px": y,
            "segment_dt_s": 0.5, "run_id": "r"}


def test_render_draws_lines_zones_and_crossings(video: Path, tmp_path: Path) -> None:
    from pipeline.cli import main
    from pipeline.tools.render import CROSSING_COLORS, GEOMETRY_COLOR

    vid = "f6" * 10
    out = tmp_path / "tables"
    tracks = [track_row(vid, "person", 1, t, 48.0, y, DISPLAY_W, DISPLAY_H) for t, y in ((0.5, 110.0), (1.5, 50.0))]
    write_tables(out, {"videos": [video_row(vid, str(video), width=DISPLAY_W, height=DISPLAY_H, rotation=90)],
                       "tracks": tracks})
    write_tables(out, {"retail_crossings": [_crossing(vid, 1.0, 48.0, 80.0, "in")],
                       "retail_videos": [{"video_id": vid, "uri": str(video), "store": "17", "camera": "3",
                                          "clip_start": _crossing(vid, 0, 0, 0, "in")["clip_start"], "status": "ok",
                                          "source_run_id": "r", "run_id": "r"}]},
                 key="b" * 24, commit_table="retail_videos")
    geometry = tmp_path / "cameras.yaml"
    geometry.write_text(
        "cameras:\n"
        "  - {store: '17', camera: '3', lines: [{name: door, start: [0.1, 0.5], end: [0.9, 0.5]}],\n"
        "     zones: [{name: shelf, polygon: [[0.2, 0.1], [0.8, 0.1], [0.8, 0.3], [0.2, 0.3]]}]}\n"
        "  - {store: '17', camera: '4', units: pixels, lines: [{name: door, start: [0, 10], end: [90, 10]}]}\n")
    sheet_dir = tmp_path / "render"
    args = ["render", "--output", str(out), "--video", "phone", "--out", str(sheet_dir), "--width", "200"]
    assert main([*args, "--geometry", str(geometry)]) == 2  # two cameras in the file: which one?
    assert main([*args, "--geometry", str(geometry), "--camera", "17/3", "--crossings", "retail_crossings"]) == 0
    png = next(sheet_dir.glob("phone-*.png"))
    layout = json.loads(png.with_suffix(".json").read_text())
    sheet = np.asarray(Image.open(png).convert("RGB"))
    cells = {c["t"]: c for c in layout["cells"]}
    assert sorted(cells) == [0.5, 1.0, 1.5]  # the crossing's time is one of the frames shown
    line = next(g for g in layout["geometry"] if g["kind"] == "line")
    assert line["start"] == [pytest.approx(0.1 * DISPLAY_W), pytest.approx(0.5 * DISPLAY_H)]
    assert line["in_tip"][1] < line["start"][1]  # "left" of a left-to-right line: above it
    frame = decode_frames_at(str(video), [0.5])[0].image
    cell = cells[0.5]
    mid_x, mid_y = round(0.3 * DISPLAY_W), round(0.5 * DISPLAY_H)  # on the line, away from the in arrow
    assert tuple(sheet[cell["y"] + mid_y, cell["x"] + mid_x]) == GEOMETRY_COLOR
    assert tuple(frame[mid_y, mid_x]) != GEOMETRY_COLOR  # drawn, not the video's own pixel
    zone_edge = (round(0.5 * DISPLAY_W), round(0.1 * DISPLAY_H))  # the zone's top edge
    assert tuple(sheet[cell["y"] + zone_edge[1], cell["x"] + zone_edge[0]]) == GEOMETRY_COLOR
    crossing = next(m for m in layout["markers"] if m["kind"] == "crossing")
    assert (crossing["t"], crossing["query"], crossing["cell"]) == (1.0, "door in", list(cells).index(1.0))
    ring = (crossing["sheet_x"] + 2 * 5 - 1, crossing["sheet_y"])  # the ring of radius 2 x 5 around the point
    assert tuple(sheet[ring[1], ring[0]]) == CROSSING_COLORS["in"]
    assert main([*args, "--geometry", str(geometry), "--camera", "17/9"]) == 2
    assert main([*args, "--crossings", "no_such_table"]) == 2
