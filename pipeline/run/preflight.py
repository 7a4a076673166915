"""Preflight: every check of a run's configuration that can fail, made before Ray starts or a video is read.

`preflight(config)` raises `ConfigError` with one line that says what to fix; the CLI and the jobs print
it as `configuration error: ...` and exit 2. What it checks, cheapest first:

1. the config itself: `--input` and `--output` given, a window's frames fit Molmo2's context, every task
   and prompt template well formed (`pipeline.run.settings.check_ready`, `tasks_of`); finite numbers and
   template placeholders are already refused when the config is built (`pipeline.config`);
2. the model: a local directory or s3:// prefix holds a config.json declaring a Molmo2, and a Hub id
   is in the local Hugging Face cache when HF_HUB_OFFLINE is set (`pipeline.model.store`);
3. the output: a small file is really created and deleted where the tables go (local or any fsspec
   store), so a path that is a file, sits under a file, is read-only or names a missing bucket fails
   now, not after every video was decoded and answered.

Not here: listing the input (the run lists it once, right after; a missing input is a ConfigError
there too), and an empty input, which is not a configuration error: the run prints
`no_videos_message(config)` and exits 0 (docs/running.md, "Exit codes").
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from pipeline.config import ConfigError, RunConfig
from pipeline.io.retry import retry_call
from pipeline.io.secrets import public_uri, redact
from pipeline.io.storage import get_fs
from pipeline.model.store import check_model_reachable
from pipeline.run import settings
from pipeline.source import manifest, shards

PROBE_PREFIX = ".molmo-batch-write-probe-"


def preflight(config: RunConfig) -> None:
    """Check everything about `config` that can be checked before Ray starts; raise ConfigError."""
    settings.check_ready(config)
    try:
        settings.tasks_of(config)
    except ValueError as exc:  # the config's own validation catches these first; one message either way
        raise ConfigError(f"tasks: {exc}") from None
    try:
        check_model_reachable(config.model.model, config.source.s3_endpoint_url, revision=config.model.revision)
    except ConfigError as exc:
        raise ConfigError(_one_line(exc)) from None
    check_output_writable(config)


def check_output_writable(config: RunConfig) -> None:
    """Create and delete a small file where the tables go; raise ConfigError with a fix if that fails.

    Transient storage errors are retried within the run's storage retry budget. A local output folder
    that does not exist yet is created for the probe and removed again (the run creates it for real).
    """
    output = config.output.output
    fs, root = get_fs(output, config.source.s3_endpoint_url)
    root = root.rstrip("/") or "/"
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    shown = public_uri(output)
    fix = "give --output a folder or s3://BUCKET/PREFIX this user can write to"
    probe_name = PROBE_PREFIX + uuid.uuid4().hex[:12]
    if protocol in ("file", "local"):
        _probe_local(Path(root), probe_name, shown, fix)
        return
    probe = f"{root}/{probe_name}"
    try:
        retry_call(lambda: fs.pipe_file(probe, b"molmo-batch write probe\n"), f"write a probe file under {shown}",
                   settings.storage_retry(config))
        retry_call(lambda: fs.rm(probe), f"delete the probe file under {shown}", settings.storage_retry(config))
    except Exception as exc:
        raise ConfigError(_one_line(f"--output {shown} is not writable ({type(exc).__name__}: {exc}); {fix} "
                                    "(check the bucket name, the endpoint and the credentials)")) from None


def _probe_local(root: Path, probe_name: str, shown: str, fix: str) -> None:
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == root else f"is under the file {existing}"
        raise ConfigError(f"--output {shown} {where}, not a folder; {fix}")
    created: list[Path] = []
    try:
        for folder in reversed([p for p in (root, *root.parents) if not p.exists()]):
            folder.mkdir()
            created.append(folder)
        probe = root / probe_name
        with open(probe, "xb") as fh:
            fh.write(b"molmo-batch write probe\n")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(_one_line(f"--output {shown} is not writable ({reason}: "
                                    f"{exc.filename or root}); {fix}")) from None
    finally:
        for folder in reversed(created):  # leave nothing behind: the run makes its folders itself
            with contextlib.suppress(OSError):
                folder.rmdir()


def no_videos_message(config: RunConfig) -> str:
    """What a run says when its input lists no video at all (it then exits 0, nothing to do)."""
    source = config.source
    message = f"no videos found under {public_uri(source.input)}"
    if not _is_manifest_or_shards(source.input):
        message += f" matching --include {','.join(source.include)}"
        if source.exclude:
            message += f" and not --exclude {','.join(source.exclude)}"
    return message + ": nothing to do (check --input and --include if videos were expected)"


def _is_manifest_or_shards(url: str) -> bool:
    return manifest.is_manifest_input(url) or shards.is_shard_input(url)


def _one_line(message: object) -> str:
    return " ".join(redact(message).split())
