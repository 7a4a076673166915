"""Pictures of the retail analytics: per store, footfall by hour and a dwell histogram (PNG, Pillow).

    python -m jobs.retail_charts --output s3://tables/retail/ --out charts/ [--store 17] [--day 2026-11-01]

(or `python -m jobs.retail_counting ... --charts-dir charts/` after its post-processing). Reads the committed
rows of every run, merged exactly (`jobs.retail_tables.TRAFFIC_MERGE_SQL`), and writes per store

- `footfall-<store>.png`: people in per hour (UTC), one stacked colour per camera/line, with the people
  out of the same lines as a grey bar beside;
- `dwell-<store>.png`: one histogram per zone of the complete visits' dwell (`retail_zone_visits`), in the
  buckets of `jobs.retail_tables.DWELL_BUCKETS_S`;

each with a `.json` beside it holding the numbers drawn.
"""

from __future__ import annotations

import argparse
import bisect
import colorsys
import itertools
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.common import read_table
from jobs.retail_tables import DWELL_BUCKETS_S, RETAIL_COMMIT_TABLE, TRAFFIC_MERGE_SQL

WIDTH, PLOT_H, MARGIN = 760, 220, 48
BACKGROUND, INK, GRID, OUT_GREY = (255, 255, 255), (30, 30, 30), (225, 225, 225), (150, 150, 150)


def series_color(index: int) -> tuple[int, int, int]:
    """One distinct colour per series (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((0.58 + index * 0.618033988749895) % 1.0, 0.65, 0.85)
    return round(r * 255), round(g * 255), round(b * 255)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _nice_top(value: float) -> float:
    """A round axis maximum at or above `value` (a multiple of 4 for small counts: whole-number ticks)."""
    if value <= 20:
        return float(max(4, math.ceil(value / 4) * 4))
    step = 10 ** len(str(int(value))) / 10
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def bar_panel(draw: Any, box: tuple[int, int, int, int], title: str, labels: Sequence[str],
              stacks: Sequence[Sequence[tuple[float, tuple[int, int, int]]]], *, side: Sequence[float] | None = None) -> None:
    """One bar chart in `box` (x0, y0, x1, y1): a stacked bar per label, optionally a grey bar beside it."""
    x0, y0, x1, y1 = box
    font = _font(11)
    draw.text((x0, y0), title, fill=INK, font=_font(13))
    top = _nice_top(max([sum(v for v, _ in s) for s in stacks] + list(side or []) + [0]))
    px0, py0, py1 = x0 + 36, y0 + 20, y1 - 18
    for k in range(5):
        y = py1 - (py1 - py0) * k / 4
        draw.line((px0, y, x1, y), fill=GRID)
        draw.text((x0, y - 6), f"{top * k / 4:g}", fill=INK, font=font)
    n = max(1, len(labels))
    slot = (x1 - px0) / n
    bar = max(1.0, slot * (0.4 if side is not None else 0.7))
    every = max(1, round(n / 12))  # at most ~12 labels on the axis
    for i, stack in enumerate(stacks):
        left = px0 + i * slot + (slot - bar * (2 if side is not None else 1)) / 2
        base = float(py1)
        for value, color in stack:
            height = (py1 - py0) * value / top
            if height > 0:
                draw.rectangle((left, base - height, left + bar - 1, base), fill=color)
            base -= height
        if side is not None and side[i] > 0:
            draw.rectangle((left + bar, py1 - (py1 - py0) * side[i] / top, left + 2 * bar - 1, py1), fill=OUT_GREY)
        if i % every == 0:
            draw.text((px0 + i * slot, py1 + 3), labels[i], fill=INK, font=font)
    draw.line((px0, py1, x1, py1), fill=INK)


def _legend(draw: Any, x: int, y: int, items: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    font = _font(11)
    for j, (text, color) in enumerate(items):
        lx, ly = x + (j % 3) * 240, y + (j // 3) * 16
        draw.rectangle((lx, ly + 2, lx + 10, ly + 12), fill=color)
        draw.text((lx + 14, ly), text, fill=INK, font=font)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def footfall_chart(store: str, rows: Sequence[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Footfall by hour for one store (merged `retail_traffic_hourly` line rows); returns what is drawn."""
    from PIL import Image, ImageDraw

    hours = sorted({r["hour"] for r in rows})
    series = sorted({(r["camera"], r["name"]) for r in rows})
    people_in = {(r["camera"], r["name"], r["hour"]): int(r["crossings_in"] or 0) for r in rows}
    people_out: dict[Any, int] = defaultdict(int)
    for r in rows:
        people_out[r["hour"]] += int(r["crossings_out"] or 0)
    colors = {s: series_color(i) for i, s in enumerate(series)}
    multi_day = len({h.date() for h in hours}) > 1
    labels = [h.strftime("%m-%d %H" if multi_day else "%H:00") for h in hours]
    stacks = [[(float(people_in.get((*s, h), 0)), colors[s]) for s in series] for h in hours]
    legend_rows = (len(series) + 3) // 3
    image = Image.new("RGB", (WIDTH, PLOT_H + 2 * MARGIN + 16 * legend_rows), BACKGROUND)
    draw = ImageDraw.Draw(image)
    bar_panel(draw, (8, 8, WIDTH - 8, PLOT_H + MARGIN), f"store {store}: people in per hour (UTC); grey: out",
              labels, stacks, side=[float(people_out[h]) for h in hours])
    _legend(draw, 8, PLOT_H + MARGIN + 8, [(f"camera {c} / {n}", colors[(c, n)]) for c, n in series])
    image.save(path)
    data = {"store": store, "hours": [h.isoformat() for h in hours],
            "in": {f"{c}/{n}": [people_in.get((c, n, h), 0) for h in hours] for c, n in series},
            "out": [people_out[h] for h in hours]}
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return data


