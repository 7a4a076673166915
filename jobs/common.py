"""What the jobs share: their command line (every pipeline option plus the job's own), YAML loading,
and reading the pipeline's committed output tables.

A job's YAML holds the pipeline's sections (`source:`, `model:`, `window:`, ... exactly as for
`python -m pipeline run --config`) plus one section named after the job (`nightly:` or `retail:`) with
the job's own options. Flags given on the command line override the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.cli import add_config_flags, config_error_line
from pipeline.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    build_config,
    flag_values,
    load_yaml,
    merge_flags,
)
from pipeline.errors import PipelineError
from pipeline.io.secrets import redact_data
from pipeline.io.storage import get_fs
from pipeline.run.summary import EXIT_CONFIG, EXIT_FAILED
from pipeline.tables import layout
from pipeline.tables.reader import known_tables
from pipeline.tables.schemas import COMMIT_TABLE


def csv_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (an argparse type)."""
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class JobOption:
    """One job-specific option: a `--flag` and a key of the job's YAML section."""

    name: str  # YAML key; the flag is --name-with-dashes
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: Sequence[str] | None = None
    action: str | None = None  # "store_true" for switches

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def build_parser(prog: str, description: str, section: str, options: Sequence[JobOption],
                 epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help=f"YAML config: the pipeline's sections ({', '.join(SECTIONS)}) plus a `{section}:` section with "
        "this job's options; command-line flags override it.",
    )
    parser.add_argument("--print-config", action="store_true", help="Print the resolved configuration as YAML and exit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    group = parser.add_argument_group(f"{section} job options (YAML section `{section}:`)")
    for opt in options:
        kwargs: dict[str, Any] = {"dest": f"job.{opt.name}", "default": argparse.SUPPRESS}
        shown = opt.default if not isinstance(opt.default, list) else ",".join(opt.default)
        kwargs["help"] = f"{opt.help} (default: {shown!r})" if opt.default not in (None, False) else opt.help
        if opt.action:
            kwargs["action"] = opt.action
        else:
            if opt.type:
                kwargs["type"] = opt.type
            if opt.metavar:
                kwargs["metavar"] = opt.metavar
            if opt.choices:
                kwargs["choices"] = list(opt.choices)
        group.add_argument(opt.flag, **kwargs)
    add_config_flags(parser)
    return parser


def resolve(
    args: argparse.Namespace,
    section: str,
    options: Sequence[JobOption],
    pipeline_defaults: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> tuple[RunConfig, dict[str, Any]]:
    """(pipeline config, job options) from defaults < YAML < flags.

    `pipeline_defaults(nested, job)` may fill in pipeline settings the job needs, but only those the user
    did not set (it sees the nested YAML+flags dict before validation).
    """
    nested: dict[str, Any] = load_yaml(args.config) if args.config else {}
    job_yaml = nested.pop(section, None) or {}
    if not isinstance(job_yaml, dict):
        raise ConfigError(f"config section {section!r} must be a mapping of this job's options")
    known = {o.name for o in options}
    unknown = sorted(set(job_yaml) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown setting(s) {unknown}; valid here: {', '.join(sorted(known))}")
    flags = vars(args)
    job: dict[str, Any] = {o.name: o.default for o in options}
    job.update(job_yaml)
    job.update(flag_values(flags, "job"))
    merge_flags(nested, flags)
    if pipeline_defaults is not None:
        pipeline_defaults(nested, job)
    return build_config(nested), job


def print_config(config: RunConfig, section: str, job: Mapping[str, Any]) -> None:
    """The resolved config as YAML, credentials masked (`pipeline.io.secrets.redact_data`)."""
    import yaml

    print(yaml.safe_dump({**config.public_dict(), section: redact_data(dict(job))}, sort_keys=False))


def run_main(body: Callable[[], int]) -> int:
    """Exit status as the pipeline's: the body's code; 2 on bad configuration; 1 on anything unexpected."""
    try:
        return body()
    except ConfigError as exc:
        print(config_error_line(exc), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    except PipelineError as exc:  # the run broke (a node, the store): one clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# -------------------------------------------------------------------------------------------------
# Reading committed output tables


def committed_files(output: str, table: str, *, endpoint_url: str | None = None,
                    commit_table: str = COMMIT_TABLE) -> list[str]:
    """The Parquet part files of `table` under `output` whose commit record exists (sorted)."""
    fs, root = get_fs(output, endpoint_url)
    fs.invalidate_cache()
    return layout.committed_parts(fs, root.rstrip("/"), table, commit_table)


def read_table(
    output: str,
    table: str,
    *,
    endpoint_url: str | None = None,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    commit_table: str = COMMIT_TABLE,
) -> pa.Table:
    """Committed rows of an output table (declared schema: files missing a newer column give nulls).

    `table` is one of the pipeline's tables or of a registered job's (`pipeline.tables.reader`); `filter`
    is a pyarrow dataset expression (e.g. `pc.field("video_id").isin(ids)`).
    """
    import pyarrow.fs as pafs

    schema = known_tables()[table]
    files = committed_files(output, table, endpoint_url=endpoint_url, commit_table=commit_table)
    cols = list(columns) if columns else schema.names
    if not files:
        return pa.Table.from_pylist([], schema=pa.schema([schema.field(c) for c in cols]))
    fs, _ = get_fs(output, endpoint_url)
    ds = pads.dataset(files, schema=schema, format="parquet", filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    return ds.to_table(columns=cols, filter=filter)


def latest_videos(output: str, *, endpoint_url: str | None = None) -> pa.Table:
    """The current state of every video: its newest committed `videos` row (by processed_at).

    A retried video keeps its older rows (history, each in its own run_date partition); this is the
    same as `SELECT * FROM videos QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY processed_at
    DESC) = 1`.
    """
    import duckdb

    videos = read_table(output, "videos", endpoint_url=endpoint_url)
    con: Any = duckdb.connect()
    con.register("videos", videos)
    return con.sql(
        "SELECT * FROM videos QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY processed_at DESC, run_id DESC) = 1 "
        "ORDER BY uri"
    ).to_arrow_table()
