"""Toy world for Molmo2 evidence tests: discs ("people") moving in straight lines on a plain floor.

Pure numpy generator, deterministic from a seed. A `World` holds the video geometry (display size,
fps, number of source frames, rotation metadata), the floor and every person (persistent id,
start position, constant velocity, radius, colour). From it:

* `render_display(world, t)`: one display frame (H, W, 3) uint8 at source resolution;
* `write_mp4(world, path)`: the whole clip as H.264/yuv420p mp4 (PyAV), frames stored in coded
  orientation with the display rotation in the stream's display matrix (portrait clips);
* `render_model_frames(world, times, size)`: fast in-memory frames at model resolution (square,
  squashed), rendered at a capped intermediate resolution with yuv420 chroma subsampling and then
  resized with PIL's antialiased bilinear filter (close to FFmpeg's swscale bilinear downscale of a
  decoded frame, which is what the pipeline's decoder does; tests/devtools/test_toyworld.py compares
  the two);
* `ground_truth(world)`: every person's centre per source frame (display pixels) + visibility;
* `answers(world, times, labels)`: the exact answer strings for Molmo2's four prompts.

Conventions
-----------
* Display pixel coordinates, continuous: x in [0, W), y in [0, H); pixel (i, j) covers
  [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5).
* A person is *visible* in a frame when its centre is inside the frame (0 <= x < W, 0 <= y < H).
* Coordinates in answers: X = round(1000 * x / W), Y = round(1000 * y / H), clipped to 0..999,
  written with 3 digits ("068").
* Answer ids: people visible in at least one sampled frame, ordered by their first visible sampled
  frame, then left to right (x) at that frame; ids 1..n. Counting points each person once at that
  first frame; tracking gives every visible position at every sampled frame, ids persistent.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.video.sampling import FrameSampler

QUESTIONS = {
    "count": "How many people are there?",
    "point": "Point to the person.",
    "track": "Track the person.",
    "caption": "Describe this video in detail.",
}

MAX_IN_VIEW = 5

Times = Sequence[float] | np.ndarray  # frame times in seconds


# ----------------------------------------------------------------------------------------------
# World description


@dataclass
class Person:
    pid: int  # persistent identity within the world (creation order, 1-based)
    x0: float  # centre at t = 0, display px
    y0: float
    vx: float  # display px / s
    vy: float
    radius: float  # display px
    color: tuple[int, int, int]  # RGB

    def pos(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return self.x0 + self.vx * t, self.y0 + self.vy * t


@dataclass
class Floor:
    base: tuple[float, float, float]  # RGB 0..1
    waves: list[tuple[float, float, float, float]]  # (fx, fy cycles per frame, phase, amplitude)
    gradient: tuple[float, float, float]  # (gx, gy, amplitude) lighting ramp
    noise: float  # static per-pixel noise std (0..1 units) at source resolution
    noise_seed: int


@dataclass
class World:
    seed: int
    width: int  # display size
    height: int
    fps: float
    n_frames: int
    rotation: int  # display rotation (counter-clockwise degrees, as PyAV's frame.rotation reads it)
    floor: Floor
    people: list[Person] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    @property
    def frame_times(self) -> np.ndarray:
        return np.arange(self.n_frames, dtype=np.float64) / self.fps

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the frames stored in the mp4 (before the display rotation)."""
        return (self.height, self.width) if self.rotation % 180 == 90 else (self.width, self.height)

    def positions(self, times: Times) -> tuple[np.ndarray, np.ndarray]:
        """Centres (P, T, 2) in display px and visibility (P, T) bool at the given times."""
        times = np.asarray(times, dtype=np.float64)
        if not self.people:
            return np.zeros((0, len(times), 2)), np.zeros((0, len(times)), dtype=bool)
        xy = np.stack([np.stack(p.pos(times), axis=-1) for p in self.people])
        vis = (xy[..., 0] >= 0) & (xy[..., 0] < self.width) & (xy[..., 1] >= 0) & (xy[..., 1] < self.height)
        return xy, vis


# ----------------------------------------------------------------------------------------------
# Generation


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def plain_floor(rng: np.random.Generator) -> Floor:
    """A uniform grey floor (training curriculum only)."""
    v = rng.uniform(0.45, 0.75)
    return Floor((v, v, v), [], (1.0, 0.0, 0.0), 0.0, 0)


