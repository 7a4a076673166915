"""Mutation testing of the core rules: does the suite notice when a rule breaks?

Each mutation is one small, deliberate bug in one of the rules the product claims (how objects are
counted, how model coordinates become pixels and seconds, what a shard member costs to fetch, what
counts as out of memory, which videos a rerun skips, ...). The script applies each to a fresh copy of
the repository, runs the tests that should notice it against that copy, and reports:

- caught: the tests failed on the mutated copy (what we want);
- survived: they passed: no test pins that rule down;
- error: the tests could not run (collection error, no test found): fix the mutation or the test list.

First it runs all the selected mutations' tests on an unmutated copy: they must pass, else nothing can
be concluded. A mutation whose `before` text is no longer in the code (the code changed) stops the
script: update the mutation with the code.

    python -m tests.mutations                  # all (several minutes: not part of CI; run before a release)
    python -m tests.mutations --list           # names and the rule each one breaks
    python -m tests.mutations NAME [NAME ...]  # only these

Exit status: 0 every mutation caught, 1 some survived or errored, 2 a stale mutation or a failing baseline.
`tests/test_mutations.py` (in CI) checks that every mutation still applies and that the machinery tells
caught from survived, on one mutation each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Not copied: version control, environments, caches, generated demo output.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".hypothesis", "demo-run", "*.egg-info", "build", "dist",
)


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: replace `before` (which must occur exactly once in `path`) with `after`."""

    name: str
    rule: str  # the claim the bug breaks
    path: str  # relative to the repository root
    before: str
    after: str
    tests: tuple[str, ...]  # pytest arguments (files or node ids) that must fail with the bug


COLLECT = "pipeline/results/collect.py"
GROUNDING = "pipeline/results/grounding.py"
FETCH = "pipeline/video/fetch.py"
T_COLLECT = "tests/results/test_collect.py"
T_GROUNDING = "tests/results/test_grounding.py"
T_FETCH = "tests/video/test_fetch.py"
T_SINK = "tests/tables/test_sink.py"
T_NIGHTLY = "tests/jobs/test_jobs.py::test_nightly_retries_failed_videos_and_skips_done_ones"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "count-points-not-objects", "a window's count is its distinct objects, not its points",
        COLLECT,
        'count, method = count_objects([p.object_id for p in parsed.points]), "points"',
        'count, method = len(parsed.points), "points"',
        (T_COLLECT,),
    ),
    Mutation(
        "id-less-points-one-object", "a point without an id is an object of its own",
        COLLECT,
        "keys.append(next_anonymous)\n            next_anonymous -= 1",
        "keys.append(-1)",
        (T_COLLECT,),
    ),
    Mutation(
        "y-norm-from-x", "points' y_norm is their y on the 0..1000 scale, over 1000",
        COLLECT, "x_norm, y_norm = normalized(pt.x, pt.y)", "x_norm, y_norm = normalized(pt.x, pt.x)",
        (T_COLLECT,),
    ),
    Mutation(
        "normalized-y-from-x", "grounding.normalized keeps the axes apart",
        GROUNDING, "return x / COORD_SCALE, y / COORD_SCALE", "return x / COORD_SCALE, x / COORD_SCALE",
        (T_GROUNDING, T_COLLECT),
    ),
    Mutation(
        "pixels-y-from-x", "a point's y pixel scales its y by the display height",
        GROUNDING, "return x * width / COORD_SCALE, y * height / COORD_SCALE",
        "return x * width / COORD_SCALE, x * height / COORD_SCALE",
        (T_GROUNDING,),
    ),
    Mutation(
        "pixels-rounded-twice", "pixel positions are correctly rounded (one rounding, not two)",
        GROUNDING, "return x * width / COORD_SCALE, y * height / COORD_SCALE",
        "return x / COORD_SCALE * width, y / COORD_SCALE * height",
        (T_GROUNDING,),
    ),
    Mutation(
        "collect-window-relative-time", "points carry absolute seconds in the video (collect adds the window start)",
        COLLECT, 't_abs = absolute_time(float(row["t_start"]), pt.t)', "t_abs = pt.t",
        (T_COLLECT,),
    ),
    Mutation(
        "absolute-time-ignores-window", "grounding.absolute_time adds the window start",
        GROUNDING, "return window_start + t", "return t",
        (T_GROUNDING, T_COLLECT),
    ),
    Mutation(
        "display-size-never-swaps", "a quarter-turned video's display size swaps width and height",
        GROUNDING, "if rotation % 180 == 90:", "if False:",
        (T_GROUNDING, T_COLLECT, "tests/video/test_readers.py"),
    ),
    Mutation(
        "probe-coded-size", "probe reports the display size (after rotation), through grounding.display_size",
        "pipeline/video/probe.py", "width, height = display_size(coded_w, coded_h, rotation)",
        "width, height = coded_w, coded_h",
        ("tests/video/test_readers.py",),
    ),
    Mutation(
        "frame-match-strict", "a time exactly `tolerance` from a frame still matches it",
        GROUNDING, "matched=best is not None and best_distance <= tolerance",
        "matched=best is not None and best_distance < tolerance",
        (T_GROUNDING,),
    ),
    Mutation(
        "partial-decode-is-ok", "a video with a partly decoded window is partial, not ok",
        COLLECT, "elif error_row is not None or partial_windows or failed_answers:",
        "elif error_row is not None or failed_answers:",
        (T_COLLECT,),
    ),
    Mutation(
        "all-answers-failed-is-partial", "a video none of whose answers came back is failed",
        COLLECT, "if not window_rows or (expected_answers and failed_answers == expected_answers):",
        "if not window_rows:",
        (T_COLLECT,),
    ),
    Mutation(
        "no-readability-check", "a local object the process cannot read fails at fetch (AccessDenied)",
        FETCH, 'with open(path, "rb") as fh:  # readable by us? (a 000 file, another user\'s file)\n                fh.read(1)',
        "pass",
        (T_FETCH,),
    ),
    Mutation(
        "member-read-ahead", "a shard member is one ranged read of its own bytes (no read-ahead past it)",
        FETCH, '{"cache_type": "none", **(', '{**(',
        (T_FETCH,),
    ),
    Mutation(
        "member-from-whole-shard", "a shard member is never fetched by reading the whole shard",
        FETCH, 'fs.open(path, "rb", **opts)', '__import__("io").BytesIO(fs.cat_file(path))',
        (T_FETCH,),
    ),
    Mutation(
        "torch-oom-not-recognised", "torch's CUDA out-of-memory error splits the batch, whatever its message",
        "pipeline/model/engine.py",
        'return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()',
        'return "out of memory" in str(exc).lower()',
        ("tests/run/test_reliability.py::test_what_counts_as_out_of_memory",),
    ),
    Mutation(
        "done-ignores-status", "work_done keeps only the work of rows whose status counts as done",
        "pipeline/results/work.py",
        "if not any_status and query.statuses is not None and r.status not in query.statuses:",
        "if False:",
        (T_NIGHTLY, "tests/tables/test_done_index.py"),
    ),
    Mutation(
        "orphans-kept", "recover() deletes the files a dead writer left uncommitted",
        "pipeline/tables/sink.py", "                if key in committed:", "                if True:",
        (T_SINK,),
    ),
    Mutation(
        "sweep-keeps-orphans", "the operator's sweep deletes uncommitted files no live writer owns",
        "pipeline/tables/sink.py", "if key in committed or layout.token_of_key(key) in live:", "if True:",
        ("tests/tables/test_writers.py::test_recovery_lists_only_a_dead_writers_own_files_not_the_outputs_history",),
    ),
    Mutation(
        "retry-statuses-ignored", "a nightly run processes again the videos whose every row failed",
        "pipeline/run/driver.py", "tuple(s for s in VIDEO_STATUSES if s not in retry) if retry else None)",
        "None)",
        (T_NIGHTLY,),
    ),
)


