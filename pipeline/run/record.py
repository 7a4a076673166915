"""The run record: one row of the `runs` table per run (command, config without secrets, versions, counts, timings)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.io.secrets import MASK, redact
from pipeline.io.storage import get_fs
from pipeline.run.summary import RunSummary
from pipeline.tables import layout
from pipeline.tables.schemas import to_table

# A flag whose value is the next argument (`--token abc`): `secrets.redact` sees only `key=value` forms.
_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|passwd|api[_-]?key|access[_-]?key)[\w-]*$", re.I)


def redact_command(argv: Sequence[str]) -> str:
    """The command line as one string, with credentials masked (`pipeline.io.secrets.redact`)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        out.append(MASK if hide_next else arg)
        hide_next = not hide_next and bool(_SECRET_FLAG.match(arg))
    return redact(shlex.join(out)).replace(f"'{MASK}'", MASK)


PACKAGES = ("molmo-batch", "ray", "torch", "transformers", "tokenizers", "pyarrow", "av", "decord2", "numpy")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD of the git checkout holding the pipeline's source (read-only), or None."""
    root = Path(path) if path else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def model_revision(model: str, revision: str | None) -> str | None:
    """The requested revision, else the commit of the Hub snapshot in the local cache (no download)."""
    if revision:
        return revision
    if "://" in model or os.path.isdir(model) or model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model, "config.json")
        if isinstance(path, str):
            parts = Path(path).parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
    except Exception:
        return None
    return None


def runs_row(
    summary: RunSummary,
    config: RunConfig,
    *,
    started_at: datetime,
    finished_at: datetime,
    command: Sequence[str] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The `runs` table row for a finished run (`error`: the run itself broke, see run.PipelineError)."""
    status = "error" if error else {0: "ok", 3: "partial"}.get(summary.exit_code, "failed")
    return {
        "run_id": summary.run_id,
        "command": redact_command(list(command) if command is not None else sys.argv),
        "started_at": started_at,
        "finished_at": finished_at,
        "status": status,
        "exit_code": 1 if error else summary.exit_code,
        "error": redact(error)[:4000] if error else None,
        "input": redact(config.source.input),
        "output": redact(config.output.output),
        "config": redact(json.dumps(config.public_dict(), sort_keys=True)),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "model_id": redact(config.model.model),
        "model_revision": model_revision(config.model.model, config.model.revision),
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "plan": summary.plan or None,
        "videos_listed": summary.videos_listed,
        "videos_skipped": summary.videos_skipped,
        "videos_ok": summary.ok,
        "videos_partial": summary.partial,
        "videos_failed": summary.failed,
        "windows": summary.windows,
        "answers": summary.answers,
        "prompt_tokens": summary.prompt_tokens,
        "generated_tokens": summary.generated_tokens,
        "errors": json.dumps(dict(sorted(summary.error_types.items()))),
        "rows_written": json.dumps(dict(sorted(summary.rows_written.items()))),
        "elapsed_s": summary.elapsed_s,
        "decode_s": summary.decode_s,
        "model_s": summary.model_s,
        "generate_s": summary.generate_s,
        "write_s": summary.write_s,
    }


def write_runs_row(output: str, run_date: str, row: Mapping[str, Any], *, endpoint_url: str | None = None) -> str:
    """Write one `runs` row as `<output>/runs/run_date=<date>/run-<run_id>.parquet`, atomically.

    `pipeline.tables.layout.atomic_write`: local, a temporary file renamed into place; S3, one PUT.
    Returns the file's path.
    """
    import pyarrow.parquet as pq

    fs, root = get_fs(output, endpoint_url)
    path = layout.run_record_path(root, run_date, str(row["run_id"]))
    buf = io.BytesIO()
    pq.write_table(to_table("runs", [row]), buf, compression="zstd")
    layout.atomic_write(fs, path, buf.getvalue())
    return path


def now_utc() -> datetime:
    return datetime.now(UTC)
