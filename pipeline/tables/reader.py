"""Read an output's tables as a reader should: committed part files only, as DuckDB views; and the
registration hook through which a job's own tables and named queries join them.

Registering a job's tables
--------------------------
The core knows its own tables (`pipeline.tables.schemas.PIPELINE_GROUP`) and never imports a job. A job
that writes tables of its own (`TableSink(output, tables=..., commit_table=...)`) makes them readable by
`pipeline query`, `open_tables` and `jobs.common.read_table` by naming a *registration hook* in its
distribution's entry points, group `molmo_batch.tables`:

    # pyproject.toml (then `pip install -e .` so the entry point is written)
    [project.entry-points."molmo_batch.tables"]
    retail = "jobs.retail_tables:register"

    # jobs/retail_tables.py
    def register(registry: Registry) -> None:
        registry.add_tables(TableGroup("retail", "retail_videos", RETAIL_TABLES))
        registry.add_query(NamedQuery("hourly_counts", "Counts per hour ...", (Param("store", ...),), build))

`registered()` finds the hooks with `importlib.metadata` and calls each once per process. Then every
table of a registered group is a view (empty until written), its part files are visible only once the
group's commit table has the same part, and its named queries run with `pipeline query --named NAME`.
Table and query names are unique across the core and every job; a hook that fails to load or clashes
raises `TableRegistryError` naming the entry point.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.errors import MolmoBatchError
from pipeline.io.storage import get_fs
from pipeline.tables import layout
from pipeline.tables.schemas import PIPELINE_GROUP, TableGroup

log = logging.getLogger(__name__)

_RUN_DATE = pa.field(layout.PARTITION, pa.date32())


class QueryError(MolmoBatchError, RuntimeError):
    """A query that cannot run as asked (bad SQL, missing table, bad parameter): the message says why."""


class TableRegistryError(QueryError):
    """A registration hook could not load, or registered a table or query name that is already taken."""


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


# -------------------------------------------------------------------------------------------------
# Named queries and the registration hook


@dataclass(frozen=True)
class Param:
    """One parameter of a named query: `--param name=value`, converted with `type` and bound, never pasted."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class NamedQuery:
    """A question asked often: `build(tables, params)` gives its SQL (with `$name` parameters) and values."""

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


ENTRY_POINT_GROUP = "molmo_batch.tables"


@dataclass
class Registry:
    """What the registration hooks added: jobs' table groups and named queries (see the module docstring)."""

    groups: dict[str, TableGroup] = field(default_factory=dict)
    queries: dict[str, NamedQuery] = field(default_factory=dict)

    def add_tables(self, group: TableGroup) -> None:
        """Make a job's tables readable: views, committed-part filtering and `jobs.common.read_table`."""
        owner = {t: g.name for g in self.all_groups for t in g.schemas}
        taken = sorted(t for t in group.schemas if t in owner)
        if group.name in {g.name for g in self.all_groups}:
            raise TableRegistryError(f"table group {group.name!r} is registered twice")
        if taken:
            raise TableRegistryError(
                f"table group {group.name!r}: table(s) {taken} already belong to group(s) "
                f"{sorted({owner[t] for t in taken})}; give the job's tables their own names"
            )
        self.groups[group.name] = group

    def add_query(self, query: NamedQuery) -> None:
        """Add a named query for `pipeline query --named` (its name must be new)."""
        if query.name in self.queries:
            raise TableRegistryError(f"named query {query.name!r} is registered twice")
        self.queries[query.name] = query

    @property
    def all_groups(self) -> list[TableGroup]:
        """The pipeline's group, then the registered ones."""
        return [PIPELINE_GROUP, *self.groups.values()]

    def schemas(self) -> dict[str, pa.Schema]:
        """Every declared table (the pipeline's and the registered jobs'), name -> schema."""
        return {name: schema for g in self.all_groups for name, schema in g.schemas.items()}


def load_registry(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> Registry:
    """A registry filled by every hook of the `molmo_batch.tables` entry points (or the ones given)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    registry = Registry()
    for ep in sorted(found, key=lambda e: e.name):
        try:
            hook = ep.load()
            hook(registry)
        except TableRegistryError as exc:
            raise TableRegistryError(f"registration hook {ep.name!r} ({ep.value}): {exc}") from exc
        except Exception as exc:
            raise TableRegistryError(
                f"registration hook {ep.name!r} ({ep.value}) of entry point group {ENTRY_POINT_GROUP!r} failed: "
                f"{type(exc).__name__}: {exc}. Reinstall the package that declares it (pip install -e .) "
                "or remove the entry point"
            ) from exc
        log.debug("registered tables of hook %s (%s)", ep.name, ep.value)
    return registry


@functools.cache
def registered() -> Registry:
    """The installed hooks' registry, loaded once per process."""
    return load_registry()


def known_tables() -> dict[str, pa.Schema]:
    """Every declared table: the pipeline's and those of the registered jobs."""
    return registered().schemas()


# -------------------------------------------------------------------------------------------------
# Views over committed files


def _arrow_fs(fs: Any) -> Any:
    import pyarrow.fs as pafs

    if layout.is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _dataset(name: str, paths: list[str], base: str, afs: Any, known_tables: Mapping[str, pa.Schema]) -> Any:
    known = known_tables.get(name)
    if known is not None:
        partitioning = pads.partitioning(pa.schema([_RUN_DATE]), flavor="hive")
    else:  # a table no one declared (an unregistered job's): let pyarrow infer its partition columns
        partitioning = pads.HivePartitioning.discover(infer_dictionary=False)
    if not paths:
        schema = pa.schema([*(known or []), _RUN_DATE])
        return pa.Table.from_pylist([], schema=schema)
    schema = None
    if known is not None:
        # The table's declared schema (older files get nulls for newer columns), plus any column the
        # files have that the declaration does not (written by a newer version).
        first = pq.read_schema(paths[0], filesystem=afs)
        extra = [f for f in first if f.name not in known.names and f.name != layout.PARTITION]
        schema = pa.schema([*known, *extra, _RUN_DATE])
    return pads.dataset(
        paths, schema=schema, format="parquet", filesystem=afs, partitioning=partitioning, partition_base_dir=base
    )


def open_tables(output: str, *, endpoint_url: str | None = None, include_uncommitted: bool = False) -> Tables:
    """A DuckDB connection over every table under `output` (a folder, file://, or s3:// prefix)."""
    import duckdb

    registry = registered()
    known = registry.schemas()
    fs, root = get_fs(output, endpoint_url)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise QueryError(f"output {root} does not exist: pass the --output URL a run wrote its tables to")
    files = layout.list_table_files(fs, root)
    skipped = 0
    if not include_uncommitted:
        files, skipped = layout.drop_uncommitted(files, registry.all_groups)
    for name in known:  # every declared table is queryable, empty until a run writes it
        files.setdefault(name, [])
    afs = _arrow_fs(fs)
    con: Any = duckdb.connect()
    tables = Tables(con=con, output=output, skipped_uncommitted=skipped)
    for name, paths in sorted(files.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue  # not a valid view name: reachable with read_parquet() in SQL instead
        con.register(name, _dataset(name, paths, f"{root}/{name}", afs, known))
        tables.files[name] = len(paths)
    return tables