def random_floor(rng: np.random.Generator) -> Floor:
    h = rng.random()
    s = rng.uniform(0.0, 0.15)
    v = rng.uniform(0.35, 0.85)
    base = _hsv(h, s, v)
    waves = []
    if rng.random() < 0.7:  # gently textured
        for _ in range(rng.integers(2, 7)):
            waves.append(
                (
                    float(rng.uniform(-6, 6)),
                    float(rng.uniform(-6, 6)),
                    float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(0.003, 0.02)),
                )
            )
    ang = rng.uniform(0, 2 * math.pi)
    gradient = (math.cos(ang), math.sin(ang), float(rng.uniform(0.0, 0.06)))
    noise = float(rng.uniform(0.0, 0.02)) if rng.random() < 0.7 else 0.0
    return Floor(base, waves, gradient, noise, int(rng.integers(0, 2**31)))


def random_person_color(rng: np.random.Generator, hue_span: float = 1.0) -> tuple[int, int, int]:
    """A saturated colour; hue_span < 1 restricts hues to that fraction of the circle around red (training
    curriculum only; the spec's world uses 1.0)."""
    hue = rng.random() if hue_span >= 1.0 else rng.uniform(-0.5, 0.5) * hue_span
    r, g, b = _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def random_geometry(rng: np.random.Generator, portrait: bool | None = None) -> tuple[int, int, int]:
    """(display width, display height, rotation): landscape sizes 320x240 .. 1280x720, aspect 1.25..1.8;
    portrait clips are stored landscape with a 90/270 rotation."""
    while True:
        w = int(rng.integers(160, 641)) * 2
        aspect = rng.uniform(1.25, 1.8)
        h = round(w / aspect / 2) * 2
        if 240 <= h <= 720:
            break
    if portrait is None:
        portrait = rng.random() < 0.25
    if portrait:
        return h, w, int(rng.choice([90, 270]))
    return w, h, 180 if rng.random() < 0.03 else 0


def _ok_with(world: World, cand: Person, times: np.ndarray, xy_others: np.ndarray, vis_others: np.ndarray) -> bool:
    cx, cy = cand.pos(times)
    cvis = (cx >= 0) & (cx < world.width) & (cy >= 0) & (cy < world.height)
    if len(xy_others):
        if np.any(vis_others.sum(0) + cvis > MAX_IN_VIEW):
            return False
        # never cover each other's centre (while either disc touches the frame)
        margin = 2.0
        for k, other in enumerate(world.people):
            d = np.hypot(xy_others[k, :, 0] - cx, xy_others[k, :, 1] - cy)
            need = max(other.radius, cand.radius) + margin
            near_frame = _touches(world, cx, cy, cand.radius) | _touches(
                world, xy_others[k, :, 0], xy_others[k, :, 1], other.radius
            )
            if np.any((d < need) & near_frame):
                return False
    return True


