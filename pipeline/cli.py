"""Command line: `python -m pipeline` / `molmo-batch`.

Every field of the typed config (`pipeline.config`) is a `--flag` of `run`, with the field's description
as its help; `--config FILE.yaml` loads the same objects, and flags given on the command line override
the file. `plan` and `serve` take the fields they use from the same sections (same flags, same defaults),
plus their own options, declared as a typed section in the tool.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pipeline.config import (
    SECTIONS,
    ConfigError,
    ConfigSection,
    RunConfig,
    build_config,
    config_from_flags,
    load_yaml,
)
from pipeline.io.secrets import redact
from pipeline.model.molmo2 import FRAME_SIZE


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _parse_mapping(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_config_flags(
    parser: argparse.ArgumentParser,
    fields: Mapping[str, Sequence[str]] | None = None,
    *,
    sections: Mapping[str, type[ConfigSection]] = SECTIONS,
    required: Collection[str] = (),
) -> None:
    """One flag per field of `sections` (the run config's by default), grouped by section.

    Args:
        fields: only these fields of these sections (e.g. `{"window": ["window_s"]}`); default: every field.
        sections: the typed sections the flags come from (a tool passes its own options section).
        required: `section.field` names of flags that must be given.

    A flag stores its value under `section.field` (read back with `pipeline.config.flag_values`,
    `merge_flags`); defaults are suppressed so a YAML file's values survive, and the section's own default
    (shown in the help) applies to what is given nowhere.
    """
    chosen = fields if fields is not None else {name: list(model.model_fields) for name, model in sections.items()}
    for section, names in chosen.items():
        model = sections[section]
        group = parser.add_argument_group(f"{section} options")
        for name in names:
            info = model.model_fields[name]
            dest = f"{section}.{name}"
            kwargs = _flag_kwargs(name, info.annotation, _cli_hints(info.json_schema_extra))
            kwargs.update(dest=dest, default=argparse.SUPPRESS)
            if dest in required:
                kwargs.update(required=True, help=info.description)
            else:
                kwargs["help"] = f"{info.description} (default: {info.get_default(call_default_factory=True)!r})"
            group.add_argument(_flag(name), **kwargs)


def _cli_hints(extra: Any) -> dict[str, Any]:
    """A field's command-line hints (`json_schema_extra`): `repeatable` (one value per flag), `metavar`."""
    return dict(extra) if isinstance(extra, dict) else {}


def _flag_kwargs(name: str, annotation: Any, hints: Mapping[str, Any]) -> dict[str, Any]:
    """How argparse parses one field's flag, from the field's type."""
    ann = _unwrap_optional(annotation)
    origin = typing.get_origin(ann)
    kwargs: dict[str, Any] = {}
    if origin is Literal:
        kwargs["choices"] = list(typing.get_args(ann))
    elif ann is bool:
        kwargs["action"] = "store_true"
    elif origin is list and hints.get("repeatable"):
        kwargs["action"] = "append"
        kwargs["metavar"] = name.upper()
    elif origin is list:
        kwargs["type"] = lambda s: [p.strip() for p in s.split(",") if p.strip()]
        kwargs["metavar"] = "A,B,..."
    elif origin is dict:
        kwargs["type"] = _parse_mapping
        kwargs["action"] = "append"
        kwargs["metavar"] = "KEY=VALUE"
    elif ann in (int, float, str):
        kwargs["type"] = ann
        kwargs["metavar"] = name.upper()
    if "metavar" in hints and "metavar" in kwargs:
        kwargs["metavar"] = hints["metavar"]
    return kwargs


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of `run`'s command line: defaults < `--config FILE.yaml` < flags."""
    nested: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    return config_from_flags(vars(args), nested)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molmo-batch",
        description="Turn video corpora into grounded Parquet tables with Molmo2 on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="Run the pipeline over videos and write the tables.",
        description="Run the pipeline: list videos under --input, decode, ask Molmo2, write Parquet under --output.",
    )
    run.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections: " + ", ".join(SECTIONS) + ").")
    run.add_argument("--print-config", action="store_true", help="Print the resolved config as YAML and exit.")
    add_config_flags(run)

    tiny = sub.add_parser(
        "build-tiny-model",
        help="Build the tiny offline Molmo2 checkpoint (random weights) into a directory.",
        description="Build a tiny randomly initialised Molmo2 (real transformers classes) for offline runs and tests.",
    )
    tiny.add_argument("--out", required=True, help="Directory to write the checkpoint into.")
    tiny.add_argument("--frame-size", type=int, default=112,
                      help=f"Square frame side in pixels ({FRAME_SIZE} = real geometry).")
    tiny.add_argument("--seed", type=int, default=0, help="Random seed of the weights.")
    tiny.add_argument("--overwrite", action="store_true", help="Replace an existing checkpoint in --out.")

    demo = sub.add_parser(
        "demo",
        help="Generate sample videos, build the tiny model, run all tasks, print the tables.",
        description="The Quick start: sample mp4s + tiny Molmo2 + a full run, all offline on this machine.",
    )
    demo.add_argument("--workdir", default="demo-run", help="Folder for the sample videos, the model and the tables.")
    demo.add_argument(
        "--tasks", default="caption,count:person,point:cart,track:person", help="Tasks to run (comma-separated)."
    )
    _add_tool_commands(sub)  # query, render, plan, serve: tools on top of the pipeline
    return parser


