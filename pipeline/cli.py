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
    return parser


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
            from pipeline.run import run_pipeline

            summary = run_pipeline(config)
            print(summary.render())
            return summary.exit_code
        if args.command == "build-tiny-model":
            from pipeline.tiny_model import build_tiny_molmo2

            path = build_tiny_molmo2(args.out, frame_size=args.frame_size, seed=args.seed, overwrite=args.overwrite)
            print(f"tiny Molmo2 written to {path}")
            return 0
        if args.command == "demo":
            return run_demo(Path(args.workdir), args.tasks)
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



