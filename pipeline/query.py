"""Query: DuckDB over the output tables, local or on S3.

`open_tables(output)` gives a DuckDB connection in which every table under `output` is a view named
after it (`videos`, `captions`, `counts`, `points`, `tracks`, ... and any other table folder such as the
retail job's `retail_hourly`, plus `runs`). Each view is a pyarrow dataset over the table's Parquet files
(through fsspec, so `s3://` needs no DuckDB extension download), with the Hive partition column
`run_date` typed as a DATE. Every table of `pipeline.schemas` exists as a view even when no run wrote it
yet (then it is empty), so queries and joins do not depend on which tasks have run.

Only committed rows are visible: a part file whose `videos` commit record is missing (a run killed
mid-flush, or a flush in progress) is left out, exactly the files `TableSink.recover()` would delete.

Named queries (`NAMED`) are the questions people ask most often; `--named NAME --param k=v` runs one
with typed, bound parameters (never pasted into the SQL text).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.schemas import COMMIT_TABLE, JOB_TABLES, RETAIL_COMMIT_TABLE, RETAIL_TABLES, TABLES
from pipeline.storage import get_fs

FORMATS = ("table", "csv", "json", "jsonl", "parquet")
# The name `TableSink` gives a committed part's files (same key in every table of one flush).
_PART_RE = re.compile(r"part-([0-9a-f]{24})\.parquet$")
_RUN_DATE = pa.field("run_date", pa.date32())
KNOWN_TABLES: dict[str, pa.Schema] = {**TABLES, **JOB_TABLES}
# Each group of tables is committed by its own commit table's part files (see pipeline.sink).
_COMMIT_GROUPS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset(TABLES), COMMIT_TABLE),
    (frozenset(RETAIL_TABLES), RETAIL_COMMIT_TABLE),
)


class QueryError(RuntimeError):
    """A query that cannot run as asked (bad SQL, missing table, bad parameter): the message says why."""


@dataclass
class Tables:
    """A DuckDB connection with one view per output table."""

    con: Any
    output: str
    files: dict[str, int] = field(default_factory=dict)  # table -> Parquet files behind its view
    skipped_uncommitted: int = 0

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    def present(self, table: str) -> bool:
        """True when the table has at least one committed file (an empty view does not count)."""
        return self.files.get(table, 0) > 0

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run `query` (with `$name` parameters) and return the result as an Arrow table."""
        try:
            rel = self.con.sql(query, params=dict(params) if params else None)
            if rel is None:  # a statement without a result (e.g. SET)
                return pa.table({})
            return rel.to_arrow_table()
        except Exception as exc:  # duckdb's errors carry a readable message (and a caret)
            raise QueryError(f"{type(exc).__name__}: {exc}".rstrip()) from None