def dwell_histogram(store: str, visits: Sequence[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Dwell histogram per zone of one store's complete visits; returns what is drawn."""
    from PIL import Image, ImageDraw

    edges = list(DWELL_BUCKETS_S)
    labels = [f"{a}-{b}s" for a, b in itertools.pairwise(edges)] + [f">={edges[-1]}s"]
    zones = sorted({(v["camera"], v["zone"]) for v in visits})
    counts: dict[tuple[str, str], list[int]] = {z: [0] * len(edges) for z in zones}
    for v in visits:
        bucket = max(0, bisect.bisect_right(edges, v["dwell_s"]) - 1)
        counts[(v["camera"], v["zone"])][bucket] += 1
    panel = PLOT_H + 16
    image = Image.new("RGB", (WIDTH, 16 + panel * max(1, len(zones))), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if not zones:
        draw.text((8, 8), f"store {store}: no complete zone visits", fill=INK, font=_font(13))
    for k, zone in enumerate(zones):
        y0 = 8 + k * panel
        n = sum(counts[zone])
        bar_panel(draw, (8, y0, WIDTH - 8, y0 + PLOT_H), f"store {store}, camera {zone[0]}, zone {zone[1]}: "
                  f"dwell of {n} complete visit(s)", labels, [[(float(c), series_color(k))] for c in counts[zone]])
    image.save(path)
    data = {"store": store, "buckets_s": edges, "zones": {f"{c}/{z}": counts[(c, z)] for c, z in zones}}
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return data


def write_charts(output: str, out_dir: str | Path, *, store: str | None = None, day: str | None = None,
                 endpoint_url: str | None = None) -> list[Path]:
    """Both charts for every store (or `store`) from the committed retail tables under `output`."""
    import duckdb

    con: Any = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    con.register("retail_traffic_hourly", read_table(output, "retail_traffic_hourly", endpoint_url=endpoint_url,
                                                     commit_table=RETAIL_COMMIT_TABLE))
    con.register("retail_zone_visits", read_table(output, "retail_zone_visits", endpoint_url=endpoint_url,
                                                  commit_table=RETAIL_COMMIT_TABLE))
    params = {"store": store, "day": day}
    lines = con.sql(
        f"SELECT * FROM ({TRAFFIC_MERGE_SQL}) WHERE kind = 'line' AND ($store IS NULL OR store = $store) "
        "AND ($day IS NULL OR CAST(hour AS DATE) = CAST($day AS DATE)) ORDER BY ALL", params=params).to_arrow_table().to_pylist()
    visits = con.sql(
        "SELECT store, camera, zone, dwell_s FROM retail_zone_visits WHERE NOT (cut_at_start OR cut_at_end) "
        "AND ($store IS NULL OR store = $store) AND ($day IS NULL OR CAST(wall_enter AS DATE) = CAST($day AS DATE))",
        params=params).to_arrow_table().to_pylist()
    stores = sorted({r["store"] for r in lines} | {v["store"] for v in visits})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in stores:
        written.append(out / f"footfall-{_safe(s)}.png")
        footfall_chart(s, [r for r in lines if r["store"] == s], written[-1])
        written.append(out / f"dwell-{_safe(s)}.png")
        dwell_histogram(s, [v for v in visits if v["store"] == s], written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.retail_charts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="Where the retail job wrote its tables (folder or s3:// prefix).")
    parser.add_argument("--out", required=True, help="Local folder for the PNGs (and the JSON of what they show).")
    parser.add_argument("--store", help="Only this store.")
    parser.add_argument("--day", help="Only this UTC day (YYYY-MM-DD).")
    parser.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS).")
    args = parser.parse_args(argv)
    paths = write_charts(args.output, args.out, store=args.store, day=args.day, endpoint_url=args.s3_endpoint_url)
    if not paths:
        print("no retail traffic rows: run python -m jobs.retail_counting with --track-queries first", file=sys.stderr)
        return 1
    for p in paths:
        print(f"chart: {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