def _touches(world: World, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return (x > -r) & (x < world.width + r) & (y > -r) & (y < world.height + r)


def make_world(
    seed: int,
    *,
    width: int | None = None,
    height: int | None = None,
    rotation: int | None = None,
    portrait: bool | None = None,
    fps: float | None = None,
    duration: float | None = None,
    n_start: int | None = None,
    arrival_rate: float | None = None,
    diameter: tuple[float, float] = (0.06, 0.12),
    max_speed: float = 0.25,
    check_times: np.ndarray | None = None,
    hue_span: float = 1.0,
    plain: bool = False,
) -> World:
    """A random world within the spec, deterministic from `seed`.

    n_start people are inside the frame at t = 0; others enter through the edges (Poisson arrivals,
    `arrival_rate` per second). Constraints (at most MAX_IN_VIEW visible, no disc covers another's
    centre) are checked at every source frame time, or at `check_times` if given (training clips
    only need their sampled frames).
    """
    rng = np.random.default_rng(seed)
    if width is None or height is None:
        width, height, rot = random_geometry(rng, portrait)
        if rotation is None:
            rotation = rot
    rotation = 0 if rotation is None else int(rotation) % 360
    if fps is None:
        fps = float(rng.choice([10, 12, 15, 20, 24, 25, 30, 29.97]))
    if duration is None:
        duration = float(rng.uniform(4.0, 180.0))
    n_frames = max(1, round(duration * fps))
    world = World(seed, int(width), int(height), float(fps), n_frames, rotation, plain_floor(rng) if plain else random_floor(rng))
    times = world.frame_times if check_times is None else np.asarray(check_times, dtype=np.float64)
    W, H = world.width, world.height
    if n_start is None:
        n_start = int(rng.integers(0, MAX_IN_VIEW + 1))
    if arrival_rate is None:
        arrival_rate = float(rng.uniform(0.0, 0.5))

    def new_person(entering_at: float | None) -> Person:
        r = rng.uniform(*diameter) * W / 2
        speed = 0.0 if (entering_at is None and rng.random() < 0.1) else rng.uniform(0.0, max_speed) * W
        if entering_at is None:
            x, y = rng.uniform(0, W), rng.uniform(0, H)
            ang = rng.uniform(0, 2 * math.pi)
            vx, vy = speed * math.cos(ang), speed * math.sin(ang)
            return Person(0, x, y, vx, vy, r, random_person_color(rng, hue_span))
        speed = max(speed, 0.03 * W)
        edge = int(rng.integers(0, 4))
        normal = [0.0, math.pi, math.pi / 2, -math.pi / 2][edge]  # inward: from left, right, top, bottom
        ang = normal + rng.uniform(-1.2, 1.2)
        vx, vy = speed * math.cos(ang), speed * math.sin(ang)
        if edge == 0:
            xe, ye = 0.0, rng.uniform(0, H)
        elif edge == 1:
            xe, ye = W - 1e-6, rng.uniform(0, H)
        elif edge == 2:
            xe, ye = rng.uniform(0, W), 0.0
        else:
            xe, ye = rng.uniform(0, W), H - 1e-6
        return Person(0, xe - vx * entering_at, ye - vy * entering_at, vx, vy, r, random_person_color(rng, hue_span))

    candidates: list[float | None] = [None] * n_start
    t = 0.0
    while arrival_rate > 0:
        t += rng.exponential(1.0 / arrival_rate)
        if t >= world.duration:
            break
        candidates.append(t)
    # a few people may also have entered shortly before the start
    for _ in range(int(rng.poisson(arrival_rate * 2.0))):
        candidates.append(-float(rng.uniform(0, 2.0)))
    xy = np.zeros((0, len(times), 2))
    vis = np.zeros((0, len(times)), dtype=bool)
    for entering_at in candidates:
        for _attempt in range(20):
            cand = new_person(entering_at)
            if _ok_with(world, cand, times, xy, vis):
                cand.pid = len(world.people) + 1
                world.people.append(cand)
                cx, cy = cand.pos(times)
                xy = np.concatenate([xy, np.stack([cx, cy], -1)[None]], 0)
                vis = np.concatenate(
                    [vis, ((cx >= 0) & (cx < W) & (cy >= 0) & (cy < H))[None]], 0
                )
                break
    return world


# ----------------------------------------------------------------------------------------------
# Ground truth and answers


def ground_truth(world: World) -> dict:
    """Every person's centre at every source frame (display px; NaN where not visible)."""
    xy, vis = world.positions(world.frame_times)
    people = []
    for k, p in enumerate(world.people):
        c = xy[k].copy()
        c[~vis[k]] = np.nan
        people.append(
            {"id": p.pid, "radius": p.radius, "color": list(p.color), "centres": c, "visible": vis[k].copy()}
        )
    return {
        "width": world.width,
        "height": world.height,
        "fps": world.fps,
        "n_frames": world.n_frames,
        "rotation": world.rotation,
        "frame_times": world.frame_times,
        "people": people,
    }


def to_units(world: World, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.clip(np.round(1000.0 * np.asarray(x) / world.width), 0, 999).astype(int)
    Y = np.clip(np.round(1000.0 * np.asarray(y) / world.height), 0, 999).astype(int)
    return X, Y


def time_label(t: float) -> str:
    """How the Molmo2 processor writes a frame time into the prompt (and the model writes it back)."""
    return f"{t:.1f}"


@dataclass
class ClipTruth:
    """Ground truth for the frames the model sees, with answer ids assigned."""

    labels: list[str]  # frame time labels
    units: np.ndarray  # (n, T, 2) int 0..999, answer order (id = index + 1)
    visible: np.ndarray  # (n, T) bool
    first: np.ndarray  # (n,) index of the first visible sampled frame
    pids: list[int]  # world person ids in answer order
    px: np.ndarray  # (n, T, 2) display px


def clip_truth(world: World, times_s: Times, labels: Sequence[str] | None = None) -> ClipTruth:
    """The truth of the frames at `times_s` (absolute seconds); labels default to times relative to the first."""
    times = np.asarray(times_s, dtype=np.float64)
    if labels is None:
        labels = [time_label(t - times[0]) for t in times]
    xy, vis = world.positions(times)
    seen = np.flatnonzero(vis.any(1)) if len(vis) else np.zeros(0, dtype=int)
    first = np.array([int(np.argmax(vis[k])) for k in seen], dtype=int)
    xfirst = np.array([xy[k, f, 0] for k, f in zip(seen, first, strict=False)])
    order = np.lexsort((xfirst, first)) if len(seen) else np.zeros(0, dtype=int)
    seen, first = seen[order], first[order]
    X, Y = to_units(world, xy[..., 0], xy[..., 1])
    units = np.stack([X, Y], -1)[seen] if len(seen) else np.zeros((0, len(times), 2), dtype=int)
    return ClipTruth(
        list(labels),
        units,
        vis[seen] if len(seen) else np.zeros((0, len(times)), dtype=bool),
        first,
        [world.people[k].pid for k in seen],
        xy[seen] if len(seen) else np.zeros((0, len(times), 2)),
    )


def _points_tag(ct: ClipTruth, label: str) -> str:
    groups = []
    for f in sorted(set(ct.first.tolist())):
        members = [k for k in range(len(ct.first)) if ct.first[k] == f]
        parts = [ct.labels[f]]
        for k in members:
            parts += [str(k + 1), f"{ct.units[k, f, 0]:03d}", f"{ct.units[k, f, 1]:03d}"]
        groups.append(" ".join(parts))
    return f'<points coords="{";".join(groups)}">{label}</points>'


def count_sentence(n: int) -> str:
    if n == 0:
        return "There are no people."
    if n == 1:
        return "There is 1 person."
    return f"There are {n} people."


def answer_count(ct: ClipTruth) -> str:
    n = len(ct.first)
    if n == 0:
        return count_sentence(0)
    return f"{_points_tag(ct, 'people')} {count_sentence(n)}"


def answer_point(ct: ClipTruth) -> str:
    if len(ct.first) == 0:
        return count_sentence(0)
    return _points_tag(ct, "person")


def answer_track(ct: ClipTruth) -> str:
    if len(ct.first) == 0:
        return count_sentence(0)
    groups = []
    for f in range(len(ct.labels)):
        members = [k for k in range(len(ct.first)) if ct.visible[k, f]]
        if not members:
            continue
        parts = [ct.labels[f]]
        for k in members:
            parts += [str(k + 1), f"{ct.units[k, f, 0]:03d}", f"{ct.units[k, f, 1]:03d}"]
        groups.append(" ".join(parts))
    return f'<tracks coords="{";".join(groups)}">person</tracks>'


_HUES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
_HUE_EDGES = [15, 45, 70, 160, 200, 260, 295, 340]  # degrees where the next name starts


def color_name(rgb: Sequence[int]) -> str:
    h, _s, _v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    deg = h * 360
    for name, edge in zip(_HUES, _HUE_EDGES, strict=False):
        if deg < edge:
            return name
    return "red"


def floor_name(floor: Floor) -> str:
    v = max(floor.base)
    return "dark" if v < 0.5 else ("grey" if v < 0.7 else "light")


_DIRS = ["right", "down and to the right", "down", "down and to the left", "left", "up and to the left", "up", "up and to the right"]


def direction_phrase(vx: float, vy: float, width: int) -> str:
    if math.hypot(vx, vy) < 0.02 * width:
        return "stands still"
    ang = math.degrees(math.atan2(vy, vx)) % 360  # image y points down
    k = int(((ang + 22.5) % 360) // 45)
    d = _DIRS[k]
    return "moves " + ("to the " + d if d in ("right", "left") else d)


def answer_caption(world: World, ct: ClipTruth) -> str:
    n = len(ct.first)
    fl = floor_name(world.floor)
    if n == 0:
        return f"The video shows an empty {fl} floor. There are no people."
    head = f"The video shows {n} {'person' if n == 1 else 'people'} on a {fl} floor."
    parts = [head]
    for _k, pid in enumerate(ct.pids):
        p = world.people[pid - 1]
        parts.append(f"A {color_name(p.color)} person {direction_phrase(p.vx, p.vy, world.width)}.")
    return " ".join(parts)


def answers(world: World, times: Times, labels: Sequence[str] | None = None) -> dict[str, str]:
    """Answer strings for the four questions, for the frames at `times` (absolute seconds)."""
    ct = clip_truth(world, times, labels)
    return {
        "count": answer_count(ct),
        "point": answer_point(ct),
        "track": answer_track(ct),
        "caption": answer_caption(world, ct),
    }


# ----------------------------------------------------------------------------------------------
# Rendering


def _floor_image(world: World, w: int, h: int) -> np.ndarray:
    """Floor at (h, w) pixels (float32 0..1), sampled at pixel centres of a w x h grid over the display."""
    fl = world.floor
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    v = (np.arange(h, dtype=np.float32) + 0.5) / h
    shade = np.zeros((h, w), dtype=np.float32)
    for fx, fy, ph, amp in fl.waves:
        # sin(a + b) = sin a cos b + cos a sin b: separable, cheap
        a = 2 * np.pi * fx * u + ph
        b = 2 * np.pi * fy * v
        shade += amp * (np.cos(b)[:, None] * np.sin(a)[None, :] + np.sin(b)[:, None] * np.cos(a)[None, :])
    gx, gy, ga = fl.gradient
    shade += ga * ((u[None, :] - 0.5) * gx + (v[:, None] - 0.5) * gy)
    img = np.asarray(fl.base, dtype=np.float32)[None, None, :] + shade[..., None]
    if fl.noise > 0:
        # static per-pixel noise defined at source resolution; at a coarser grid its std shrinks
        # as an average over the covered source pixels would
        factor = math.sqrt((w * h) / float(world.width * world.height))
        nrng = np.random.default_rng(fl.noise_seed)
        img = img + (fl.noise * min(1.0, factor)) * nrng.standard_normal((h, w, 1), dtype=np.float32)
    return img


def _paint_people(world: World, img: np.ndarray, t: float, w: int, h: int) -> None:
    """Paint antialiased discs (ellipses on a w x h grid over the display) in place."""
    sx, sy = w / world.width, h / world.height
    for p in world.people:
        px, py = p.pos(t)
        cx, cy = float(px) * sx, float(py) * sy
        rx, ry = p.radius * sx, p.radius * sy
        x0, x1 = max(0, int(cx - rx - 2)), min(w, int(cx + rx + 3))
        y0, y1 = max(0, int(cy - ry - 2)), min(h, int(cy + ry + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5
        ys = np.arange(y0, y1, dtype=np.float32) + 0.5
        # distance to the ellipse edge in grid pixels (first-order)
        nx = (xs[None, :] - cx) / rx
        ny = (ys[:, None] - cy) / ry
        rho = np.sqrt(nx * nx + ny * ny)
        grad = np.sqrt((nx / rx) ** 2 + (ny / ry) ** 2) / np.maximum(rho, 1e-6)
        dist = (1.0 - rho) / np.maximum(grad, 1e-6)
        a = np.clip(dist + 0.5, 0.0, 1.0)[..., None]
        col = np.asarray(p.color, dtype=np.float32)[None, None, :] / 255.0
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + col * a


def render_display(world: World, t: float, floor: np.ndarray | None = None) -> np.ndarray:
    """One display-orientation frame (H, W, 3) uint8 at source resolution."""
    W, H = world.width, world.height
    img = (floor if floor is not None else _floor_image(world, W, H)).copy()
    _paint_people(world, img, t, W, H)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _yuv420(img: np.ndarray) -> np.ndarray:
    """Chroma subsampling 2x2 as yuv420p does (BT.601), on a float 0..1 image."""
    h, w = img.shape[:2]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = b - y
    cr = r - y
    h2, w2 = h // 2 * 2, w // 2 * 2
    for c in (cb, cr):
        blk = c[:h2, :w2].reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3))
        c[:h2, :w2] = np.repeat(np.repeat(blk, 2, 0), 2, 1)
    out = np.empty_like(img)
    out[..., 0] = y + cr
    out[..., 2] = y + cb
    out[..., 1] = (y - 0.299 * out[..., 0] - 0.114 * out[..., 2]) / 0.587
    return out


def render_model_frames(
    world: World, times: Times, size: int, *, max_render: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 as the model sees them: display frame squashed to a square.

    Discs are drawn with analytic antialiasing directly on the size x size grid (equivalent to an area
    downscale of the source frame); when the source's chroma planes (yuv420: half the source size) are
    coarser than the model grid, chroma is subsampled on the model grid as well. With `max_render`, the
    frame is instead rendered at min(source, max_render) per axis and resized with PIL's antialiased
    bilinear filter (slower; kept for checks). `rng` adds a little temporal noise (codec-like).
    """
    if max_render:
        from PIL import Image

        w, h = min(world.width, max_render), min(world.height, max_render)
    else:
        w = h = size
    floor = _floor_image(world, w, h)
    chroma = (world.width / 2 < 1.5 * w) or (world.height / 2 < 1.5 * h)
    out = np.empty((len(times), size, size, 3), dtype=np.uint8)
    for i, t in enumerate(times):
        img = floor.copy()
        _paint_people(world, img, float(t), w, h)
        if chroma:
            img = _yuv420(img)
        if rng is not None:
            img += np.float32(rng.uniform(0, 0.006)) * rng.standard_normal(img.shape, dtype=np.float32)
        u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if (w, h) != (size, size):
            u8 = np.asarray(Image.fromarray(u8).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = u8
    return out


def write_mp4(world: World, path: str, *, crf: int = 23, max_frames: int | None = None) -> dict:
    """Write the clip as H.264 yuv420p mp4 with the display rotation in the display matrix.

    Frames are stored in coded orientation: display = rot90(coded, k=rotation/90) (counter-clockwise),
    the convention PyAV's `frame.rotation` and the pipeline's decoder use. Returns a small record.
    """
    import av

    k = (world.rotation // 90) % 4
    cw, ch = world.coded_size
    n = world.n_frames if max_frames is None else min(world.n_frames, max_frames)
    floor = _floor_image(world, world.width, world.height)
    fps = world.fps
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = cw, ch
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        if world.rotation:
            stream.set_display_rotation(world.rotation)
        for i in range(n):
            disp = render_display(world, i / fps, floor)
            coded = np.ascontiguousarray(np.rot90(disp, k=-k)) if k else disp
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"path": path, "width": world.width, "height": world.height, "coded": [cw, ch], "rotation": world.rotation, "fps": fps, "frames": n}


def decode_frames(path: str, times: Times, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode the frames nearest to `times` the way the pipeline does (PyAV, swscale bilinear resize
    of the coded frame to size x size, then rotate upright). Returns frames, their times, probe info."""
    import av

    want = list(times)
    got, got_t = [], []
    info: dict = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        tb = float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        info["fps"] = float(rate) if rate else 0.0
        info["coded"] = (stream.width, stream.height)
        start = stream.start_time or 0
        rotation = 0
        pos = 0
        tol = 0.25 / info["fps"] if info["fps"] else 1e-3
        for frame in container.decode(stream):
            rotation = round(float(getattr(frame, "rotation", 0) or 0)) % 360
            t = (frame.pts - start) * tb
            while pos < len(want) and t > want[pos] + tol:
                pos += 1
            if pos < len(want) and abs(t - want[pos]) <= tol:
                got.append(frame.to_ndarray(width=size, height=size, format="rgb24"))
                got_t.append(t)
                pos += 1
            if pos >= len(want):
                break
    info["rotation"] = rotation
    frames = np.stack(got) if got else np.zeros((0, size, size, 3), np.uint8)
    k = (rotation // 90) % 4
    if k:
        frames = np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2)))
    return frames, np.asarray(got_t), info


def native_sample_times(n_frames: int, fps: float, num_frames: int, max_fps: float | None) -> np.ndarray:
    """Frame indices Molmo2VideoProcessor.sample_frames would pick: the pipeline's 'native' sampler."""
    sampler = FrameSampler("native", num_frames, max_fps)
    return np.asarray(sampler.sample([i / fps if fps > 0 else float(i) for i in range(n_frames)], fps), dtype=int)
