"""Query: DuckDB over the output tables, local or on S3.

`open_tables(output)` gives a DuckDB connection in which every table under `output` is a view named
after it (`videos`, `captions`, `counts`, `points`, `tracks`, ... and any other table folder such as the
retail job's `retail_hourly`, plus `runs`). Each view is a pyarrow dataset over the table's Parquet files
(through fsspec, so `s3://` needs no DuckDB extension download), with the Hive partition column
`run_date` typed as a DATE. Every table of `pipeline.tables.schemas`, and of every job registered
through the hook in `pipeline.tables.reader`, exists as a view even when no run wrote it yet (then it is
empty), so queries and joins do not depend on which tasks have run.

Only committed rows are visible: a part file whose commit record (`videos`, or a job's own commit table)
is missing (a run killed mid-flush, or a flush in progress) is left out, exactly the files
`TableSink.recover()` would delete.

Named queries (`named_queries()`: the pipeline's `CORE_NAMED` plus those jobs register, e.g. the retail
job's `hourly_counts`) are the questions people ask most often; `--named NAME --param k=v` runs one with
typed, bound parameters (never pasted into the SQL text).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.tables.reader import NamedQuery, Param, QueryError, TableRegistryError, Tables, open_tables
from pipeline.tables.reader import registered as registered_tables
from pipeline.tables.views import views_sql

FORMATS = ("table", "csv", "json", "jsonl", "parquet")


def _video_errors(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    del t
    # A video's current state is its newest `videos` row; its errors are those of the same run.
    sql = """
        WITH latest AS (
            SELECT * FROM videos
            QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY processed_at DESC) = 1
        )
        SELECT v.video_id, v.uri, v.status, e.stage, e.error_type, e.window_index, e.task,
               coalesce(e.message, v.error_summary) AS why, v.run_id
        FROM latest v LEFT JOIN errors e ON e.video_id = v.video_id AND e.run_id = v.run_id
        WHERE v.status <> 'ok' AND ($status IS NULL OR v.status = $status)
        ORDER BY v.status, v.uri, e.window_index NULLS FIRST, e.task
    """
    return sql, {"status": p["status"]}


def _word_pattern(word: str) -> str:
    # Whole-word, case-insensitive match (RE2 syntax: escape its metacharacters).
    escaped = re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", word.strip())
    return r"\b" + escaped + r"\b"


def _captions_with(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    del t
    sql = """
        SELECT c.video_id, v.uri, c.window_index, c.t_start, c.t_end, c.caption
        FROM captions c LEFT JOIN (SELECT DISTINCT video_id, uri FROM videos) v USING (video_id)
        WHERE regexp_matches(c.caption, $pattern, 'i')
        ORDER BY v.uri, c.window_index
    """
    return sql, {"pattern": _word_pattern(str(p["word"]))}


def _long_tracks(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    del t
    sql = """
        SELECT k.video_id, v.uri, k.query, k.track_id,
               min(k.t) AS first_t, max(k.t) AS last_t, max(k.t) - min(k.t) AS seconds,
               count(*) AS points, count(DISTINCT k.window_index) AS windows
        FROM tracks k LEFT JOIN (SELECT DISTINCT video_id, uri FROM videos) v USING (video_id)
        WHERE ($query IS NULL OR k.query = $query)
        GROUP BY ALL
        HAVING max(k.t) - min(k.t) > $seconds
        ORDER BY seconds DESC, k.video_id, k.track_id
    """
    return sql, {"seconds": float(p["seconds"]), "query": p["query"]}


def _recent_runs(t: Tables, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    del t
    sql = """
        SELECT run_id, started_at, status, videos_ok, videos_partial, videos_failed, windows,
               prompt_tokens, generated_tokens, elapsed_s, decode_s, model_s, model_id, git_commit
        FROM runs ORDER BY started_at DESC LIMIT $limit
    """
    return sql, {"limit": int(p["limit"])}


# The pipeline's own named queries; a job adds its own through the registration hook
# (`pipeline.tables.reader`, e.g. the retail job's `hourly_counts`): see `named_queries()`.
CORE_NAMED: dict[str, NamedQuery] = {
    q.name: q
    for q in (
        NamedQuery(
            "video_errors",
            "Videos that failed or were only partly processed, one row per error, with why.",
            (Param("status", "only 'failed' or only 'partial'"),),
            _video_errors,
        ),
        NamedQuery(
            "captions_with",
            "Caption windows containing a word (whole word, case-insensitive).",
            (Param("word", "the word (or phrase) to look for", required=True),),
            _captions_with,
        ),
        NamedQuery(
            "long_tracks",
            "Tracks that last longer than N seconds (last point time minus first point time).",
            (
                Param("seconds", "minimum track length in seconds", type=float, default=5.0),
                Param("query", "only tracks of this noun"),
            ),
            _long_tracks,
        ),
        NamedQuery(
            "recent_runs",
            "The newest runs from the `runs` table: outcome, tokens and time per stage.",
            (Param("limit", "how many runs", type=int, default=10),),
            _recent_runs,
        ),
    )
}


def named_queries() -> dict[str, NamedQuery]:
    """The pipeline's named queries, then those the installed jobs registered."""
    registered = registered_tables().queries
    clash = sorted(set(CORE_NAMED) & set(registered))
    if clash:
        raise TableRegistryError(f"named query name(s) {clash} are the pipeline's own: a job must use other names")
    return {**CORE_NAMED, **registered}


