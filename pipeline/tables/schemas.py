"""Every pipeline output table's schema, in one place (pure: pyarrow only).

Each table is a Hive-partitioned Parquet dataset `<output>/<table>/run_date=YYYY-MM-DD/part-*.parquet`
(the names: `pipeline.tables.layout`). A job's own tables live with the job (e.g. `jobs.retail_tables`)
and join the readers through the registration hook in `pipeline.tables.reader`.
Rows of the result tables carry the run, the model, the exact prompt and the sampling parameters,
so any row can be traced to how it was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# Columns every result row carries (captions, counts, points, tracks, answers, video_counts).
PROVENANCE: list[pa.Field] = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("decoding", pa.string()),  # "greedy" (the only mode: batch outputs must be reproducible)
    pa.field("max_new_tokens", pa.int32()),
    pa.field("sampling_mode", pa.string()),  # frame sampling policy
    pa.field("num_frames", pa.int32()),  # frame budget per window
    pa.field("max_fps", pa.float64()),
    # What produced the row: task, prompt, model, revision, sampling, windows (pipeline.results.work).
    pa.field("work_key", pa.string()),
]


_WINDOW = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("window_index", pa.int32(), nullable=False),
    pa.field("t_start", pa.float64()),
    pa.field("t_end", pa.float64()),
]


_TOKENS = [
    pa.field("frames_used", pa.int32()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("generated_tokens", pa.int32()),
    pa.field("latency_s", pa.float64()),
]


VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),  # display width (after rotation metadata)
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("rotation", pa.int32()),
        pa.field("windows", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # ok | partial | failed
        pa.field("error_summary", pa.string()),
        pa.field("decoder", pa.string()),
        pa.field("tasks", pa.string()),
        pa.field("source_metadata", pa.string()),  # JSON: shard sidecar or manifest columns
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC")),
        # The work this commit completed: one key per task asked of the video (pipeline.results.work).
        pa.field("work_keys", pa.list_(pa.string())),
    ]
)


CAPTIONS = pa.schema(
    [
        *_WINDOW,
        pa.field("caption", pa.string()),
        pa.field("truncated", pa.bool_()),
        *_TOKENS,
        *PROVENANCE,
    ]
)


ERRORS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("window_index", pa.int32()),  # null when the whole video failed
        pa.field("task", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # fetch | probe | decode | infer
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


COUNTS = pa.schema(
    [
        *_WINDOW,
        pa.field("query", pa.string(), nullable=False),
        pa.field("count", pa.int32()),  # null when the answer gives neither points nor a number
        pa.field("count_method", pa.string()),  # points | text_number | none
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("unparsed", pa.string()),
        *_TOKENS,
        *PROVENANCE,
    ]
)


POINTS = pa.schema(
    [
        *_WINDOW,
        pa.field("task", pa.string(), nullable=False),  # count | point | ask
        pa.field("query", pa.string(), nullable=False),
        pa.field("object_index", pa.int32()),  # the model's object id within the window (null if omitted)
        pa.field("t", pa.float64(), nullable=False),  # absolute seconds in the video
        pa.field("x_px", pa.float64(), nullable=False),  # pixels of the display frame
        pa.field("y_px", pa.float64(), nullable=False),
        pa.field("x_norm", pa.float64(), nullable=False),  # 0..1 of the display frame
        pa.field("y_norm", pa.float64(), nullable=False),
        pa.field("frame_t", pa.float64()),  # nearest sampled frame time (absolute s)
        pa.field("frame_dt", pa.float64()),  # |t - frame_t|
        pa.field("frame_matched", pa.bool_()),  # false: the time matches no sampled frame
        pa.field("parse_status", pa.string(), nullable=False),
        *PROVENANCE,
    ]
)


TRACKS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),  # video-wide, stitched across windows
        pa.field("window_index", pa.int32(), nullable=False),
        pa.field("local_id", pa.int32()),  # the id the model used inside the window
        pa.field("t", pa.float64(), nullable=False),
        pa.field("x_px", pa.float64(), nullable=False),
        pa.field("y_px", pa.float64(), nullable=False),
        pa.field("x_norm", pa.float64(), nullable=False),
        pa.field("y_norm", pa.float64(), nullable=False),
        pa.field("frame_matched", pa.bool_()),
        pa.field("parse_status", pa.string(), nullable=False),
        *PROVENANCE,
    ]
)


ANSWERS = pa.schema(
    [
        *_WINDOW,
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("num_points", pa.int32()),
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("truncated", pa.bool_()),
        *_TOKENS,
        *PROVENANCE,
    ]
)


VIDEO_COUNTS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),  # count | track
        pa.field("distinct_objects", pa.int32()),  # after stitching across windows
        pa.field("max_window_count", pa.int32()),  # the largest per-window count
        pa.field("windows", pa.int32()),
        *PROVENANCE,
    ]
)


# One row per run (`pipeline.run.record.write_runs_row`): what ran, how, on what, and how it went. Written
# once at the end of a run as its own file `runs/run_date=D/run-<run_id>.parquet`, outside the per-video
# part protocol (its name never matches `part-<key>.parquet`, so `TableSink.recover()` leaves it alone).
RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("command", pa.string()),  # the command line (credentials in URLs redacted)
        pa.field("started_at", pa.timestamp("ms", tz="UTC")),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        pa.field("status", pa.string()),  # ok | partial | failed (as the exit code) | error (the run broke)
        pa.field("exit_code", pa.int32()),
        pa.field("error", pa.string()),  # why the run itself broke (status error), else null
        pa.field("input", pa.string()),
        pa.field("output", pa.string()),
        pa.field("config", pa.string()),  # JSON of the resolved config, secrets redacted
        pa.field("package_versions", pa.string()),  # JSON {package: version}
        pa.field("model_id", pa.string()),
        pa.field("model_revision", pa.string()),  # requested revision, or the Hub snapshot's commit
        pa.field("git_commit", pa.string()),  # of the pipeline's source tree, when it is a git checkout
        pa.field("hostname", pa.string()),
        pa.field("plan", pa.string()),  # model actors, GPUs, decode tasks
        pa.field("videos_listed", pa.int32()),
        pa.field("videos_skipped", pa.int32()),
        pa.field("videos_ok", pa.int32()),
        pa.field("videos_partial", pa.int32()),
        pa.field("videos_failed", pa.int32()),
        pa.field("windows", pa.int64()),
        pa.field("answers", pa.int64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("generated_tokens", pa.int64()),
        pa.field("errors", pa.string()),  # JSON {"stage:ErrorType": count}
        pa.field("rows_written", pa.string()),  # JSON {table: rows}
        pa.field("elapsed_s", pa.float64()),
        pa.field("decode_s", pa.float64()),  # summed wall time of the decode tasks
        pa.field("model_s", pa.float64()),  # summed wall time of the model actors' calls
        pa.field("generate_s", pa.float64()),  # summed generate latency (per batch, not per answer)
        pa.field("write_s", pa.float64()),  # driver time collecting and writing tables
    ]
)


TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "captions": CAPTIONS,
    "errors": ERRORS,
    "counts": COUNTS,
    "points": POINTS,
    "tracks": TRACKS,
    "answers": ANSWERS,
    "video_counts": VIDEO_COUNTS,
    "runs": RUNS,  # not part of the per-video commit protocol: see RUNS
}


# Written last in every flush: a video is done exactly when its `videos` row exists.
COMMIT_TABLE = "videos"


@dataclass(frozen=True)
class TableGroup:
    """Tables one `TableSink` writes together: every flush writes one part file per table, all with one
    key, and the commit table's file last, so a part is committed exactly when that file exists.

    The pipeline's tables are `PIPELINE_GROUP`; a job registers its own group for readers through
    the hook in `pipeline.tables.reader`.
    """

    name: str
    commit_table: str
    schemas: Mapping[str, pa.Schema]

    def __post_init__(self) -> None:
        if self.commit_table not in self.schemas:
            raise ValueError(f"table group {self.name!r}: commit table {self.commit_table!r} is not one of its tables")


PIPELINE_GROUP = TableGroup("pipeline", COMMIT_TABLE, TABLES)


def to_table(name: str, rows: Iterable[Mapping[str, Any]], *, schema: pa.Schema | None = None) -> pa.Table:
    """Rows (dicts) -> a Table with exactly the table's schema; unknown keys are an error.

    `schema` is the table's declaration when it is not one of the pipeline's `TABLES` (a job's table).
    """
    schema = schema if schema is not None else TABLES[name]
    rows = list(rows)
    for row in rows:
        extra = set(row) - set(schema.names)
        if extra:
            raise KeyError(f"table {name}: unknown columns {sorted(extra)}")
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)
