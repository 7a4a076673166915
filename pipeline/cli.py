"""Command line: `python -m pipeline` / `molmo-batch`.

Every field of the typed config (`pipeline.config`) is a `--flag` of `run`, with the field's description
as its help; `--config FILE.yaml` loads the same objects, and flags given on the command line override
the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pipeline.config import SECTIONS, ConfigError, RunConfig, build_config, load_yaml


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


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; defaults are suppressed so YAML values survive."""
    for section, model in SECTIONS.items():
        group = parser.add_argument_group(f"{section} options")
        for name, info in model.model_fields.items():
            ann = _unwrap_optional(info.annotation)
            default = info.get_default(call_default_factory=True)
            help_text = f"{info.description} (default: {default!r})"
            kwargs: dict[str, Any] = {"dest": f"{section}.{name}", "default": argparse.SUPPRESS, "help": help_text}
            origin = typing.get_origin(ann)
            if origin is Literal:
                kwargs["choices"] = list(typing.get_args(ann))
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
            group.add_argument(_flag(name), **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    nested: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    for key, value in vars(args).items():
        if "." not in key:
            continue
        section, name = key.split(".", 1)
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            value = dict(value)
        nested.setdefault(section, {})
        if not isinstance(nested[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        nested[section][name] = value
    return build_config(nested)


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
    tiny.add_argument("--frame-size", type=int, default=112, help="Square frame side in pixels (378 = real geometry).")
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
    _add_tool_commands(sub)  # issue 6: query, render, plan, serve (block below)
    return parser


# ===== BEGIN issue 6 block: `query`, `render`, `plan`, `serve` subcommands ==========================
# The parsers live here; each command's work is `command(args)` in its own module, imported on use.
TOOL_COMMANDS = {"query": "pipeline.query", "render": "pipeline.render", "plan": "pipeline.plan", "serve": "pipeline.serve"}


def _add_tool_commands(sub: Any) -> None:
    from pipeline.config import SamplingConfig, WindowConfig

    def default(section: Any, name: str) -> Any:
        return section.model_fields[name].default

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
    q.add_argument("--list", action="store_true", help="List the named queries and their parameters.")
    q.add_argument("--format", choices=["table", "csv", "json", "jsonl", "parquet"], default="table",
                   help="Output format (default: a table on the terminal).")
    q.add_argument("--out", metavar="FILE", help="Write the result to FILE (required with --format parquet).")
    q.add_argument("--max-rows", type=int, default=100, help="Rows shown with --format table (default: 100).")
    q.add_argument("--include-uncommitted", action="store_true",
                   help="Also read part files without their videos commit record (interrupted or ongoing flushes).")
    q.add_argument("--s3-endpoint-url", help=s3)

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
    r.add_argument("--s3-endpoint-url", help=s3)

    p = sub.add_parser(
        "plan",
        help="List a corpus (container metadata only) and estimate windows, tokens, GPU-hours and cost.",
        description="Estimate a run before running it; formulas and the throughput profile: pipeline/plan.py.",
    )
    p.add_argument("--input", help="The videos: a folder, file:// or s3://BUCKET/PREFIX.")
    p.add_argument("--model", default="allenai/Molmo2-8B", help="The variant to highlight (or a local checkpoint).")
    p.add_argument("--tasks", default="caption", help="Tasks, comma-separated, as for `run` (default: caption).")
    p.add_argument("--profile", metavar="FILE.yaml", help="Throughput profile merged over the default.")
    p.add_argument("--print-profile", action="store_true", help="Print the (merged) profile as YAML and exit.")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the run will use, for the wall-clock estimate.")
    p.add_argument("--window-s", type=float, default=default(WindowConfig, "window_s"), help="As for `run`.")
    p.add_argument("--overlap-s", type=float, default=default(WindowConfig, "overlap_s"), help="As for `run`.")
    p.add_argument("--num-frames", type=int, default=default(SamplingConfig, "num_frames"), help="As for `run`.")
    p.add_argument("--max-fps", type=float, default=default(SamplingConfig, "max_fps"), help="As for `run`.")
    p.add_argument("--sampling-mode", choices=["native", "uniform_last_frame"],
                   default=default(SamplingConfig, "sampling_mode"), help="As for `run`.")
    p.add_argument("--frame-size", type=int, help="Model frame side in pixels (default: the profile's, 378).")
    p.add_argument("--include", type=lambda v: [x for x in v.split(",") if x], help="Glob patterns, as for `run`.")
    p.add_argument("--max-videos", type=int, help="Plan only the first N videos.")
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (terminal) or json.")
    p.add_argument("--max-rows", type=int, default=20, help="Videos listed in the table (default: 20).")
    p.add_argument("--s3-endpoint-url", help=s3)

    v = sub.add_parser(
        "serve",
        help="Serve Molmo2 over HTTP with Ray Serve: POST /v1/analyze (needs MOLMO_BATCH_SERVE_TOKEN).",
        description="A Ray Serve app answering POST /v1/analyze with the batch tables' rows as JSON. "
        "Requires a bearer token in MOLMO_BATCH_SERVE_TOKEN; URIs only under --allow-prefix.",
    )
    v.add_argument("--model", required=True, help="Molmo2 checkpoint: Hub id, local directory or s3:// prefix.")
    v.add_argument("--revision", help="Hub revision of --model.")
    v.add_argument("--allow-prefix", action="append", default=[], metavar="URI_PREFIX",
                   help="A URI prefix requests may name (s3://bucket/videos/, https://host/path/); repeatable.")
    v.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1; 0.0.0.0 for all).")
    v.add_argument("--port", type=int, default=8000, help="Port (default: 8000).")
    v.add_argument("--address", help="Ray cluster to join (or RAY_ADDRESS); unset starts a local Ray.")
    v.add_argument("--replicas", type=int, help="Replicas (default: one per GPU, or 1 without GPUs).")
    v.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="As for `run`.")
    v.add_argument("--max-new-tokens", type=int, default=256, help="Generation limit per answer.")
    v.add_argument("--frame-size", type=int, help="Model frame side (default: read from the model's processor).")
    v.add_argument("--num-frames", type=int, default=default(SamplingConfig, "num_frames"), help="As for `run`.")
    v.add_argument("--max-fps", type=float, default=default(SamplingConfig, "max_fps"), help="As for `run`.")
    v.add_argument("--window-s", type=float, default=default(WindowConfig, "window_s"), help="As for `run`.")
    v.add_argument("--overlap-s", type=float, default=default(WindowConfig, "overlap_s"), help="As for `run`.")
    v.add_argument("--max-upload-mb", type=int, default=512, help="Largest upload or fetched video, MiB (413 above).")
    v.add_argument("--max-duration-s", type=float, default=600.0, help="Longest video in seconds (413 above).")
    v.add_argument("--max-tasks", type=int, default=8, help="Most tasks per request (422 above).")
    v.add_argument("--s3-endpoint-url", help=s3)


def _run_tool_command(args: argparse.Namespace) -> int:
    import importlib

    module: Any = importlib.import_module(TOOL_COMMANDS[args.command])
    return int(module.command(args))


# ===== END issue 6 block ==========================================================================


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            config = config_from_args(args)
            if args.print_config:
                import yaml

                print(yaml.safe_dump(config.public_dict(), sort_keys=False))
                return 0
            from pipeline.run import EXIT_FAILED, PipelineError, run_pipeline

            try:
                summary = run_pipeline(config)
            except PipelineError as exc:  # the run broke (a node, the store): what finished is committed
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(summary.render())
            return summary.exit_code
        if args.command == "build-tiny-model":
            from pipeline.tiny_model import build_tiny_molmo2

            path = build_tiny_molmo2(args.out, frame_size=args.frame_size, seed=args.seed, overwrite=args.overwrite)
            print(f"tiny Molmo2 written to {path}")
            return 0
        if args.command == "demo":
            return run_demo(Path(args.workdir), args.tasks)
        if args.command in TOOL_COMMANDS:  # issue 6 block
            return _run_tool_command(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def run_demo(workdir: Path, tasks: str) -> int:
    """Sample videos + tiny model + a run with every table, then show where the tables are."""
    from pipeline.run import run_pipeline
    from pipeline.samples import write_demo_corpus
    from pipeline.tiny_model import build_tiny_molmo2

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

    from pipeline.schemas import TABLES

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