# ----- The tools' subcommands: `query`, `render`, `plan`, `serve` (each module has its own `command`) -----
# The parsers live here; each command's work is `command(args)` in its own module, imported on use.
TOOL_COMMANDS = {
    "query": "pipeline.tools.query",
    "render": "pipeline.tools.render",
    "plan": "pipeline.tools.estimate",
    "serve": "pipeline.tools.serve.app",
    "writers": "pipeline.tools.writers",
}


# The run config's fields `plan` and `serve` take (same flags, same defaults as `run`).
PLAN_FIELDS = {
    "source": ["input", "include", "max_videos", "s3_endpoint_url"],
    "model": ["model"],
    "tasks": ["tasks"],
    "window": ["window_s", "overlap_s"],
    "sampling": ["sampling_mode", "num_frames", "max_fps"],
    "decode": ["frame_size"],
}
SERVE_FIELDS = {
    "model": ["model", "revision", "device", "max_new_tokens"],
    "decode": ["frame_size"],
    "sampling": ["num_frames", "max_fps"],
    "window": ["window_s", "overlap_s"],
    "ray": ["address"],
    "source": ["s3_endpoint_url"],
}


def _add_tool_commands(sub: Any) -> None:
    from pipeline.tools.estimate import PlanOptions
    from pipeline.tools.serve.settings import ServeOptions

    s3 = "S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)."
    q = sub.add_parser(
        "query",
        help="Run SQL (DuckDB) or a named query over the output tables.",
        description="SQL over the output tables: each table (videos, captions, counts, points, tracks, answers, "
        "video_counts, errors, runs, and other jobs' tables) is a view by its name; run_date is a DATE column.",
    )
    q.add_argument("sql", nargs="?", help='SQL, e.g. "SELECT status, count(*) FROM videos GROUP BY ALL".')
    q.add_argument("--output", help="Where a run wrote its tables: a folder, file:// or s3://BUCKET/PREFIX.")
    q.add_argument("--named", metavar="NAME", help="Run a ready-made query instead of SQL (see --list).")
    q.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="A named query's parameter.")
    q.add_argument("--views-sql", action="store_true",
                   help="Print DuckDB CREATE VIEW statements that show committed rows only (for duckdb .read).")
    q.add_argument("--list", action="store_true", help="List the named queries and their parameters.")
    q.add_argument("--format", choices=["table", "csv", "json", "jsonl", "parquet"], default="table",
                   help="Output format (default: a table on the terminal).")
    q.add_argument("--out", metavar="FILE", help="Write the result to FILE (required with --format parquet).")
    q.add_argument("--max-rows", type=int, default=100, help="Rows shown with --format table (default: 100).")
    q.add_argument("--include-uncommitted", action="store_true",
                   help="Also read part files without their videos commit record (interrupted or ongoing flushes).")
    q.add_argument("--s3-endpoint-url", help=s3)

    w = sub.add_parser(
        "writers",
        help="List the runs and jobs writing to an output (their leases); end a dead one's lease.",
        description="Every writer on an output holds a lease it renews while alive (pipeline/tables/leases.py). "
        "--end RUN_ID ends a lease at once: only for a writer you know is dead. --sweep deletes every "
        "uncommitted part file of a writer without a live lease (lists the whole output).",
    )
    w.add_argument("--output", required=True, help="The output folder or s3:// prefix.")
    w.add_argument("--end", metavar="RUN_ID", help="End this writer's lease now (operator override).")
    w.add_argument("--sweep", action="store_true",
                   help="Delete the uncommitted part files no live writer owns, in the pipeline's tables (a run's "
                   "start-up recovery looks only where dead writers' leases point).")
    w.add_argument("--s3-endpoint-url", help=s3)

    r = sub.add_parser(
        "render",
        help="Draw a video's points and tracks on its frames: PNG contact sheet + GIF.",
        description="Decode the source video again at display size and draw the tables' points and tracks.",
    )
    r.add_argument("--output", required=True, help="Where the run wrote its tables (folder or s3:// prefix).")
    r.add_argument("--video", required=True, help="video_id (or a unique prefix), the video's URI, or its file name.")
    r.add_argument("--query", help="Only the points/tracks of this query (e.g. person).")
    r.add_argument("--out", required=True, help="Folder for the PNG, the GIF and the layout JSON.")
    r.add_argument("--max-frames", type=int, default=12, help="At most this many frames (default: 12).")
    r.add_argument("--width", type=int, default=320, help="Width of one frame on the sheet, pixels (default: 320).")
    r.add_argument("--columns", type=int, default=4, help="Frames per row of the sheet (default: 4).")
    r.add_argument("--no-gif", action="store_true", help="Write only the PNG contact sheet.")
    r.add_argument("--geometry", metavar="FILE",
                   help="Camera geometry (YAML/JSON with `cameras:`, the retail job's format): draw its lines and zones.")
    r.add_argument("--camera", metavar="STORE/CAMERA",
                   help="Which camera of --geometry (needed when the file has several).")
    r.add_argument("--crossings", metavar="TABLE",
                   help="Draw the video's line crossings from this table (e.g. retail_crossings).")
    r.add_argument("--s3-endpoint-url", help=s3)

    p = sub.add_parser(
        "plan",
        help="List a corpus (container metadata only) and estimate windows, tokens, GPU-hours and cost.",
        description="Estimate a run before running it; formulas and the throughput profile: "
        "pipeline/tools/estimate.py. The run options mean what they mean for `run`; without --frame-size, "
        "a local checkpoint's declared frame size is used, else the profile's.",
    )
    add_config_flags(p, PLAN_FIELDS)
    add_config_flags(p, sections={"plan": PlanOptions})

    v = sub.add_parser(
        "serve",
        help="Serve Molmo2 over HTTP with Ray Serve: POST /v1/analyze (needs MOLMO_BATCH_SERVE_TOKEN).",
        description="A Ray Serve app answering POST /v1/analyze with the batch tables' rows as JSON. "
        "Requires a bearer token in MOLMO_BATCH_SERVE_TOKEN; URIs only under --allow-prefix.",
    )
    add_config_flags(v, SERVE_FIELDS, required={"model.model"})
    add_config_flags(v, sections={"serve": ServeOptions})


