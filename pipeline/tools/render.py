"""Look at the results: draw a video's points and tracks on its frames.

`render_video` reads one video's `points` and `tracks` rows (through `pipeline.tools.query`), decodes the
source video again at its full display size with rotation applied (`decode_frames_at`), and draws

- every track in its own colour: a filled circle at the track's point on that frame, labelled with the
  track id, and a trail through the track's points of the last few seconds;
- points (count / point / ask tasks) as squares in one colour per query, labelled with the object index;
- the frame's time in the corner.

With a camera geometry file (`--geometry FILE`: the retail job's format, `cameras:` with named lines and
zones per store and camera, read here as plain data) it also draws every zone (outlined, named) and every
line (named, with an arrow towards its "in" side); with `--crossings TABLE` (e.g. the retail job's
`retail_crossings`: rows with `video_id`, `t`, `x_px`, `y_px`, `line`, `direction`) each crossing as a ring
on the frame nearest its time, green for in, red for out.

It writes a PNG contact sheet, an animated GIF of the same frames, and a JSON file with the layout
(where each frame and each marker sits on the sheet), which tests and other tools can use.

Frames shown: the distinct times of the video's points/tracks/crossings (at most `max_frames`, evenly
chosen); with none, evenly spaced frames over the video.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import MolmoBatchError
from pipeline.tables.reader import QueryError, open_tables
from pipeline.video.errors import DecodeError
from pipeline.video.fetch import local_copy
from pipeline.video.probe import probe_video


class RenderError(MolmoBatchError, RuntimeError):
    """The video or its rows cannot be found (the message says what to pass instead)."""


@dataclass
class DisplayFrame:
    requested_t: float
    frame_t: float  # the presentation time of the frame shown (the nearest to requested_t)
    index: int  # frame number in the stream
    image: np.ndarray  # (H, W, 3) uint8 at display size, upright


def _nearest(times: np.ndarray, t: float) -> int:
    i = int(np.searchsorted(times, t))
    if i <= 0:
        return 0
    if i >= len(times):
        return len(times) - 1
    return i if abs(times[i] - t) < abs(t - times[i - 1]) else i - 1


def decode_frames_at(path: str, times: Sequence[float], *, seek_gap_s: float = 5.0) -> list[DisplayFrame]:
    """The frames nearest to `times` (absolute seconds), at full display size, rotated upright.

    Frame times are the container's presentation times (as in `pipeline.video.decode`, whose times the tables
    carry). Frames less than `seek_gap_s` apart are decoded in one forward pass; larger gaps seek.
    """
    import av

    probe = probe_video(path)
    ft = np.asarray(probe.frame_times, dtype=np.float64)
    wanted = sorted({_nearest(ft, float(t)) for t in times})
    images: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base or 0)
        start = stream.start_time or 0
        pos = 0
        while pos < len(wanted):
            target = float(ft[wanted[pos]])
            container.seek(int(target / tb) + start if tb else 0, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = (frame.pts - start) * tb
                while pos < len(wanted) and t >= ft[wanted[pos]] - 1e-4:
                    images.setdefault(wanted[pos], frame.to_ndarray(format="rgb24"))
                    pos += 1
                if pos >= len(wanted) or float(ft[wanted[pos]]) - t > seek_gap_s:
                    break
            else:
                break  # end of stream: frames not reached are left out
    # Same convention as pipeline.video.decode: rotation is counter-clockwise degrees to turn frames upright.
    k = (probe.rotation // 90) % 4
    out = []
    for t in times:
        i = _nearest(ft, float(t))
        if i in images:
            img = np.ascontiguousarray(np.rot90(images[i], k=k)) if k else images[i]
            out.append(DisplayFrame(float(t), float(ft[i]), i, img))
    return out


def color_for(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per index (golden-ratio hue steps): one colour per track."""
    h = (0.11 + index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.9, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


GEOMETRY_COLOR = (255, 255, 255)  # lines and zone outlines
CROSSING_COLORS = {"in": (40, 220, 90), "out": (240, 60, 60)}


@dataclass(frozen=True)
class SceneLine:
    name: str
    start: tuple[float, float]  # display pixels
    end: tuple[float, float]
    in_side: str  # left | right of start -> end, on the picture (y down)

    def in_normal(self) -> tuple[float, float]:
        """Unit vector from the line towards its in side."""
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        length = math.hypot(dx, dy) or 1.0
        left = (dy / length, -dx / length)  # left of the direction, on a y-down picture
        return left if self.in_side == "left" else (-left[0], -left[1])


@dataclass(frozen=True)
class Scene:
    """One camera's lines and zones, in display pixels of the video being drawn."""

    lines: tuple[SceneLine, ...] = ()
    zones: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()


def load_scene(path: str | Path, camera: str | None, width: int, height: int) -> Scene:
    """The lines and zones of one camera of a geometry file (YAML or JSON with `cameras:`), in display pixels.

    `camera` is `STORE/CAMERA`; it may be left out when the file describes one camera. Coordinates in
    `units: normalized` (the default) are fractions of the display frame (`width` x `height`).
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise RenderError(f"geometry file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text())  # JSON is YAML too
        cameras = list(data.get("cameras") or [])
    except Exception as exc:
        raise RenderError(f"geometry file {file}: not a mapping with `cameras:` ({type(exc).__name__}: {exc})") from None
    keys = [f"{c.get('store')}/{c.get('camera')}" for c in cameras]
    if camera is None and len(cameras) != 1:
        raise RenderError(f"geometry file {file} describes {len(cameras)} cameras ({', '.join(keys) or 'none'}): "
                          "pass --camera STORE/CAMERA")
    if camera is not None and camera not in keys:
        raise RenderError(f"no camera {camera!r} in {file}; it has: {', '.join(keys) or 'none'}")
    entry = cameras[keys.index(camera) if camera is not None else 0]
    scale = (width, height) if entry.get("units", "normalized") == "normalized" else (1.0, 1.0)

    def px(point: Sequence[float]) -> tuple[float, float]:
        return (float(point[0]) * scale[0], float(point[1]) * scale[1])

    try:
        lines = tuple(SceneLine(str(x["name"]), px(x["start"]), px(x["end"]), str(x.get("in_side", "left")))
                      for x in entry.get("lines") or [])
        zones = tuple((str(z["name"]), tuple(px(p) for p in z["polygon"])) for z in entry.get("zones") or [])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise RenderError(f"geometry file {file}, camera {keys[cameras.index(entry)]}: {type(exc).__name__}: {exc} "
                          "(lines need name, start, end; zones name and polygon)") from None
    return Scene(lines, zones)


def draw_scene(img: Any, scene: Scene, scale: float) -> list[dict[str, Any]]:
    """Zones (outline) and lines (with an arrow to the in side) on a frame scaled by `scale`."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    font = _font(11)
    drawn: list[dict[str, Any]] = []
    for name, polygon in scene.zones:
        pts = [(x * scale, y * scale) for x, y in polygon]
        draw.line([*pts, pts[0]], fill=GEOMETRY_COLOR, width=2)
        _label(draw, (min(p[0] for p in pts) + 3, min(p[1] for p in pts) + 2), name, GEOMETRY_COLOR, font)
        drawn.append({"kind": "zone", "name": name, "polygon": [list(p) for p in pts]})
    for line in scene.lines:
        a = (line.start[0] * scale, line.start[1] * scale)
        b = (line.end[0] * scale, line.end[1] * scale)
        draw.line([a, b], fill=GEOMETRY_COLOR, width=3)
        mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        nx, ny = line.in_normal()
        tip = (mid[0] + 14 * nx, mid[1] + 14 * ny)
        draw.line([mid, tip], fill=GEOMETRY_COLOR, width=2)
        draw.ellipse((tip[0] - 3, tip[1] - 3, tip[0] + 3, tip[1] + 3), fill=GEOMETRY_COLOR)
        _label(draw, (tip[0] + 4, tip[1] - 6), f"{line.name} (in)", GEOMETRY_COLOR, font)
        drawn.append({"kind": "line", "name": line.name, "start": list(a), "end": list(b), "in_tip": list(tip)})
    return drawn


def load_crossings(tables: Any, table: str, video_id: str) -> list[Marker]:
    """Crossing events of `video_id` from `table` (columns t, x_px, y_px, line, direction, track_id)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table) or table not in tables.names:
        raise RenderError(f"no table {table!r} under {tables.output} to draw crossings from "
                          f"(tables: {', '.join(tables.names)}); the retail job writes retail_crossings")
    rows = tables.sql(f"SELECT t, x_px, y_px, line, direction, track_id FROM {table} WHERE video_id = $v ORDER BY t",
                      {"v": video_id}).to_pylist()
    return [Marker("crossing", float(r["t"]), float(r["x_px"]), float(r["y_px"]), f"{r['line']} {r['direction']}",
                   None if r["track_id"] is None else int(r["track_id"]), CROSSING_COLORS.get(r["direction"], (255, 255, 0)))
            for r in rows if r["x_px"] is not None]


@dataclass
class Marker:
    kind: str  # track | point | crossing (query: "<line> <direction>")
    t: float
    x_px: float
    y_px: float
    query: str
    ident: int | None  # track id (tracks) or object index (points)
    color: tuple[int, int, int]


@dataclass
class RenderResult:
    png: Path
    gif: Path | None
    layout_json: Path
    frames: int
    markers: int
    layout: dict[str, Any] = field(default_factory=dict)


def find_video(tables: Any, video: str) -> dict[str, Any]:
    """The newest `videos` row whose id starts with `video`, or whose URI / file name / stem is `video`."""
    rows = tables.sql(
        """
        SELECT * FROM videos
        WHERE starts_with(video_id, $v) OR uri = $v OR regexp_extract(uri, '[^/]+$') = $v
              OR regexp_extract(uri, '([^/]+?)(\\.[^./]*)?$', 1) = $v
        QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY processed_at DESC) = 1
        """,
        {"v": video},
    ).to_pylist()
    if not rows:
        raise RenderError(f"no video {video!r} in {tables.output}/videos: pass a video_id (or a unique prefix), "
                          "a URI or a file name; `query --output ... \"SELECT video_id, uri FROM videos\"` lists them")
    if len(rows) > 1:
        listed = ", ".join(f"{r['video_id']} ({r['uri']})" for r in rows[:5])
        raise RenderError(f"{video!r} matches {len(rows)} videos: {listed}; pass more of the video_id")
    return dict(rows[0])


def load_markers(tables: Any, video_id: str, query: str | None) -> list[Marker]:
    params = {"v": video_id, "q": query}
    tracks = tables.sql(
        "SELECT query, track_id, t, x_px, y_px FROM tracks WHERE video_id = $v AND ($q IS NULL OR query = $q) "
        "ORDER BY query, track_id, t",
        params,
    ).to_pylist()
    points = tables.sql(
        "SELECT DISTINCT query, task, object_index, t, x_px, y_px FROM points "
        "WHERE video_id = $v AND ($q IS NULL OR query = $q) ORDER BY query, t, object_index",
        params,
    ).to_pylist()
    # Track ids are per (video, query): colour each (query, track_id) pair on its own.
    track_keys = sorted({(r["query"], int(r["track_id"])) for r in tracks})
    track_color = {k: color_for(i) for i, k in enumerate(track_keys)}
    queries = sorted({r["query"] for r in points})
    point_color = {q: color_for(len(track_keys) + i) for i, q in enumerate(queries)}
    out = [
        Marker("track", float(r["t"]), float(r["x_px"]), float(r["y_px"]), r["query"], int(r["track_id"]),
               track_color[(r["query"], int(r["track_id"]))])
        for r in tracks
    ]
    out += [
        Marker("point", float(r["t"]), float(r["x_px"]), float(r["y_px"]), r["query"],
               None if r["object_index"] is None else int(r["object_index"]), point_color[r["query"]])
        for r in points
    ]
    return out


def choose_times(markers: Sequence[Marker], duration: float, max_frames: int) -> list[float]:
    times = sorted({round(m.t, 3) for m in markers})
    if not times:
        n = max(1, min(max_frames, 8))
        return [round((i + 0.5) * duration / n, 3) for i in range(n)] if duration > 0 else [0.0]
    if len(times) > max_frames:
        picks = np.linspace(0, len(times) - 1, max_frames).round().astype(int)
        times = [times[i] for i in sorted(set(picks.tolist()))]
    return times


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _label(draw: Any, xy: tuple[float, float], text: str, color: tuple[int, int, int], font: Any) -> None:
    draw.text(xy, text, fill=color, font=font, stroke_width=2, stroke_fill=(0, 0, 0))


def draw_frame(
    image: np.ndarray,
    frame_t: float,
    markers: Sequence[Marker],
    *,
    scale: float,
    label: str | None = None,
    trail_s: float = 3.0,
    radius: int = 5,
    scene: Scene | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The frame scaled by `scale` with the scene's lines and zones, the markers at time `frame_t` drawn (and
    the trails of tracks up to it); also where each marker's centre was drawn on the scaled frame."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    if scene is not None:
        draw_scene(img, scene, scale)  # under the markers
    draw = ImageDraw.Draw(img)
    font = _font(11)
    drawn: list[dict[str, Any]] = []
    tol = 1e-3 + 0.5 / 1000.0

    # Trails first, so that markers sit on top.
    by_track: dict[tuple[str, int | None], list[Marker]] = {}
    for m in markers:
        if m.kind == "track" and frame_t - trail_s - tol <= m.t <= frame_t + tol:
            by_track.setdefault((m.query, m.ident), []).append(m)
    for trail in by_track.values():
        pts = [(m.x_px * scale, m.y_px * scale) for m in sorted(trail, key=lambda m: m.t)]
        if len(pts) > 1:
            draw.line(pts, fill=trail[0].color, width=2)

    for m in markers:
        if abs(m.t - frame_t) > tol:
            continue
        cx, cy = round(m.x_px * scale), round(m.y_px * scale)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if m.kind == "crossing":
            ring = (cx - 2 * radius, cy - 2 * radius, cx + 2 * radius, cy + 2 * radius)
            draw.ellipse(ring, outline=m.color, width=3)
            _label(draw, (cx + 2 * radius + 2, cy + radius), m.query, m.color, font)
        elif m.kind == "track":
            draw.ellipse(box, fill=m.color, outline=(0, 0, 0), width=1)
            _label(draw, (cx + radius + 2, cy - radius - 6), f"#{m.ident}", m.color, font)
        else:
            draw.rectangle(box, fill=m.color, outline=(255, 255, 255), width=1)
            if m.ident is not None:
                _label(draw, (cx + radius + 2, cy - radius - 6), str(m.ident), m.color, font)
        drawn.append({"kind": m.kind, "query": m.query, "id": m.ident, "t": m.t, "x_px": m.x_px, "y_px": m.y_px,
                      "cell_x": cx, "cell_y": cy, "color": list(m.color)})
    text = label if label is not None else f"t={frame_t:.2f}s"
    draw.rectangle((0, 0, 6 + 7 * len(text), 14), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255), font=font)
    return img, drawn


def render_video(
    output: str,
    video: str,
    out_dir: str | Path,
    *,
    query: str | None = None,
    max_frames: int = 12,
    width: int = 320,
    columns: int = 4,
    gif: bool = True,
    endpoint_url: str | None = None,
    max_video_bytes: int = 20 * 1024**3,
    geometry: str | Path | None = None,
    camera: str | None = None,
    crossings: str | None = None,
) -> RenderResult:
    """Render `video`'s points and tracks from the tables under `output` into `out_dir`; with `geometry` (a
    geometry file) its `camera`'s lines and zones, with `crossings` (a table) its crossing events."""
    from PIL import Image, ImageDraw

    tables = open_tables(output, endpoint_url=endpoint_url)
    row = find_video(tables, video)
    markers = load_markers(tables, row["video_id"], query)
    if crossings:
        markers += load_crossings(tables, crossings, row["video_id"])
    scene = (load_scene(geometry, camera, int(row.get("width") or 0), int(row.get("height") or 0))
             if geometry else None)
    times = choose_times(markers, float(row.get("duration_s") or 0.0), max_frames)
    with local_copy(row["uri"], endpoint_url=endpoint_url, max_bytes=max_video_bytes) as path:
        frames = decode_frames_at(path, times)
    if not frames:
        raise RenderError(f"no frame of {row['uri']} could be decoded at {times}")
    disp_h, disp_w = frames[0].image.shape[:2]
    scale = min(1.0, width / disp_w)
    cells = []
    drawn_all: list[dict[str, Any]] = []
    for f in frames:
        # Markers are drawn on the frame chosen for their time (the nearest frame of the video).
        img, drawn = draw_frame(f.image, f.requested_t, markers, scale=scale, label=f"t={f.frame_t:.2f}s", scene=scene)
        cells.append((f, img, drawn))
    cw, ch = cells[0][1].size
    cols = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / cols)
    pad, header = 4, 34
    legend = sorted({(m.query, m.ident, m.color) for m in markers if m.kind == "track"}, key=lambda k: (k[0], k[1] or 0))
    legend_h = 16 * math.ceil(min(len(legend), 24) / 4) + (6 if legend else 0)
    sheet = Image.new("RGB", (cols * (cw + pad) + pad, header + rows * (ch + pad) + pad + legend_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    name = str(row["uri"]).rstrip("/").rsplit("/", 1)[-1]
    n_tracks = len({(m.query, m.ident) for m in markers if m.kind == "track"})
    n_points = sum(1 for m in markers if m.kind == "point")
    draw.text((pad, 3), f"{name}  ({row['video_id']})  {disp_w}x{disp_h}, {float(row.get('duration_s') or 0):.1f}s",
              fill=(255, 255, 255), font=font)
    n_crossings = sum(1 for m in markers if m.kind == "crossing")
    what = f"{n_tracks} track(s), {n_points} point(s)" + (f" for {query!r}" if query else "")
    what += f", {n_crossings} crossing(s)" if crossings else ""
    if not markers:
        what = "no points or tracks in the tables for this video" + (f" and query {query!r}" if query else "")
    draw.text((pad, 18), what, fill=(200, 200, 200), font=font)
    layout_cells = []
    for i, (f, img, drawn) in enumerate(cells):
        x0 = pad + (i % cols) * (cw + pad)
        y0 = header + (i // cols) * (ch + pad)
        sheet.paste(img, (x0, y0))
        layout_cells.append({"t": f.requested_t, "frame_t": f.frame_t, "frame_index": f.index, "x": x0, "y": y0,
                             "w": cw, "h": ch})
        for d in drawn:
            drawn_all.append({**d, "sheet_x": x0 + d["cell_x"], "sheet_y": y0 + d["cell_y"], "cell": i})
    ly = header + rows * (ch + pad) + 2
    for j, (q, ident, color) in enumerate(legend[:24]):
        lx = pad + (j % 4) * 150
        yy = ly + (j // 4) * 16
        draw.ellipse((lx, yy + 3, lx + 9, yy + 12), fill=color)
        draw.text((lx + 13, yy), f"track #{ident} ({q})", fill=color, font=font)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name.rsplit(".", 1)[0]) + "-" + str(row["video_id"])[:8]
    png = out / f"{stem}.png"
    sheet.save(png, optimize=True)
    gif_path = None
    if gif:
        gif_path = out / f"{stem}.gif"
        imgs = [c[1] for c in cells]
        imgs[0].save(gif_path, save_all=True, append_images=imgs[1:], duration=600, loop=0, optimize=True)
    layout = {
        "video_id": row["video_id"],
        "uri": row["uri"],
        "display_width": disp_w,
        "display_height": disp_h,
        "scale": scale,
        "cells": layout_cells,
        "markers": drawn_all,
        # Where the scene's lines and zones sit on each cell (cell coordinates: add a cell's x, y).
        "geometry": draw_scene(Image.new("RGB", (cw, ch)), scene, scale) if scene is not None else [],
    }
    layout_json = out / f"{stem}.json"
    layout_json.write_text(json.dumps(layout, indent=1))
    return RenderResult(png, gif_path, layout_json, len(cells), len(drawn_all), layout)


def command(args: Any) -> int:
    import sys


    try:
        res = render_video(args.output, args.video, args.out, query=args.query, max_frames=args.max_frames,
                           width=args.width, columns=args.columns, gif=not args.no_gif,
                           endpoint_url=args.s3_endpoint_url, geometry=getattr(args, "geometry", None),
                           camera=getattr(args, "camera", None), crossings=getattr(args, "crossings", None))
    except (RenderError, QueryError, DecodeError, FileNotFoundError) as exc:
        print(f"render error: {exc}", file=sys.stderr)
        return 2
    print(f"{res.frames} frame(s), {res.markers} marker(s) drawn")
    print(f"contact sheet: {res.png}")
    if res.gif:
        print(f"clip: {res.gif}")
    print(f"layout: {res.layout_json}")
    return 0
