"""Retail counting and analytics: count queries (person, shopping cart, ...) in store camera clips per
window, track people, and turn the tracks into line crossings in and out, zone visits with dwell,
occupancy per minute and an hourly rollup per store, camera and line/zone, all with wall-clock times.

Input layout (configurable, see `jobs.layout`): `s3://BUCKET/[PREFIX/]store=<id>/camera=<id>/<clip start
ISO 8601>.mp4`, e.g. `store=17/camera=3/2026-11-01T13:45:00Z.mp4`. Videos that do not follow the layout
are left out (and listed in the summary). Camera geometry (named lines and zones per store and camera,
`jobs.retail_geometry`) comes from `--geometry FILE` or the YAML's `retail.geometry`, and is checked
before any model work (bad geometry: exit 2).

Two steps:
1. The pipeline, with one `count:<query>` task per query and one `track:<noun>` task per tracked noun
   (`--track-queries`, default person), writes its tables (`videos`, `counts`, `points`, `tracks`,
   `video_counts`, `errors`) under `--output`. Windows do not overlap unless tracking (then by 2 s, at
   most a quarter of a window, so tracks are stitched across windows) or `--overlap-s` is given.
2. Post-processing reads those committed tables and writes the job's own tables under the same
   `--output` (schemas in `jobs.retail_tables`, same atomic part protocol as the pipeline,
   `retail_videos` as the commit record): `retail_counts`, `retail_points`, `retail_video_counts`
   (the pipeline's rows plus `store`, `camera`, `clip_start` and wall-clock times: `wall_start` /
   `wall_end` = clip_start + t_start / t_end, `wall_time` = clip_start + t), `retail_hourly`
   (store, camera, query, hour (UTC), windows, counted_windows, count_sum, count_max, videos), and from
   the tracks (`jobs.retail_analytics`) `retail_crossings`, `retail_zone_visits`, `retail_occupancy` and
   `retail_traffic_hourly`. A clip is analysed for the nouns its pipeline run tracked (`videos.tasks`);
   a camera without geometry gets in-view occupancy only.
   It covers every ok/partial clip not yet in `retail_videos`, so a run interrupted between the two
   steps is completed by the next one, and `--postprocess-only` re-runs step 2 alone. `--charts-dir`
   then draws the footfall and dwell charts (`jobs.retail_charts`) from all committed rows.

`retail_hourly` and `retail_traffic_hourly` rows summarise the clips committed in one part: when clips of
the same hour arrive on different nights, that hour has several rows. Every column merges exactly:

    SELECT store, camera, query, hour, sum(windows) AS windows, sum(counted_windows) AS counted_windows,
           sum(count_sum) AS count_sum, max(count_max) AS count_max, sum(videos) AS videos
    FROM retail_hourly GROUP BY ALL ORDER BY ALL

(`jobs.retail_tables.TRAFFIC_MERGE_SQL` for `retail_traffic_hourly`.)

Exit status as the pipeline's (0 ok, 3 partial, 1 failed, 2 bad configuration).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.common import (
    JobOption,
    build_parser,
    csv_list,
    print_config,
    read_table,
    resolve,
    run_main,
    setup_logging,
)
from jobs.layout import DEFAULT_LAYOUT, ClipLayout, LayoutError
from jobs.retail_analytics import (
    AnalyticsSettings,
    ClipKey,
    ClipTraffic,
    TrackPoint,
    analyse_clip,
    crossing_rows,
    hourly_rollup,
    occupancy_rows,
    visit_rows,
)
from jobs.retail_geometry import RetailGeometry, load_geometry
from jobs.retail_tables import RETAIL_COMMIT_TABLE, RETAIL_TABLES
from pipeline.config import ConfigError, RunConfig, WindowConfig
from pipeline.run.driver import run_pipeline
from pipeline.run.settings import check_ready
from pipeline.run.summary import EXIT_OK, new_run_id, run_date_for
from pipeline.source.refs import VideoRef
from pipeline.tables.sink import TableSink

SECTION = "retail"
OPTIONS = (
    JobOption(
        "queries",
        "What to count, comma-separated (each becomes a count:<query> task), e.g. 'person,shopping cart'.",
        default=["person", "shopping cart"],
        type=csv_list,
        metavar="Q1,Q2,...",
    ),
    JobOption(
        "layout",
        "Path template of the clips below the bucket/prefix: {store}, {camera} and {clip_start} are "
        "captured, * matches within one path segment.",
        default=DEFAULT_LAYOUT,
        metavar="TEMPLATE",
    ),
    JobOption(
        "layout_regex",
        "A regular expression instead of --layout, with named groups store, camera and clip_start "
        "(searched in the URI without its scheme).",
        metavar="REGEX",
    ),
    JobOption(
        "naive_timezone",
        "IANA time zone of clip start times written without an offset (times are stored in UTC).",
        default="UTC",
        metavar="TZ",
    ),
    JobOption(
        "postprocess_only",
        "Skip the model run: only derive the retail tables from the pipeline tables already under --output.",
        default=False,
        action="store_true",
    ),
    JobOption(
        "track_queries",
        "What to track for crossings, zones and occupancy, comma-separated (each becomes a track:<noun> task); "
        "'' for none.",
        default=["person"],
        type=csv_list,
        metavar="N1,N2,...",
    ),
    JobOption(
        "geometry",
        "Camera geometry: a YAML or JSON file with `cameras:` (per store and camera, named lines and zones; "
        "see docs/retail.md). In the YAML section the geometry may also be written inline.",
        metavar="FILE",
    ),
    JobOption(
        "crossing_hysteresis_s",
        "A line crossing followed by the opposite crossing of the same track less than this many seconds "
        "later cancels both (a person jittering on the line).",
        default=1.0,
        type=float,
        metavar="SECONDS",
    ),
    JobOption(
        "zone_merge_gap_s",
        "Two visits of one track to one zone less than this many seconds apart are one visit.",
        default=1.0,
        type=float,
        metavar="SECONDS",
    ),
    JobOption(
        "clip_edge_s",
        "A zone visit that begins (ends) within this many seconds of the clip's start (end) is marked cut.",
        default=1.0,
        type=float,
        metavar="SECONDS",
    ),
    JobOption(
        "charts_dir",
        "After post-processing, write per-store footfall-by-hour and dwell histogram PNGs to this local folder.",
        metavar="DIR",
    ),
)

# Seconds shared by consecutive windows when tracking and no --overlap-s is given (at most a quarter of a
# window): enough sampled frames in common (4 at 2 fps) for stitching to join a person's tracks across the
# cut, so no crossing is lost there.
TRACKING_OVERLAP_S = 2.0


@dataclass(frozen=True)
class RetailAnalytics:
    """What the post-processing needs to turn tracks into crossings, visits and occupancy."""

    geometry: RetailGeometry = field(default_factory=RetailGeometry)
    settings: AnalyticsSettings = field(default_factory=AnalyticsSettings)


def analytics_of(job: dict[str, Any]) -> RetailAnalytics:
    """The job options' geometry and tolerances, checked (ConfigError, one line, when bad)."""
    geometry = load_geometry(job.get("geometry"))
    try:
        settings = AnalyticsSettings(
            crossing_hysteresis_s=float(job.get("crossing_hysteresis_s", 1.0)),
            zone_merge_gap_s=float(job.get("zone_merge_gap_s", 1.0)),
            clip_edge_s=float(job.get("clip_edge_s", 1.0)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retail: {exc}") from None
    return RetailAnalytics(geometry, settings)


def _pipeline_defaults(nested: dict[str, Any], job: dict[str, Any]) -> None:
    queries = [q for q in job.get("queries") or [] if q]
    if isinstance(job.get("queries"), str):
        queries = csv_list(job["queries"])
    if not queries:
        raise ConfigError("retail: no queries: pass --queries person,'shopping cart' (or retail.queries in YAML)")
    job["queries"] = queries
    tracked = job.get("track_queries") or []
    if isinstance(tracked, str):
        tracked = csv_list(tracked)
    job["track_queries"] = list(dict.fromkeys(q for q in tracked if q))
    tasks = nested.setdefault("tasks", {})
    given = tasks.get("tasks") or []
    if isinstance(given, str):
        given = csv_list(given)
    ours = [f"count:{q}" for q in queries] + [f"track:{q}" for q in job["track_queries"]]
    tasks["tasks"] = ours + [t for t in given if t not in set(ours)]
    # Without tracking, windows do not overlap, so counts per window add up in the hourly rollup; tracks
    # need an overlap to be stitched across windows (a person crossing at a cut is otherwise lost).
    window = nested.setdefault("window", {})
    if job["track_queries"]:
        try:  # short windows (tests, very dense sampling) get a quarter of their length
            length = float(window.get("window_s") or WindowConfig.model_fields["window_s"].default)
        except (TypeError, ValueError):
            length = TRACKING_OVERLAP_S * 4  # not a number: validation says so below
        window.setdefault("overlap_s", min(TRACKING_OVERLAP_S, length / 4))
    else:
        window.setdefault("overlap_s", 0.0)


def build(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunConfig, dict[str, Any], ClipLayout]:
    parser = build_parser(
        "python -m jobs.retail_counting",
        "Count queries and track people in store camera clips (store=<id>/camera=<id>/<ISO start>.mp4), "
        "with wall-clock times: counts per window and hour, line crossings in and out, zone visits and "
        "dwell, occupancy per minute, and an hourly rollup per store, camera and line/zone.",
        SECTION,
        OPTIONS,
    )
    args = parser.parse_args(argv)
    config, job = resolve(args, SECTION, OPTIONS, _pipeline_defaults)
    try:
        layout = ClipLayout.create(job.get("layout"), job.get("layout_regex"), job.get("naive_timezone") or "UTC")
    except LayoutError as exc:
        raise ConfigError(str(exc)) from None
    return args, config, job, layout


# -------------------------------------------------------------------------------------------------
# Post-processing: pipeline tables -> retail tables


@dataclass
class PostSummary:
    clips: int = 0  # clips written to the retail tables by this run
    not_matching: list[str] = field(default_factory=list)  # ok/partial videos outside the layout
    already_done: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    without_geometry: set[tuple[str, str]] = field(default_factory=set)  # tracked cameras with no lines/zones

    def render(self) -> str:
        lines = [f"retail post-processing: {self.clips} clip(s) added, {self.already_done} already in retail tables"]
        if self.rows_written:
            lines.append("  rows written: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rows_written.items())))
        if self.without_geometry:
            cams = sorted(self.without_geometry)
            lines.append(f"  {len(cams)} tracked camera(s) without geometry (in-view occupancy only): "
                         + ", ".join(f"store={s}/camera={c}" for s, c in cams[:5]) + (" ..." if len(cams) > 5 else ""))
        if self.not_matching:
            lines.append(f"  {len(self.not_matching)} video(s) do not follow the layout, left out: "
                         + ", ".join(self.not_matching[:5]) + (" ..." if len(self.not_matching) > 5 else ""))
        return "\n".join(lines)


def _duck() -> Any:
    import duckdb

    con: Any = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    return con


def _selected_clips(output: str, layout: ClipLayout, done: set[str], endpoint_url: str | None,
                    summary: PostSummary) -> pa.Table:
    """One row per clip to post-process: its newest ok/partial `videos` row, with the layout's keys."""
    videos = read_table(output, "videos", endpoint_url=endpoint_url,
                        columns=["video_id", "uri", "duration_s", "windows", "status", "tasks", "run_id", "processed_at"])
    con = _duck()
    con.register("videos", videos)
    latest = con.sql(
        "SELECT * FROM videos WHERE status IN ('ok', 'partial') "
        "QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY processed_at DESC, run_id DESC) = 1 ORDER BY uri"
    ).to_arrow_table()
    rows = []
    for v in latest.to_pylist():
        if v["video_id"] in done:
            summary.already_done += 1
            continue
        key = layout.parse(v["uri"])
        if key is None:
            summary.not_matching.append(v["uri"])
            continue
        duration = v["duration_s"]
        rows.append({
            "video_id": v["video_id"], "uri": v["uri"], "store": key.store, "camera": key.camera,
            "clip_start": key.clip_start,
            "clip_end": key.clip_start + timedelta(seconds=duration) if duration is not None else None,
            "duration_s": duration, "windows": v["windows"], "status": v["status"], "source_run_id": v["run_id"],
            "tasks": v["tasks"],
        })
    schema = pa.schema([*(RETAIL_TABLES[RETAIL_COMMIT_TABLE].field(n) for n in
                          ("video_id", "uri", "store", "camera", "clip_start", "clip_end", "duration_s", "windows",
                           "status", "source_run_id")), pa.field("tasks", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def tracked_nouns(tasks: str | None) -> list[str]:
    """The nouns a clip's pipeline run tracked, from its `videos.tasks` (comma-separated task names)."""
    return [t.strip()[len("track:"):] for t in (tasks or "").split(",") if t.strip().startswith("track:")]


_TRACK_COLUMNS = ["video_id", "query", "track_id", "window_index", "t", "x_px", "y_px", "x_norm", "y_norm", "run_id"]


def _traffic(output: str, clips: list[dict[str, Any]], counts: pa.Table, analytics: RetailAnalytics,
             endpoint_url: str | None, summary: PostSummary) -> dict[str, list[ClipTraffic]]:
    """The analytics of each clip's tracks (from the run that made its `videos` row), per tracked noun."""
    ids = pa.array([c["video_id"] for c in clips])
    tracks = read_table(output, "tracks", endpoint_url=endpoint_url, columns=_TRACK_COLUMNS,
                        filter=pc.field("video_id").isin(ids))
    source = {c["video_id"]: c["source_run_id"] for c in clips}
    points: dict[tuple[str, str], list[TrackPoint]] = defaultdict(list)
    for r in tracks.to_pylist():
        if source.get(r["video_id"]) == r["run_id"]:
            points[(r["video_id"], r["query"])].append(TrackPoint(
                int(r["track_id"]), int(r["window_index"]), float(r["t"]), float(r["x_px"]), float(r["y_px"]),
                float(r["x_norm"]), float(r["y_norm"])))
    # The run's windows, from the clip's count rows (the job always counts): where their overlaps are split.
    windows: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for r in counts.select(["video_id", "window_index", "t_start", "t_end"]).to_pylist():
        windows[r["video_id"]][int(r["window_index"])] = (float(r["t_start"]), float(r["t_end"]))
    out: dict[str, list[ClipTraffic]] = defaultdict(list)
    for c in clips:
        nouns = tracked_nouns(c["tasks"])
        if not nouns or c["duration_s"] is None:
            continue
        geometry = analytics.geometry.for_camera(c["store"], c["camera"])
        if geometry is None:
            summary.without_geometry.add((c["store"], c["camera"]))
        for noun in nouns:
            key = ClipKey(c["video_id"], c["store"], c["camera"], c["clip_start"], float(c["duration_s"]), noun)
            out[c["video_id"]].append(analyse_clip(key, points.get((c["video_id"], noun), []), geometry,
                                                   windows=windows.get(c["video_id"]) or None,
                                                   settings=analytics.settings))
    return out


_EXTRA = {
    "retail_counts": (
        "counts",
        "v.clip_start + to_microseconds(CAST(round(t.t_start * 1e6) AS BIGINT)) AS wall_start, "
        "v.clip_start + to_microseconds(CAST(round(t.t_end * 1e6) AS BIGINT)) AS wall_end",
    ),
    "retail_points": ("points", "v.clip_start + to_microseconds(CAST(round(t.t * 1e6) AS BIGINT)) AS wall_time"),
    "retail_video_counts": ("video_counts", "v.clip_end AS clip_end"),
}


def _enriched(con: Any, output: str, clips: pa.Table, endpoint_url: str | None) -> dict[str, pa.Table]:
    """The pipeline's rows of these clips (from the run that made each clip's `videos` row) + keys + times."""
    ids = clips.column("video_id")
    out: dict[str, pa.Table] = {}
    for name, (source, extra) in _EXTRA.items():
        rows = read_table(output, source, endpoint_url=endpoint_url, filter=pc.field("video_id").isin(ids))
        con.register("t", rows)
        table = con.sql(
            f"SELECT v.store, v.camera, v.clip_start, t.*, {extra} FROM t "
            "JOIN clips v ON t.video_id = v.video_id AND t.run_id = v.source_run_id"
        ).to_arrow_table()
        con.unregister("t")
        schema = RETAIL_TABLES[name]
        out[name] = table.select(schema.names).cast(schema, safe=False)
    return out


def _hourly(con: Any, counts: pa.Table, run_id: str) -> list[dict[str, Any]]:
    con.register("rc", counts)
    rows = con.sql(
        """
        SELECT store, camera, query, date_trunc('hour', wall_start) AS hour,
               count(*) AS windows, count("count") AS counted_windows,
               sum("count") AS count_sum, max("count") AS count_max, count(DISTINCT video_id) AS videos
        FROM rc GROUP BY ALL ORDER BY ALL
        """
    ).to_arrow_table().to_pylist()
    con.unregister("rc")
    return [{**r, "run_id": run_id} for r in rows]


def postprocess(
    output: str,
    layout: ClipLayout,
    *,
    run_id: str,
    endpoint_url: str | None = None,
    flush_videos: int = 64,
    echo: Any = print,
    analytics: RetailAnalytics | None = None,
) -> PostSummary:
    """Write the retail tables for every ok/partial clip under `output` not yet in `retail_videos`.

    `analytics`: the camera geometry and tolerances for the tracks' analytics (default: no geometry, so
    tracked clips get in-view occupancy only).
    """
    analytics = analytics or RetailAnalytics()
    summary = PostSummary()
    # Its own writer on the output (the pipeline run's lease is given back by then): same run id, a suffix.
    sink = TableSink(output, run_date=run_date_for(run_id), endpoint_url=endpoint_url,
                     tables=RETAIL_TABLES, commit_table=RETAIL_COMMIT_TABLE, writer_id=f"{run_id}-retail",
                     purpose="retail post-processing")
    try:
        _write_clips(sink, output, layout, run_id, endpoint_url, flush_videos, echo, analytics, summary)
    finally:
        sink.close()
    summary.rows_written = dict(sink.rows_written)
    return summary


def _write_clips(sink: TableSink, output: str, layout: ClipLayout, run_id: str, endpoint_url: str | None,
                 flush_videos: int, echo: Any, analytics: RetailAnalytics, summary: PostSummary) -> None:
    summary.recovered = sink.recover()
    if summary.recovered:
        echo(f"retail: removed {summary.recovered} uncommitted part file(s) left by an interrupted run")
    clips = _selected_clips(output, layout, sink.done_video_ids(), endpoint_url, summary)
    if clips.num_rows == 0:
        return
    con = _duck()
    con.register("clips", clips)
    tables = _enriched(con, output, clips, endpoint_url)
    by_video: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for name, table in tables.items():
        for row in table.to_pylist():
            by_video[row["video_id"]][name].append(row)
    now = datetime.now(UTC)
    clip_rows = clips.to_pylist()
    traffic = _traffic(output, clip_rows, tables["retail_counts"], analytics, endpoint_url, summary)
    stamp = {"run_id": run_id}
    for start in range(0, len(clip_rows), flush_videos):
        batch = clip_rows[start : start + flush_videos]
        for clip in batch:
            vid = clip["video_id"]
            # Each clip carries its own hourly rows (sums, counts, maxima: they merge exactly), so a clip
            # another writer committed first is dropped whole, its hourly share with it.
            counts = tables["retail_counts"].filter(pc.equal(tables["retail_counts"].column("video_id"), vid))
            rows: dict[str, list[dict[str, Any]]] = {name: by_video[vid][name] for name in _EXTRA}
            commit = {k: v for k, v in clip.items() if k != "tasks"}
            rows[RETAIL_COMMIT_TABLE] = [{**commit, "run_id": run_id, "processed_at": now}]
            rows["retail_hourly"] = _hourly(con, counts, run_id)
            rows["retail_traffic_hourly"] = [{**r, **stamp} for r in hourly_rollup(traffic[vid])]
            rows["retail_crossings"] = [{**r, **stamp} for t in traffic[vid] for r in crossing_rows(t)]
            rows["retail_zone_visits"] = [{**r, **stamp} for t in traffic[vid] for r in visit_rows(t)]
            rows["retail_occupancy"] = [{**r, **stamp} for t in traffic[vid] for r in occupancy_rows(t)]
            sink.add_video(vid, rows)
        sink.flush()
        summary.clips += len(batch)


def run(config: RunConfig, job: dict[str, Any], layout: ClipLayout, echo: Any = print,
        analytics: RetailAnalytics | None = None) -> int:
    endpoint = config.source.s3_endpoint_url
    analytics = analytics or analytics_of(job)
    exit_code = EXIT_OK
    run_id = config.output.run_id or new_run_id()
    if not job.get("postprocess_only"):
        config = config.model_copy(update={"output": config.output.model_copy(update={"run_id": run_id})})
        skipped: list[str] = []

        def follows_layout(ref: VideoRef) -> bool:
            ok = layout.parse(ref.uri) is not None
            if not ok:
                skipped.append(ref.uri)
            return ok

        summary = run_pipeline(config, echo=echo, video_filter=follows_layout)
        echo(summary.render())
        if skipped:
            echo(f"left out {len(skipped)} video(s) that do not follow the layout: " + ", ".join(skipped[:5])
                 + (" ..." if len(skipped) > 5 else ""))
        exit_code = summary.exit_code
    post = postprocess(config.output.output, layout, run_id=run_id, endpoint_url=endpoint,
                       flush_videos=config.output.flush_videos, echo=echo, analytics=analytics)
    echo(post.render())
    if job.get("charts_dir"):
        from jobs.retail_charts import write_charts

        for path in write_charts(config.output.output, job["charts_dir"], endpoint_url=endpoint):
            echo(f"chart: {path}")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args, config, job, layout = build(argv)
        setup_logging(args.verbose)
        analytics = analytics_of(job)  # bad geometry stops here, before any model work
        if args.print_config:
            print_config(config, SECTION, job)
            return 0
        if not job.get("postprocess_only"):
            check_ready(config)
        elif not config.output.output:
            raise ConfigError("no output: pass --output URL (the tables to post-process)")
        return run(config, job, layout, echo=lambda m: print(m, flush=True), analytics=analytics)

    return run_main(body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