class StaleMutation(Exception):
    """A mutation's `before` text is not (exactly once) in the code any more."""


def apply(mutation: Mutation, root: Path) -> None:
    """Apply `mutation` to the copy of the repository at `root`."""
    path = root / mutation.path
    text = path.read_text()
    found = text.count(mutation.before)
    if found != 1:
        raise StaleMutation(f"{mutation.name}: its text occurs {found} time(s) in {mutation.path}, not once")
    path.write_text(text.replace(mutation.before, mutation.after))


def copy_repo(dest: Path, source: Path = REPO) -> Path:
    shutil.copytree(source, dest, ignore=_IGNORE, symlinks=True)
    return dest


@dataclass(frozen=True)
class Outcome:
    name: str
    verdict: str  # caught | survived | error
    seconds: float
    output: str  # the tail of pytest's output


def run_tests(root: Path, tests: Sequence[str], timeout: float = 1800.0) -> tuple[int, str]:
    """pytest on the copy at `root` (its own packages first on the path); (exit code, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    return res.returncode, (res.stdout + res.stderr)[-3000:]


def verdict_of(returncode: int) -> str:
    # pytest: 0 all passed, 1 some failed; 2 interrupted / collection error, 4 usage, 5 nothing collected
    return {0: "survived", 1: "caught"}.get(returncode, "error")


def run_mutation(mutation: Mutation, workdir: Path, source: Path = REPO) -> Outcome:
    """Copy the repository, apply `mutation`, run its tests; the copy is removed afterwards."""
    root = copy_repo(workdir / mutation.name, source)
    try:
        apply(mutation, root)
        start = time.monotonic()
        code, output = run_tests(root, mutation.tests)
        return Outcome(mutation.name, verdict_of(code), time.monotonic() - start, output)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:32} {m.rule}  [{m.path}]")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; --list shows them")
    selected = [by_name[n] for n in args.names] or list(MUTATIONS)

    with tempfile.TemporaryDirectory(prefix="molmo-batch-mutations-") as tmp:
        work = Path(tmp)
        for m in selected:  # every mutation must still apply before anything runs
            probe = work / "probe"
            probe.mkdir(exist_ok=True)
            target = probe / m.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / m.path, target)
            try:
                apply(m, probe)
            except StaleMutation as exc:
                print(f"stale mutation: {exc}", file=sys.stderr)
                return 2
        shutil.rmtree(work / "probe")

        tests = list(dict.fromkeys(t for m in selected for t in m.tests))
        print(f"baseline: {len(tests)} test target(s) on an unmutated copy ...", flush=True)
        base = copy_repo(work / "baseline")
        code, output = run_tests(base, tests)
        shutil.rmtree(base, ignore_errors=True)
        if code != 0:
            print(f"the tests fail without any mutation (pytest exit {code}): fix them first\n{output}", file=sys.stderr)
            return 2

        outcomes = []
        for m in selected:
            outcome = run_mutation(m, work)
            outcomes.append(outcome)
            print(f"{outcome.verdict:9} {m.name:32} {outcome.seconds:6.1f}s  {m.rule}", flush=True)
            if outcome.verdict != "caught":
                print("    " + outcome.output.strip().replace("\n", "\n    ")[-1500:], flush=True)

    caught = sum(o.verdict == "caught" for o in outcomes)
    print(f"\n{caught} of {len(outcomes)} mutation(s) caught", end="")
    missed = [o.name for o in outcomes if o.verdict != "caught"]
    print(f"; not caught: {', '.join(missed)}" if missed else "")
    return 0 if not missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
