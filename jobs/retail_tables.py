"""The retail job's tables (`jobs.retail_counting`) and its named query, registered with the core.

`register` is this job's registration hook (`pipeline.tables.reader`), declared in pyproject.toml:

    [project.entry-points."molmo_batch.tables"]
    retail = "jobs.retail_tables:register"

so `pipeline query` over a retail output shows these tables as views (committed parts only,
`retail_videos` being their commit record) and runs `--named hourly_counts`, `footfall_hourly`,
`busiest_zones` and `dwell_distribution`, without the core importing this job.
"""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa

from pipeline.tables.reader import NamedQuery, Param, QueryError, Registry, Tables
from pipeline.tables.schemas import COUNTS, POINTS, VIDEO_COUNTS, TableGroup

_UTC_MS = pa.timestamp("ms", tz="UTC")


# Where a clip comes from, parsed from its path
# (s3://BUCKET/store=<id>/camera=<id>/<clip start ISO 8601>.mp4 by default, see jobs.layout).
_RETAIL_KEYS: list[pa.Field] = [
    pa.field("store", pa.string(), nullable=False),
    pa.field("camera", pa.string(), nullable=False),
    pa.field("clip_start", _UTC_MS, nullable=False),  # wall-clock time of the clip's first frame
]


# Commit record of the retail job: a clip is post-processed exactly when its row exists.
RETAIL_VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        *_RETAIL_KEYS,
        pa.field("clip_end", _UTC_MS),  # clip_start + duration
        pa.field("duration_s", pa.float64()),
        pa.field("windows", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # the pipeline's status: ok | partial
        pa.field("source_run_id", pa.string(), nullable=False),  # the pipeline run whose rows were used
        pa.field("run_id", pa.string(), nullable=False),  # the job run that wrote this row
        pa.field("processed_at", _UTC_MS),
    ]
)


# The pipeline's grounded tables, each with the clip's keys and wall-clock times added.
RETAIL_COUNTS = pa.schema(
    [
        *_RETAIL_KEYS,
        *COUNTS,
        pa.field("wall_start", _UTC_MS),  # clip_start + t_start
        pa.field("wall_end", _UTC_MS),  # clip_start + t_end
    ]
)


RETAIL_POINTS = pa.schema([*_RETAIL_KEYS, *POINTS, pa.field("wall_time", _UTC_MS)])  # clip_start + t


RETAIL_VIDEO_COUNTS = pa.schema([*_RETAIL_KEYS, *VIDEO_COUNTS, pa.field("clip_end", _UTC_MS)])