def _run_tool_command(args: argparse.Namespace) -> int:
    import importlib

    module: Any = importlib.import_module(TOOL_COMMANDS[args.command])
    return int(module.command(args))




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            config = config_from_args(args)
            if args.print_config:  # credentials in URLs and secret-named values are masked (public_dict)
                import yaml

                print(yaml.safe_dump(config.public_dict(), sort_keys=False))
                return 0
            from pipeline.errors import PipelineError
            from pipeline.run.driver import run_pipeline
            from pipeline.run.summary import EXIT_FAILED

            try:
                summary = run_pipeline(config)
            except PipelineError as exc:  # the run broke (a node, the store): what finished is committed
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(redact(summary.render()))
            return summary.exit_code
        if args.command == "build-tiny-model":
            from pipeline.devtools.tiny_model import build_tiny_molmo2

            path = build_tiny_molmo2(args.out, frame_size=args.frame_size, seed=args.seed, overwrite=args.overwrite)
            print(f"tiny Molmo2 written to {path}")
            return 0
        if args.command == "demo":
            return run_demo(Path(args.workdir), args.tasks)
        if args.command in TOOL_COMMANDS:
            return _run_tool_command(args)
    except ConfigError as exc:  # one line that says what to fix, nothing started
        print(config_error_line(exc), file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def config_error_line(exc: ConfigError) -> str:
    """The one line a bad configuration prints (credentials masked), for `run`, the tools and the jobs."""
    return "configuration error: " + " ".join(redact(exc).split())


def run_demo(workdir: Path, tasks: str) -> int:
    """Sample videos + tiny model + a run with every table, then show where the tables are."""
    from pipeline.devtools.samples import write_demo_corpus
    from pipeline.devtools.tiny_model import build_tiny_molmo2
    from pipeline.run.driver import run_pipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir.mkdir(parents=True, exist_ok=True)
    videos = write_demo_corpus(workdir / "videos")
    print(f"sample videos: {len(videos)} mp4 files in {workdir / 'videos'}")
    model_dir = workdir / "tiny-molmo2"
    if not (model_dir / "config.json").exists():
        build_tiny_molmo2(model_dir, frame_size=112, seed=0)
    print(f"tiny Molmo2 (random weights: its text is meaningless) in {model_dir}")
    out = workdir / "tables"
    config = build_config(
        {
            "source": {"input": str(workdir / "videos")},
            "model": {"model": str(model_dir), "max_new_tokens": 48, "batch_size": 4},
            "window": {"window_s": 10.0, "overlap_s": 2.0},
            "sampling": {"num_frames": 16, "max_fps": 2.0},
            "tasks": {"tasks": tasks},
            "output": {"output": str(out)},
        }
    )
    summary = run_pipeline(config)
    print(summary.render())
    print_tables(str(out))
    return summary.exit_code


def print_tables(output: str, limit: int = 3) -> None:
    """Print each table's location, row count and a few rows (DuckDB over the Parquet files)."""
    import duckdb

    from pipeline.tables.schemas import TABLES

    con: Any = duckdb.connect()
    for table in TABLES:
        folder = Path(output) / table
        if not folder.exists():
            continue
        glob = f"{folder}/**/*.parquet"
        rel = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
        n = con.sql(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()[0][0]
        print(f"\n{table}: {n} rows in {folder}")
        cols = [c for c in rel.columns if c not in ("prompt", "decoding", "sampling_mode", "num_frames", "max_fps", "max_new_tokens", "model_id", "run_id", "run_date")]
        print(rel.select(*cols[:9]).limit(limit))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())



