"""The retail job's tables (`jobs.retail_counting`) and its named query, registered with the core.

`register` is this job's registration hook (`pipeline.tables.reader`), declared in pyproject.toml:

    [project.entry-points."molmo_batch.tables"]
    retail = "jobs.retail_tables:register"

so `pipeline query` over a retail output shows these tables as views (committed parts only,
`retail_videos` being their commit record) and runs `--named hourly_counts`, without the core
importing this job.
"""

from __future__ import annotations

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


RETAIL_TABLES: dict[str, pa.Schema] = {
    "retail_videos": RETAIL_VIDEOS,
    "retail_counts": RETAIL_COUNTS,
    "retail_points": RETAIL_POINTS,
    "retail_video_counts": RETAIL_VIDEO_COUNTS,
    "retail_hourly": RETAIL_HOURLY,
}


RETAIL_COMMIT_TABLE = "retail_videos"


RETAIL_GROUP = TableGroup("retail", RETAIL_COMMIT_TABLE, RETAIL_TABLES)


def _hourly_counts(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not t.present("retail_hourly"):
        have = ", ".join(n for n in t.names if t.present(n)) or "none"
        raise QueryError(
            "named query 'hourly_counts' reads the retail job's table `retail_hourly`, which has no committed rows "
            f"under {t.output} (tables with rows there: {have}). Run the retail job on this output first: "
            "python -m jobs.retail_counting --help"
        )
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


def register(registry: Registry) -> None:
    """The registration hook: the retail tables and `hourly_counts` for `pipeline query`."""
    registry.add_tables(RETAIL_GROUP)
    registry.add_query(HOURLY_COUNTS)