def _list_table_files(fs: Any, root: str) -> dict[str, list[str]]:
    """Table folder -> its Parquet files (hidden and temporary files excluded)."""
    out: dict[str, list[str]] = {}
    if not fs.exists(root):
        raise QueryError(f"output {root} does not exist: pass the --output URL a run wrote its tables to")
    for entry in fs.ls(root, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or name.startswith((".", "_")):
            continue
        files = [
            p
            for p in fs.find(f"{root}/{name}")
            if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_"))
        ]
        out[name] = sorted(files)
    return out


def _committed(files: dict[str, list[str]]) -> tuple[dict[str, list[str]], int]:
    """Drop part files without their commit record (what `TableSink.recover()` removes)."""
    commit_of = {t: commit for group, commit in _COMMIT_GROUPS for t in group if t != commit}
    keys = {
        commit: {m.group(1) for p in files.get(commit, []) if (m := _PART_RE.search(p))} for _, commit in _COMMIT_GROUPS
    }
    kept: dict[str, list[str]] = {}
    skipped = 0
    for table, paths in files.items():
        if table not in commit_of:
            kept[table] = paths
            continue
        committed = keys[commit_of[table]]
        ok = []
        for p in paths:
            m = _PART_RE.search(p)
            if m and m.group(1) not in committed:
                skipped += 1
            else:
                ok.append(p)
        kept[table] = ok
    return kept, skipped


def _arrow_fs(fs: Any) -> Any:
    import pyarrow.fs as pafs

    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _dataset(name: str, paths: list[str], base: str, afs: Any) -> Any:
    known = KNOWN_TABLES.get(name)
    if known is not None:
        partitioning = pads.partitioning(pa.schema([_RUN_DATE]), flavor="hive")
    else:  # another job's table: let pyarrow infer its partition columns
        partitioning = pads.HivePartitioning.discover(infer_dictionary=False)
    if not paths:
        schema = pa.schema([*(known or []), _RUN_DATE])
        return pa.Table.from_pylist([], schema=schema)
    schema = None
    if known is not None:
        # The table's declared schema (older files get nulls for newer columns), plus any column the
        # files have that the declaration does not (written by a newer version).
        first = pq.read_schema(paths[0], filesystem=afs)
        extra = [f for f in first if f.name not in known.names and f.name != "run_date"]
        schema = pa.schema([*known, *extra, _RUN_DATE])
    return pads.dataset(
        paths, schema=schema, format="parquet", filesystem=afs, partitioning=partitioning, partition_base_dir=base
    )


def open_tables(output: str, *, endpoint_url: str | None = None, include_uncommitted: bool = False) -> Tables:
    """A DuckDB connection over every table under `output` (a folder, file://, or s3:// prefix)."""
    import duckdb

    fs, root = get_fs(output, endpoint_url)
    root = root.rstrip("/")
    files = _list_table_files(fs, root)
    skipped = 0
    if not include_uncommitted:
        files, skipped = _committed(files)
    for name in KNOWN_TABLES:  # every declared table is queryable, empty until a run writes it
        files.setdefault(name, [])
    afs = _arrow_fs(fs)
    con: Any = duckdb.connect()
    tables = Tables(con=con, output=output, skipped_uncommitted=skipped)
    for name, paths in sorted(files.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue  # not a valid view name: reachable with read_parquet() in SQL instead
        con.register(name, _dataset(name, paths, f"{root}/{name}", afs))
        tables.files[name] = len(paths)
    return tables


# -------------------------------------------------------------------------------------------------
# Named queries


@dataclass(frozen=True)
class Param:
    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[Param, ...]
    build: Callable[[Tables, dict[str, Any]], tuple[str, dict[str, Any]]]

    def parse_params(self, given: Mapping[str, str]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise QueryError(f"named query {self.name!r}: unknown parameter(s) {unknown}; valid: {valid}")
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                try:
                    values[p.name] = p.type(given[p.name])
                except ValueError:
                    raise QueryError(f"--param {p.name}={given[p.name]!r}: not a valid {p.type.__name__}") from None
            elif p.required:
                raise QueryError(f"named query {self.name!r} needs --param {p.name}=... ({p.help})")
            else:
                values[p.name] = p.default
        return values


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


NAMED: dict[str, NamedQuery] = {
    q.name: q
    for q in (
        NamedQuery(
            "hourly_counts",
            "Counts per hour per store, camera and query (the retail job's `retail_hourly`, merged).",
            (
                Param("store", "only this store"),
                Param("camera", "only this camera"),
                Param("query", "only this counted noun"),
                Param("day", "only hours of this UTC day (YYYY-MM-DD)"),
            ),
            _hourly_counts,
        ),
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


def run_named(tables: Tables, name: str, given: Mapping[str, str]) -> pa.Table:
    if name not in NAMED:
        raise QueryError(f"no named query {name!r}; `query --list` shows: {', '.join(NAMED)}")
    q = NAMED[name]
    sql, params = q.build(tables, q.parse_params(given))
    return tables.sql(sql, params)


def describe_named() -> str:
    lines = []
    for q in NAMED.values():
        lines.append(f"{q.name}: {q.description}")
        for p in q.params:
            extra = " (required)" if p.required else (f" (default: {p.default})" if p.default is not None else "")
            lines.append(f"    --param {p.name}=...  {p.help}{extra}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# Output


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


# -------------------------------------------------------------------------------------------------
# Command line (`python -m pipeline query`)


def command(args: Any) -> int:
    """Run `python -m pipeline query ...`; returns the exit code (2: bad query or arguments)."""
    if args.list:
        print(describe_named())
        return 0
    try:
        if not args.output:
            raise QueryError("pass --output URL (the folder or s3:// prefix a run wrote its tables to)")
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