# Hourly rollup per store, camera and query of the windows whose wall_start falls in the hour. Each
# part holds the rollup of the clips committed with it, so an hour's clips processed in different
# runs give several rows for that hour: all columns are mergeable (sum, max), see jobs.retail_counting.
RETAIL_HOURLY = pa.schema(
    [
        pa.field("store", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("hour", _UTC_MS, nullable=False),  # start of the hour (UTC)
        pa.field("windows", pa.int32(), nullable=False),  # windows starting in the hour
        pa.field("counted_windows", pa.int32(), nullable=False),  # of those, windows with a count
        pa.field("count_sum", pa.int64()),  # sum of the per-window counts (null: no window had one)
        pa.field("count_max", pa.int32()),  # largest per-window count
        pa.field("videos", pa.int32(), nullable=False),  # clips contributing windows
        pa.field("run_id", pa.string(), nullable=False),  # the job run that wrote the row
    ]
)


# The analytics of the clips' tracks (`jobs.retail_analytics`: how each is computed). Times `t*` are seconds
# from the clip's start, `wall_*` the wall-clock (UTC) times; `query` is the tracked noun (track:<query>).
_CLIP = [*_RETAIL_KEYS, pa.field("video_id", pa.string(), nullable=False), pa.field("query", pa.string(), nullable=False)]


RETAIL_CROSSINGS = pa.schema(
    [
        *_CLIP,
        pa.field("line", pa.string(), nullable=False),  # the camera geometry's line name
        pa.field("track_id", pa.int32(), nullable=False),  # the tracks table's video-wide track id
        pa.field("direction", pa.string(), nullable=False),  # in | out (towards / away from the line's in_side)
        pa.field("t", pa.float64(), nullable=False),  # where the track's segment meets the line (interpolated)
        pa.field("wall_time", _UTC_MS, nullable=False),
        pa.field("x_px", pa.float64()),  # the crossing point, display pixels
        pa.field("y_px", pa.float64()),
        pa.field("segment_dt_s", pa.float64()),  # time between the two track points around the crossing (a gap if large)
        pa.field("run_id", pa.string(), nullable=False),  # the job run that wrote the row
    ]
)


RETAIL_ZONE_VISITS = pa.schema(
    [
        *_CLIP,
        pa.field("zone", pa.string(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("t_enter", pa.float64(), nullable=False),
        pa.field("t_exit", pa.float64(), nullable=False),
        pa.field("wall_enter", _UTC_MS, nullable=False),
        pa.field("wall_exit", _UTC_MS, nullable=False),
        pa.field("dwell_s", pa.float64(), nullable=False),  # t_exit - t_enter
        pa.field("cut_at_start", pa.bool_(), nullable=False),  # in the zone when the clip began: dwell is a lower bound
        pa.field("cut_at_end", pa.bool_(), nullable=False),  # still in the zone when the clip ended
        pa.field("points", pa.int32()),  # track points inside the zone during the visit
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


RETAIL_OCCUPANCY = pa.schema(
    [
        *(f for f in _CLIP if f.name != "clip_start"),
        pa.field("minute", _UTC_MS, nullable=False),  # start of the wall-clock minute
        pa.field("kind", pa.string(), nullable=False),  # view (the whole picture) | zone
        pa.field("name", pa.string(), nullable=False),  # the zone's name, or "view"
        pa.field("observed_s", pa.float64(), nullable=False),  # seconds of the minute this clip covers
        pa.field("person_seconds", pa.float64(), nullable=False),  # presence summed over people
        pa.field("tracks", pa.int32(), nullable=False),  # people present at some moment of the minute
        pa.field("max_present", pa.int32(), nullable=False),  # most people present at one moment
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


# Hourly rollup of the analytics per store, camera, query, line/zone/view and hour: only sums, counts,
# minima and maxima, so the rows of one hour from several runs merge exactly (`TRAFFIC_MERGE_SQL`). One
# part's rows cover the clips committed with it; every line, zone and the view get a row (zeros included)
# for each hour a clip covers. Columns that do not apply to a kind are null.
RETAIL_TRAFFIC_HOURLY = pa.schema(
    [
        pa.field("store", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # line | zone | view
        pa.field("name", pa.string(), nullable=False),  # the line's or zone's name, or "view"
        pa.field("hour", _UTC_MS, nullable=False),  # start of the hour (UTC)
        pa.field("clips", pa.int32(), nullable=False),  # clips covering (part of) the hour
        pa.field("tracks", pa.int32(), nullable=False),  # (clip, track) pairs: crossing / entering / in view
        pa.field("crossings_in", pa.int32()),  # line: crossings towards the in side, by crossing time
        pa.field("crossings_out", pa.int32()),
        pa.field("visits", pa.int32()),  # zone: visits beginning in the hour
        pa.field("visits_cut", pa.int32()),  # of those, cut at a clip's start or end (dwell unknown)
        pa.field("dwell_sum_s", pa.float64()),  # zone: over the complete visits (visits - visits_cut)
        pa.field("dwell_sq_sum_s2", pa.float64()),  # sum of squared dwell: standard deviation after merging
        pa.field("dwell_min_s", pa.float64()),
        pa.field("dwell_max_s", pa.float64()),
        pa.field("person_seconds", pa.float64()),  # zone / view: presence summed over people
        pa.field("observed_s", pa.float64()),  # seconds of the hour covered by clips
        pa.field("occupancy_max", pa.int32()),  # most people present at one moment
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


# How `retail_traffic_hourly`'s rows of one hour merge: exact, whatever runs wrote them.
TRAFFIC_MERGE_SQL = """
    SELECT store, camera, query, kind, name, hour,
           sum(clips) AS clips, sum(tracks) AS tracks,
           sum(crossings_in) AS crossings_in, sum(crossings_out) AS crossings_out,
           sum(visits) AS visits, sum(visits_cut) AS visits_cut,
           sum(dwell_sum_s) AS dwell_sum_s, sum(dwell_sq_sum_s2) AS dwell_sq_sum_s2,
           min(dwell_min_s) AS dwell_min_s, max(dwell_max_s) AS dwell_max_s,
           sum(person_seconds) AS person_seconds, sum(observed_s) AS observed_s,
           max(occupancy_max) AS occupancy_max
    FROM retail_traffic_hourly
    GROUP BY ALL
"""


RETAIL_TABLES: dict[str, pa.Schema] = {
    "retail_videos": RETAIL_VIDEOS,
    "retail_counts": RETAIL_COUNTS,
    "retail_points": RETAIL_POINTS,
    "retail_video_counts": RETAIL_VIDEO_COUNTS,
    "retail_hourly": RETAIL_HOURLY,
    "retail_crossings": RETAIL_CROSSINGS,
    "retail_zone_visits": RETAIL_ZONE_VISITS,
    "retail_occupancy": RETAIL_OCCUPANCY,
    "retail_traffic_hourly": RETAIL_TRAFFIC_HOURLY,
}


RETAIL_COMMIT_TABLE = "retail_videos"


RETAIL_GROUP = TableGroup("retail", RETAIL_COMMIT_TABLE, RETAIL_TABLES)


def _need(t: Tables, query: str, table: str) -> None:
    if not t.present(table):
        have = ", ".join(n for n in t.names if t.present(n)) or "none"
        raise QueryError(
            f"named query {query!r} reads the retail job's table `{table}`, which has no committed rows "
            f"under {t.output} (tables with rows there: {have}). Run the retail job on this output first: "
            "python -m jobs.retail_counting --help"
        )


def _hourly_counts(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _need(t, "hourly_counts", "retail_hourly")
    # One row per part and hour: clips of one hour committed in different runs give several rows, and
    # every column merges exactly (sums and a max), as `jobs.retail_counting` documents.
    sql = """
        SELECT store, camera, query, hour,
               sum(windows) AS windows, sum(counted_windows) AS counted_windows,
               sum(count_sum) AS count_sum, max(count_max) AS count_max,
               round(sum(count_sum) / nullif(sum(counted_windows), 0), 3) AS mean_count,
               sum(videos) AS videos
        FROM retail_hourly
        WHERE ($store IS NULL OR store = $store) AND ($camera IS NULL OR camera = $camera)
          AND ($query IS NULL OR query = $query) AND ($day IS NULL OR CAST(hour AS DATE) = CAST($day AS DATE))
        GROUP BY ALL
        ORDER BY store, camera, query, hour
    """
    return sql, {k: p[k] for k in ("store", "camera", "query", "day")}


HOURLY_COUNTS = NamedQuery(
    "hourly_counts",
    "Counts per hour per store, camera and query (the retail job's `retail_hourly`, merged).",
    (
        Param("store", "only this store"),
        Param("camera", "only this camera"),
        Param("query", "only this counted noun"),
        Param("day", "only hours of this UTC day (YYYY-MM-DD)"),
    ),
    _hourly_counts,
)


_WHERE_STORE_CAMERA_DAY = """
        ($store IS NULL OR store = $store) AND ($camera IS NULL OR camera = $camera)
        AND ($query IS NULL OR query = $query) AND ($day IS NULL OR CAST(hour AS DATE) = CAST($day AS DATE))
"""


def _footfall_hourly(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _need(t, "footfall_hourly", "retail_traffic_hourly")
    sql = f"""
        SELECT store, camera, name AS line, hour, crossings_in AS people_in, crossings_out AS people_out,
               crossings_in - crossings_out AS net_in, tracks, clips
        FROM ({TRAFFIC_MERGE_SQL}) WHERE kind = 'line' AND ($line IS NULL OR name = $line) AND {_WHERE_STORE_CAMERA_DAY}
        ORDER BY store, camera, line, hour
    """
    return sql, {k: p[k] for k in ("store", "camera", "line", "query", "day")}


def _busiest_zones(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _need(t, "busiest_zones", "retail_traffic_hourly")
    sql = f"""
        SELECT store, camera, name AS zone, sum(visits) AS visits, sum(tracks) AS visitors,
               round(sum(person_seconds) / 60, 1) AS person_minutes,
               round(sum(person_seconds) / nullif(sum(observed_s), 0), 3) AS mean_occupancy,
               max(occupancy_max) AS peak_occupancy,
               round(sum(dwell_sum_s) / nullif(sum(visits) - sum(visits_cut), 0), 1) AS mean_dwell_s
        FROM ({TRAFFIC_MERGE_SQL}) WHERE kind = 'zone' AND {_WHERE_STORE_CAMERA_DAY}
        GROUP BY store, camera, zone
        ORDER BY person_minutes DESC, visits DESC, store, camera, zone
    """
    return sql, {k: p[k] for k in ("store", "camera", "query", "day")}


# Dwell histogram buckets (seconds): the lower edges of the `dwell_distribution` query's `histogram`
# ([0, 10), [10, 30), ..., [1800, inf)) and of the job's chart.
DWELL_BUCKETS_S = (0, 10, 30, 60, 120, 300, 600, 1800)


def _dwell_distribution(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _need(t, "dwell_distribution", "retail_zone_visits")
    bounds = [*DWELL_BUCKETS_S, None]
    buckets = ", ".join(f"count(*) FILTER (WHERE dwell_s >= {lo}" + (f" AND dwell_s < {hi})" if hi is not None else ")")
                        for lo, hi in itertools.pairwise(bounds))
    sql = f"""
        WITH visits AS (
            SELECT * FROM retail_zone_visits
            WHERE ($store IS NULL OR store = $store) AND ($camera IS NULL OR camera = $camera)
              AND ($query IS NULL OR query = $query) AND ($zone IS NULL OR zone = $zone)
              AND ($day IS NULL OR CAST(wall_enter AS DATE) = CAST($day AS DATE))
              AND ($include_cut OR NOT (cut_at_start OR cut_at_end))
        )
        SELECT store, camera, zone, count(*) AS visits,
               round(min(dwell_s), 1) AS min_s, round(quantile_cont(dwell_s, 0.5), 1) AS p50_s,
               round(quantile_cont(dwell_s, 0.9), 1) AS p90_s, round(quantile_cont(dwell_s, 0.95), 1) AS p95_s,
               round(max(dwell_s), 1) AS max_s, round(avg(dwell_s), 1) AS mean_s,
               [{buckets}] AS histogram
        FROM visits GROUP BY store, camera, zone ORDER BY store, camera, zone
    """
    return sql, {k: p[k] for k in ("store", "camera", "query", "zone", "day", "include_cut")}


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


_STORE = Param("store", "only this store")
_CAMERA = Param("camera", "only this camera")
_QUERY = Param("query", "only this tracked noun (default: all)")
_DAY = Param("day", "only hours of this UTC day (YYYY-MM-DD)")

FOOTFALL_HOURLY = NamedQuery(
    "footfall_hourly",
    "People in and out per hour, store, camera and line (`retail_traffic_hourly`, merged over runs).",
    (_STORE, _CAMERA, Param("line", "only this line"), _QUERY, _DAY),
    _footfall_hourly,
)

BUSIEST_ZONES = NamedQuery(
    "busiest_zones",
    "Zones ranked by person-minutes: visits, visitors, mean and peak occupancy, mean dwell.",
    (_STORE, _CAMERA, _QUERY, _DAY),
    _busiest_zones,
)

DWELL_DISTRIBUTION = NamedQuery(
    "dwell_distribution",
    "Dwell per zone from every visit: exact percentiles and a histogram (visits lasting 0-10 s, 10-30 s, 30-60 s, "
    "1-2, 2-5, 5-10, 10-30 min, 30 min or more; complete visits only unless include_cut=true).",
    (_STORE, _CAMERA, _QUERY, Param("zone", "only this zone"), _DAY,
     Param("include_cut", "also visits cut at a clip's start or end (true/false)", type=_flag, default=False)),
    _dwell_distribution,
)


def register(registry: Registry) -> None:
    """The registration hook: the retail tables and their named queries for `pipeline query`."""
    registry.add_tables(RETAIL_GROUP)
    for query in (HOURLY_COUNTS, FOOTFALL_HOURLY, BUSIEST_ZONES, DWELL_DISTRIBUTION):
        registry.add_query(query)
