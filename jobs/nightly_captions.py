"""Nightly captions: caption (plus optional extra tasks) every video under an input prefix that has no
successful caption yet in the output tables.

Each night lists the input, skips every video (by `video_id`: URI + object version, so a changed object
is a new video) that already has an `ok` or `partial` row in the output's `videos` table, and processes
the rest: new videos, changed videos, and videos whose earlier attempts all failed (`retry_statuses`,
default `failed`; add `partial` to retry partly processed videos as well). Rows are written under the
run's date partition (`<output>/<table>/run_date=YYYY-MM-DD/`, from the run id's YYYYMMDD); a retried
video's older `videos`/`errors` rows stay as history in their own partition, and its current state is
its newest `videos` row (see `jobs.common.latest_videos`). Exit status as the pipeline's: 0 all ok,
3 partial, 1 failed, 2 bad configuration.

    python -m jobs.nightly_captions --input s3://BUCKET/videos/ --output s3://BUCKET/tables/ \\
        --model s3://BUCKET/models/Molmo2-8B/ [--extra-tasks count:person] [--config nightly.yaml]
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from jobs.common import (
    JobOption,
    build_parser,
    csv_list,
    latest_videos,
    print_config,
    resolve,
    run_main,
    setup_logging,
)
from pipeline.config import ConfigError, RunConfig
from pipeline.results.tasks import parse_task_list
from pipeline.run.driver import run_pipeline
from pipeline.run.summary import RunSummary, run_date_for

SECTION = "nightly"
OPTIONS = (
    JobOption(
        "extra_tasks",
        "Tasks to run besides caption (comma-separated: count:<noun>, point:<noun>, track:<noun>, "
        "ask:<question>). Videos done on earlier nights get a newly added task: only that task runs for them.",
        default=[],
        type=csv_list,
        metavar="A,B,...",
    ),
)


def _pipeline_defaults(nested: dict[str, Any], job: dict[str, Any]) -> None:
    tasks = nested.setdefault("tasks", {})
    given = tasks.get("tasks") or []
    if isinstance(given, str):
        given = csv_list(given)
    # caption always, then the pipeline --tasks and --extra-tasks (de-duplicated in order).
    specs = ["caption", *given, *(job.get("extra_tasks") or [])]
    tasks["tasks"] = [f"{k}:{q}" if q else k for k, q in parse_task_list(specs)]
    nested.setdefault("output", {}).setdefault("retry_statuses", ["failed"])


def build(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunConfig, dict[str, Any]]:
    parser = build_parser(
        "python -m jobs.nightly_captions",
        "Caption every video under --input that has no successful caption yet in --output's tables "
        "(new, changed and previously failed videos); write the rows under the run's date partition.",
        SECTION,
        OPTIONS,
        epilog=__doc__.split("\n\n")[-1] if __doc__ else None,
    )
    args = parser.parse_args(argv)
    try:
        config, job = resolve(args, SECTION, OPTIONS, _pipeline_defaults)
    except ValueError as exc:  # a bad task spec

        raise ConfigError(str(exc)) from None
    return args, config, job


def render_report(summary: RunSummary, config: RunConfig) -> str:
    """The job's closing summary: the run, then the current state of every video in the output."""
    lines = [
        f"nightly captions {summary.run_id} (run_date={run_date_for(summary.run_id)})",
        summary.render(),
        f"  new or changed: {summary.processed - summary.videos_retried}, retried: {summary.videos_retried}",
    ]
    latest = latest_videos(config.output.output, endpoint_url=config.source.s3_endpoint_url)
    status = Counter(latest.column("status").to_pylist())
    lines.append(
        f"  all videos in the output: {latest.num_rows} (ok={status['ok']} partial={status['partial']} "
        f"failed={status['failed']}; failed ones are retried next night)"
    )
    failed = [u for u, s in zip(latest.column("uri").to_pylist(), latest.column("status").to_pylist(), strict=True)
              if s == "failed"]
    for uri in failed[:10]:
        lines.append(f"    failed: {uri}")
    if len(failed) > 10:
        lines.append(f"    ... and {len(failed) - 10} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args, config, job = build(argv)
        setup_logging(args.verbose)
        if args.print_config:
            print_config(config, SECTION, job)
            return 0
        summary = run_pipeline(config, echo=lambda m: print(m, flush=True))
        print(render_report(summary, config), flush=True)
        return summary.exit_code

    return run_main(body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
