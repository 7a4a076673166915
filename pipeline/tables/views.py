"""Reader views as SQL: every table of an output as a DuckDB view that shows committed rows only.

A part's data files are written before its commit record, and a writer that dies between the two leaves
orphans until a later run cleans them up; a plain `read_parquet('<out>/captions/**/*.parquet')` sees them.
These views keep a data file only when the commit table of its group has a part with the same key (file
names end in `part-<key>.parquet`, see `pipeline.tables.layout`), and stay right as runs add parts:
they are evaluated at query time, not frozen to a listing.

    python -m pipeline query --output OUT --views-sql > views.sql
    duckdb -c ".read views.sql" -c "SELECT count(*) FROM captions"

For S3 outputs DuckDB needs its `httpfs` extension and credentials (`CREATE SECRET (TYPE s3, ...)`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.tables.schemas import TableGroup

# The part key of a file name, as DuckDB's regexp_extract sees it.
KEY_SQL = r"regexp_extract(filename, 'part-([0-9a-f]{24})\.parquet$', 1)"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _glob(output: str, table: str) -> str:
    return f"{output.rstrip('/')}/{table}/*/*.parquet"


def views_sql(output: str, groups: Iterable[TableGroup], present: Iterable[str]) -> str:
    """`CREATE OR REPLACE VIEW` statements over the output at `output`, one per table of `groups` that has
    files (`present`: DuckDB refuses a view over a glob that matches nothing; generate again once a new
    table appears). A file that is not a part (a `runs` record) is always shown, as in `layout`."""
    have = set(present)
    lines = [f"-- molmo-batch reader views over {output}: committed rows only (pipeline.tables.views)"]
    for group in groups:
        if group.commit_table not in have:
            continue
        commit = group.commit_table
        keys = (f"SELECT {KEY_SQL} AS part_key FROM read_parquet({_quote(_glob(output, commit))}, "
                "filename = true, hive_partitioning = true, union_by_name = true)")
        for table in group.schemas:
            if table not in have:
                lines.append(f"-- {table}: no files yet")
                continue
            source = (f"read_parquet({_quote(_glob(output, table))}, filename = true, hive_partitioning = true, "
                      "union_by_name = true)")
            lines.append(
                f"CREATE OR REPLACE VIEW {table} AS SELECT * EXCLUDE (filename) FROM {source}\n"
                f"  WHERE {KEY_SQL} = '' OR {KEY_SQL} IN ({keys});"
            )
    return "\n".join(lines) + "\n"