def run_named(tables: Tables, name: str, given: Mapping[str, str]) -> pa.Table:
    named = named_queries()
    if name not in named:
        raise QueryError(f"no named query {name!r}; `query --list` shows: {', '.join(named)}")
    q = named[name]
    sql, params = q.build(tables, q.parse_params(given))
    return tables.sql(sql, params)


def describe_named() -> str:
    lines = []
    for q in named_queries().values():
        lines.append(f"{q.name}: {q.description}")
        for p in q.params:
            extra = " (required)" if p.required else (f" (default: {p.default})" if p.default is not None else "")
            lines.append(f"    --param {p.name}=...  {p.help}{extra}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(_plain(value))


def write_result(table: pa.Table, fmt: str, *, out: str | None = None, stream: IO[str] | None = None,
                 max_rows: int = 100) -> None:
    """Print or save a result: a terminal table, CSV, JSON (array), JSON lines, or Parquet (needs `out`)."""
    stream = stream or sys.stdout
    if fmt == "parquet":
        if not out:
            raise QueryError("--format parquet needs --out FILE.parquet")
        pq.write_table(table, out)
        print(f"{table.num_rows} row(s) written to {out}", file=sys.stderr)
        return
    rows = table.to_pylist()
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table as RichTable

        rt = RichTable(show_lines=False, header_style="bold")
        for name in table.column_names:
            rt.add_column(name, overflow="ellipsis", max_width=60)
        for row in rows[:max_rows]:
            rt.add_row(*(_cell(row[c]) for c in table.column_names))
        console = Console(file=stream, width=max(80, Console().width))
        console.print(rt)
        more = f" (showing {max_rows}; use --format csv/json or --max-rows)" if len(rows) > max_rows else ""
        console.print(f"{len(rows)} row(s){more}")
        return
    buf: IO[str] = open(out, "w", newline="") if out else io.StringIO()  # noqa: SIM115
    try:
        if fmt == "csv":
            writer = csv.writer(buf)
            writer.writerow(table.column_names)
            for row in rows:
                writer.writerow(["" if row[c] is None else _plain(row[c]) for c in table.column_names])
        elif fmt == "json":
            json.dump([_plain(r) for r in rows], buf, indent=1)
            buf.write("\n")
        elif fmt == "jsonl":
            for r in rows:
                buf.write(json.dumps(_plain(r)) + "\n")
        else:
            raise QueryError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        if not out:
            assert isinstance(buf, io.StringIO)
            stream.write(buf.getvalue())
    finally:
        buf.close()


def command(args: Any) -> int:
    """Run `python -m pipeline query ...`; returns the exit code (2: bad query or arguments)."""
    try:
        if args.list:
            print(describe_named())
            return 0
        if not args.output:
            raise QueryError("pass --output URL (the folder or s3:// prefix a run wrote its tables to)")
        if getattr(args, "views_sql", False):
            tables = open_tables(args.output, endpoint_url=args.s3_endpoint_url)
            print(views_sql(args.output, registered_tables().all_groups, [t for t in tables.names if tables.present(t)]),
                  end="")
            return 0
        if bool(args.sql) == bool(args.named):
            raise QueryError('pass either SQL (e.g. "SELECT * FROM videos") or --named NAME (see --list)')
        given: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise QueryError(f"--param {item!r}: expected KEY=VALUE")
            given[key.strip()] = value
        if given and not args.named:
            raise QueryError("--param goes with --named; in SQL write the value itself")
        tables = open_tables(args.output, endpoint_url=args.s3_endpoint_url,
                             include_uncommitted=args.include_uncommitted)
        result = run_named(tables, args.named, given) if args.named else tables.sql(args.sql)
        write_result(result, args.format, out=args.out, max_rows=args.max_rows)
        if tables.skipped_uncommitted:
            print(f"note: {tables.skipped_uncommitted} uncommitted part file(s) left out "
                  "(--include-uncommitted shows them)", file=sys.stderr)
    except QueryError as exc:
        print(f"query error: {exc}", file=sys.stderr)
        return 2
    return 0
