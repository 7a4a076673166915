"""Nothing lost: storage faults, model faults, crashes, kills and reruns, and no secret in any output.

Unit tests (no Ray): the retry policy against a flaky filesystem, the sink's commit protocol under
write failures, redaction, the OOM split. Integration tests: an actor process that dies (injected),
the CLI killed with SIGKILL at several points and rerun (tables equal a clean run's), and a real S3
server (SeaweedFS) cut off in the middle of a run (a proxy resets every connection) until the run has met
the outage, then reachable again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.io.retry import RetryPolicy, StorageUnavailable, is_transient, retry_call
from pipeline.io.secrets import RedactingFilter, redact
from pipeline.tables.schemas import TABLES
from pipeline.tables.sink import TableSink
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.sampling import FrameSampler

if TYPE_CHECKING:
    from pipeline.devtools.seaweed import SeaweedServer

FAST = RetryPolicy(attempts=6, base_delay_s=0.001, max_delay_s=0.01, budget_s=5.0)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRET" + uuid.uuid4().hex[:6]
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDTOKEN" + uuid.uuid4().hex[:6]
KEY_ID = "AKIAZZZZ" + uuid.uuid4().hex[:12].upper()


# ------------------------------------------------------------------------------------------------
# Transient storage errors: classification and backoff


class ClientError(Exception):
    """Shaped like botocore's ClientError (response dict with the HTTP status)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"An error occurred ({code}) when calling the GetObject operation")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def test_transient_errors_are_told_apart() -> None:
    assert is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(ClientError(503, "SlowDown")) and is_transient(ClientError(500, "InternalError"))
    assert is_transient(ClientError(429, "TooManyRequests"))
    wrapped = OSError("s3fs gave up")
    wrapped.__cause__ = ClientError(503, "ServiceUnavailable")
    assert is_transient(wrapped)
    for permanent in (FileNotFoundError("gone"), PermissionError("Access Denied"), ValueError("bad"),
                      ClientError(403, "AccessDenied"), ClientError(404, "NoSuchKey")):
        assert not is_transient(permanent), permanent


def test_retry_backs_off_within_budget_and_gives_up_clearly() -> None:
    calls: list[float] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay_s=0.1, max_delay_s=1.0, budget_s=30)
    assert retry_call(flaky, "get x", policy, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.15 and 0.1 <= sleeps[1] <= 0.3  # doubling, +-50% jitter

    def down() -> None:
        raise ClientError(503, "SlowDown")

    with pytest.raises(StorageUnavailable, match=r"get y: storage kept failing after 5 attempt\(s\)"):
        retry_call(down, "get y", policy, sleep=lambda _s: None)
    with pytest.raises(StorageUnavailable, match="after 1 attempt"):  # the budget ends it too
        retry_call(down, "get z", RetryPolicy(attempts=50, base_delay_s=5, budget_s=1), sleep=lambda _s: None)
    with pytest.raises(FileNotFoundError):  # never retried
        retry_call(lambda: (_ for _ in ()).throw(FileNotFoundError("nope")), "get w", policy, sleep=sleeps.append)


class FlakyFS(LocalFileSystem):
    """A local filesystem that pretends to be remote and fails the first `fail` calls of each operation
    (`fail=-1`: always) with a transient error, the way a throttled or restarting S3 endpoint does."""

    protocol = ("flaky",)

    def __init__(self, fail: int = 2, error: Callable[[], Exception] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.fail = fail
        self.error = error or (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, op: str) -> None:
        n = self.calls[op] = self.calls.get(op, 0) + 1
        if self.fail < 0 or n <= self.fail:
            raise self.error()

    def size(self, path: str) -> int:  # type: ignore[override]
        self._maybe_fail("size")
        return int(super().size(path))

    def get_file(self, rpath: str, lpath: str, **kw: Any) -> None:  # type: ignore[override]
        self._maybe_fail("get_file")
        super().get_file(rpath, lpath, **kw)

    def pipe_file(self, path: str, value: bytes, **kw: Any) -> None:  # type: ignore[override]
        self._maybe_fail("pipe_file")
        self.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(value)


def _decode_settings(**kw: Any) -> DecodeSettings:
    return DecodeSettings(frame_size=64, sampler=FrameSampler("native", 4, 2.0), window_s=30.0, overlap_s=2.0,
                          retry=FAST, **kw)


def test_decode_retries_a_flaky_store_then_fails_the_video_clearly(sample_videos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = sample_videos / "street_short.mp4"
    ref = {"video_id": "v", "uri": f"flaky://{video}", "size_bytes": 0}  # no listed size: the store is asked
    fs = FlakyFS(fail=2)
    monkeypatch.setattr("pipeline.video.fetch.get_fs", lambda uri, endpoint=None: (fs, uri.split("://", 1)[1]))
    rows = list(decode_video(ref, _decode_settings()))
    assert [r["decode_status"] for r in rows] == ["ok"] and fs.calls == {"size": 3, "get_file": 3}

    down = FlakyFS(fail=-1, error=lambda: ClientError(503, f"SlowDown for key {KEY_ID} secret={SECRET}"))
    monkeypatch.setattr("pipeline.video.fetch.get_fs", lambda uri, endpoint=None: (down, uri.split("://", 1)[1]))
    (row,) = decode_video(ref, _decode_settings())
    assert (row["error_stage"], row["error_type"]) == ("fetch", "StorageUnavailable")
    assert "storage kept failing after 6 attempt(s)" in row["error_message"]
    assert SECRET not in row["error_message"] and KEY_ID not in row["error_message"]


def _video_rows(vid: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "videos": [{"video_id": vid, "uri": f"/x/{vid}.mp4", "status": "ok", "run_id": "r"}],
        "errors": [{"video_id": vid, "stage": "decode", "error_type": "PartialDecode", "run_id": "r"}],
    }


def test_sink_retries_writes_and_never_commits_half_a_part(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    flaky = FlakyFS(fail=2)
    sink = TableSink(str(out), run_date="2026-01-01", retry=FAST)
    sink.fs, sink._local = flaky, False  # as if remote: one PUT per file, through the flaky store
    sink.add_video("a", _video_rows("a"))
    sink.flush()  # the store refused the first two writes, then took both files
    assert flaky.calls["pipe_file"] == 2 + 2
    assert pq.read_table(next((out / "videos").rglob("part-*.parquet"))).num_rows == 1

    # The store goes down for good after the data files: the commit record is never written.
    class DiesBeforeCommit(FlakyFS):
        def pipe_file(self, path: str, value: bytes, **kw: Any) -> None:  # type: ignore[override]
            if "/videos/" in path:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            super().pipe_file(path, value, **kw)

    sink.fs = DiesBeforeCommit(fail=0)
    sink.add_video("b", _video_rows("b"))
    with pytest.raises(StorageUnavailable):
        sink.flush()
    assert len(list((out / "errors").rglob("part-*.parquet"))) == 2  # b's errors part: an orphan
    fresh = TableSink(str(out), run_date="2026-01-01")
    assert fresh.recover() == 0  # its writer still holds its lease: a live writer's files are never taken
    sink.close()  # the writer gives its lease back (or it expires): now its orphan goes
    assert fresh.recover() == 1 and fresh.done_video_ids() == {"a"}
    assert len(list((out / "errors").rglob("part-*.parquet"))) == 1
    # Local writes are atomic: no temporary file survives, every file is a whole Parquet file.
    assert not list(out.rglob(".tmp-*"))


# ------------------------------------------------------------------------------------------------
# Secrets


def test_redact_removes_every_credential_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    text = (
        f"GET https://{KEY_ID}:{SECRET}@s3.example:9000/b/k?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Signature=abcd1234 "
        f"failed; aws_secret_access_key = {SECRET}; token={TOKEN}; Authorization: AWS4-HMAC-SHA256 Credential=x, "
        f'Signature=deadbeef; {{"SecretAccessKey": "other-secret-value"}}'
    )
    clean = redact(text)
    for s in (SECRET, TOKEN, KEY_ID, "abcd1234", "deadbeef", "other-secret-value"):
        assert s not in clean, (s, clean)
    assert "s3.example:9000/b/k" in clean and "failed" in clean
    assert redact("max_new_tokens=24 generated_tokens: 5") == "max_new_tokens=24 generated_tokens: 5"

    import logging

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "retrying %s", (f"s3://{KEY_ID}:{SECRET}@b/k",), None)
    RedactingFilter().filter(record)
    assert SECRET not in record.getMessage()


def test_startup_errors_are_redacted(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import ConfigError, build_config
    from pipeline.run.driver import run_pipeline

    def listing_fails(source: Any, **_kw: Any) -> Any:
        from pipeline.source.refs import SourceError

        raise SourceError(f"cannot list input {source.input}: ClientError: denied for {KEY_ID} with secret_key={SECRET}")

    monkeypatch.setattr("pipeline.run.driver.plan_listing", listing_fails)
    cfg = build_config({"source": {"input": f"s3://{KEY_ID}:{SECRET}@bucket/videos"},
                        "model": {"model": str(tiny_model_dir)}, "output": {"output": "/tmp/unused"}})
    with pytest.raises(ConfigError) as info:
        run_pipeline(cfg, echo=lambda _m: None)
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value) and "bucket/videos" in str(info.value)


# ------------------------------------------------------------------------------------------------
# Out of memory: split, retry, error rows for what still fails (engine level, no Ray)


def test_what_counts_as_out_of_memory() -> None:
    import torch

    from pipeline.model.engine import _is_oom

    # A GPU's error is recognised by its type, whatever its message says (the class exists in CPU builds).
    assert _is_oom(torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"))
    assert _is_oom(MemoryError())
    assert _is_oom(RuntimeError("CUDA error: out of memory"))  # wrapped by a library: said in words
    assert not _is_oom(RuntimeError("CUDA error: device-side assert triggered"))
    assert not _is_oom(ValueError("Input image size (112*112) doesn't match model (224*224)."))


def test_oom_splits_batches_and_fails_single_windows_as_rows(tiny_model_dir: Path, sample_videos: Path) -> None:
    from pipeline.model.engine import HostSettings, Molmo2Engine, WindowInput
    from pipeline.results.tasks import build_tasks

    windows = []
    for name in ("street_short", "store_aisle", "portrait_phone"):
        (row,) = decode_video({"video_id": name, "uri": str(sample_videos / f"{name}.mp4"), "size_bytes": 1},
                              DecodeSettings(frame_size=112, sampler=FrameSampler("native", 3, 1.0), window_s=30, overlap_s=2))
        windows.append(WindowInput(row["frames"], row["frame_times"], row["t_start"], row["fps"]))
    tasks = build_tasks(["caption"])
    settings = HostSettings(model=str(tiny_model_dir), tasks=tuple(tasks), device="cpu", max_new_tokens=6)
    engine = Molmo2Engine(settings)
    calls: list[int] = []
    real = engine.answer_batch

    def spy(ws: Any, ps: Any) -> Any:
        calls.append(len(ws))
        return real(ws, ps)

    engine.answer_batch = spy  # type: ignore[method-assign]
    reference = [a[0].text for a in engine.answer_windows(windows, tasks)]
    assert calls == [3]
    calls.clear()
    engine.settings = HostSettings(**{**settings.__dict__, "test_hooks": (("MOLMO_BATCH_TEST_OOM_ABOVE", "1"),)})
    split = engine.answer_windows(windows, tasks)
    assert calls == [1, 1, 1]  # 3 -> (1 | 2 -> 1, 1): only batches that fit reach generate
    assert [a[0].text for a in split] == reference and not any(a[0].error_type for a in split)
    engine.settings = HostSettings(**{**settings.__dict__, "test_hooks": (("MOLMO_BATCH_TEST_OOM_ALWAYS", "1"),)})
    failed = engine.answer_windows(windows, tasks)
    # The hook raises torch.cuda.OutOfMemoryError, as a GPU does: recognised by its type, split, then given up.
    assert [(a[0].error_type, a[0].text) for a in failed] == [("OutOfMemoryError", "")] * 3
    assert all((a[0].error_message or "").startswith("out of memory even alone: injected allocation failure")
               for a in failed)


def test_oom_splits_shared_prefix_batches_of_windows(tiny_model_dir: Path, sample_videos: Path) -> None:
    """Several questions on several windows of one geometry: one shared-prefix batch; out of memory
    halves the windows, then falls back to one question at a time; the answers never change."""
    from pipeline.model.engine import HostSettings, Molmo2Engine, WindowInput
    from pipeline.results.tasks import build_tasks

    windows = [
        WindowInput(row["frames"], row["frame_times"], row["t_start"], row["fps"])
        for row in decode_video({"video_id": "p", "uri": str(sample_videos / "parking_long.mp4"), "size_bytes": 1},
                                DecodeSettings(frame_size=112, sampler=FrameSampler("native", 3, 0.5), window_s=6,
                                               overlap_s=0))
    ][:3]
    tasks = build_tasks(["caption", "count:car"])
    settings = HostSettings(model=str(tiny_model_dir), tasks=tuple(tasks), device="cpu", max_new_tokens=6)
    engine = Molmo2Engine(settings)
    assert len({engine._prefix_group(w) for w in windows}) == 1  # one geometry: one group
    shared: list[int] = []
    single: list[int] = []
    real_shared, real_single = engine.answer_shared_prefix_batch, engine.answer_batch

    def spy_shared(ws: Any, ps: Any) -> Any:
        shared.append(len(ws))
        return real_shared(ws, ps)

    def spy_single(ws: Any, ps: Any) -> Any:
        single.append(len(ws))
        return real_single(ws, ps)

    engine.answer_shared_prefix_batch = spy_shared  # type: ignore[method-assign]
    engine.answer_batch = spy_single  # type: ignore[method-assign]
    reference = [[a.text for a in w] for w in engine.answer_windows(windows, tasks)]
    assert (shared, single) == ([3], [])
    shared.clear()
    # Room for 2 rows: 3 windows x 2 questions -> (1 window | 2 windows -> 1, 1), each 1 x 2 rows fits.
    engine.settings = HostSettings(**{**settings.__dict__, "test_hooks": (("MOLMO_BATCH_TEST_OOM_ABOVE", "2"),)})
    split = engine.answer_windows(windows, tasks)
    assert (shared, single) == ([1, 1, 1], [])
    assert [[a.text for a in w] for w in split] == reference
    shared.clear()
    # Room for 1 row: every window falls back to its questions one at a time.
    engine.settings = HostSettings(**{**settings.__dict__, "test_hooks": (("MOLMO_BATCH_TEST_OOM_ABOVE", "1"),)})
    alone = engine.answer_windows(windows, tasks)
    assert shared == [] and single == [1, 1] * 3
    assert [[a.text for a in w] for w in alone] == reference and not any(a.error_type for w in alone for a in w)


# Integration: a model actor process that dies deterministically is in tests/video/test_bad_videos.py (the
# mixed-corpus run); one that dies once is in the SIGKILL/rerun test below.


def _read(out: Path, table: str) -> list[dict[str, Any]]:
    if not (out / table).exists():
        return []
    return pads.dataset(str(out / table), format="parquet", partitioning="hive").to_table().to_pylist()


# ------------------------------------------------------------------------------------------------
# Integration: SIGKILL the CLI at several points, rerun, compare with an uninterrupted run


def _env(tag: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLMO_BATCH_TEST_", "RAY_ADDRESS"))}
    env.update(
        PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false",
        MOLMO_BATCH_TEST_RUN_TAG=tag,  # marks every process of this run, Ray's included (leak check)
    )
    env.update(extra)
    return env


def _tagged_pids(tag: str) -> list[int]:
    needle = f"MOLMO_BATCH_TEST_RUN_TAG={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
    return pids


# Ray's own processes notice their driver or raylet is gone by polling (the dashboard agent, the log monitor,
# idle workers): on two loaded cores that took over 30 s once in a full-suite run. A leak is a process that never exits;
# how long the exit takes is the machine's load, so the grace is generous and the message names who is left.
EXIT_GRACE_S = 90.0


def _wait_gone(tag: str) -> dict[int, str]:
    """Wait up to EXIT_GRACE_S for every process of run `tag` to exit; the ones left, with their command lines."""
    deadline = time.monotonic() + EXIT_GRACE_S
    while _tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {}
    for pid in _tagged_pids(tag):
        with contextlib.suppress(OSError):
            left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    return left


class CliRun:
    """`python -m pipeline run ...` in its own session (process group), output to a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log, self.tag = log, env["MOLMO_BATCH_TEST_RUN_TAG"]
        self._fh = open(log, "w")  # noqa: SIM115 (closed in wait/kill)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], stdout=self._fh,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (rc={self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group, then check no process of this run (Ray's too) is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._fh.close()
        left = _wait_gone(self.tag)
        for pid in left:  # clean up before failing, so a leak does not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of the killed run survived {EXIT_GRACE_S:.0f} s: {left}"

    def finish(self, timeout: float = 300.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._fh.close()
        left = _wait_gone(self.tag)
        assert not left, f"processes of a finished run survived {EXIT_GRACE_S:.0f} s: {left}"
        return rc

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _parts(out: Path, table: str) -> set[str]:
    return {p.name for p in (out / table).rglob("part-*.parquet")} if (out / table).exists() else set()


VOLATILE = {"run_id", "processed_at", "latency_s"}


def _canonical(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    tables = {}
    for table in TABLES:
        if table == "runs":
            continue
        rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in _read(out, table)]
        tables[table] = sorted(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows)
    return tables


@pytest.mark.integration
@pytest.mark.timeout(1200)  # five CLI runs, each with its own Ray and model load: slow on a loaded machine
def test_sigkill_at_any_point_then_rerun_equals_a_clean_run(
    ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path
) -> None:
    from pipeline.cli import build_parser, config_from_args
    from pipeline.run.driver import run_pipeline

    args = [
        "--input", str(sample_videos), "--model", str(tiny_model_dir), "--tasks", "caption",
        "--window-s", "10", "--overlap-s", "2", "--num-frames", "4", "--max-fps", "1",
        "--max-new-tokens", "8", "--batch-size", "1", "--flush-videos", "1", "--progress", "off",
        "--s3-endpoint-url", f"http://{KEY_ID}:{SECRET}@127.0.0.1:9",  # planted: must show up nowhere
    ]
    secrets_env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SESSION_TOKEN": TOKEN}
    clean_out, out = tmp_path / "clean", tmp_path / "killed"
    clean = run_pipeline(config_from_args(build_parser().parse_args(["run", *args, "--output", str(clean_out)])),
                         echo=lambda _m: None)
    assert clean.exit_code == 0 and clean.ok == 4

    cli_args = [*args, "--output", str(out)]
    logs: list[Path] = []
    runs: list[CliRun] = []

    def start(name: str, **hooks: str) -> CliRun:
        logs.append(tmp_path / f"{name}.log")
        runs.append(CliRun(cli_args, logs[-1], _env(f"{name}-{uuid.uuid4().hex[:8]}", **secrets_env, **hooks)))
        return runs[-1]

    try:
        _kill_and_rerun(start, out, clean_out, tmp_path)
    finally:  # a failed assertion or a timeout must not leave a pipeline (and its Ray) running
        for r in runs:
            if r.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    r.kill()
    # No planted secret in any table, runs record, temp file or log line.
    for path in [*out.rglob("*"), *logs]:
        if path.is_file():
            data = path.read_bytes()
            for s in (SECRET, TOKEN, KEY_ID):
                assert s.encode() not in data, (s, path)


def _kill_and_rerun(start: Callable[..., CliRun], out: Path, clean_out: Path, tmp_path: Path) -> None:
    # 1. Killed before any model work: right after listing.
    run = start("before-model")
    run.wait_for(lambda: "to process" in run.text(), "the listing")
    run.kill()
    assert not _parts(out, "videos")

    # 2. Killed while the model works, before anything is committed.
    events = tmp_path / "events-2"
    run = start("during-model", MOLMO_BATCH_TEST_EVENTS=str(events))
    run.wait_for(lambda: (events / "infer-call").exists(), "the first model call")
    run.kill()
    assert not _parts(out, "videos")

    # 3. Killed in the middle of the second flush: one part committed, the next one's data files
    #    written but not its commit record (TEST-ONLY hook: the second flush pauses before committing).
    events = tmp_path / "events-3"
    run = start("mid-second-flush", MOLMO_BATCH_TEST_EVENTS=str(events), MOLMO_BATCH_TEST_FLUSH_PAUSE_S="0,120")
    written = events / "flush-data-written"
    run.wait_for(lambda: written.exists() and len(written.read_text().splitlines()) == 2, "the second part's data files")
    run.kill()
    assert len(_parts(out, "videos")) == 1
    orphans = _parts(out, "captions") - _parts(out, "videos")
    assert len(orphans) == 1

    # 4. The same command again runs to completion, though its model actor dies once on the way
    #    (TEST-ONLY hook: the first call finding the marker absent creates it and os._exit(1)s).
    marker = tmp_path / "crashed-once"
    run = start("complete", MOLMO_BATCH_TEST_CRASH_ONCE=str(marker))
    assert run.finish() == 0, run.text()[-3000:]
    assert marker.exists()
    assert "recovered: removed" in run.text()  # run 3's orphan part
    assert "4 video(s) listed" in run.text() and "3 to process" in run.text()
    assert _canonical(out) == _canonical(clean_out)
    videos = _read(out, "videos")
    assert len(videos) == 4 and len({v["video_id"] for v in videos}) == 4

    # 5. After success, a rerun does no model work.
    events = tmp_path / "events-6"
    run = start("rerun", MOLMO_BATCH_TEST_EVENTS=str(events))
    assert run.finish() == 0
    assert "4 video(s) listed" in run.text() and "0 to process" in run.text()
    assert not (events / "infer-call").exists()
    assert _canonical(out) == _canonical(clean_out)


# ------------------------------------------------------------------------------------------------
# Integration: the S3 store goes away in the middle of a run and comes back


class StoreOutage:
    """A TCP proxy in front of a real S3 server that a test takes down and brings back at once: while it is
    down, every open connection is reset and every new one is reset as soon as it is accepted (what a
    client sees of a store that went away), and each such connection is counted. The outage begins and
    ends when the test says, not after a sleep, and the server behind it never restarts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.reset_connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        with contextlib.suppress(OSError):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._up.is_set():
                with self._lock:
                    self.reset_connections += 1
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in list(self._open):
                self._reset(sock)
            self._open.clear()

    def back(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.down()
        self._listener.close()


@pytest.mark.integration
def test_s3_outage_mid_run_loses_nothing(
    seaweed: SeaweedServer, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path
) -> None:
    fs = seaweed.filesystem()
    bucket = seaweed.make_bucket("outage")
    for video in sorted(sample_videos.glob("*.mp4")):
        fs.put_file(str(video), f"{bucket}/videos/{video.name}")
    outage = StoreOutage(seaweed.ports["s3.port"])
    try:
        args = [
            "--input", f"s3://{bucket}/videos", "--output", f"s3://{bucket}/tables", "--model", str(tiny_model_dir),
            "--tasks", "caption", "--window-s", "10", "--overlap-s", "2", "--num-frames", "4", "--max-fps", "1",
            "--max-new-tokens", "8", "--batch-size", "1", "--flush-videos", "1", "--progress", "off",
        ]
        events = tmp_path / "events"
        # TEST-ONLY hook (pipeline.faults): the driver stops right after committing its first part, until
        # the test removes the hold file: the store goes away at that point, whatever the machine's speed.
        hold = events / "flush-committed.hold"
        events.mkdir()
        hold.touch()
        env = _env(f"s3-{uuid.uuid4().hex[:8]}", **seaweed.client_env(), MOLMO_BATCH_TEST_EVENTS=str(events))
        env["AWS_ENDPOINT_URL"] = outage.endpoint  # every process of the run reaches the store through the proxy
        run = CliRun(args, tmp_path / "s3.log", env)
        run.wait_for(lambda: (events / "flush-committed.held").exists(), "the first committed part")
        outage.down()  # three parts and the runs record are still to be written: the run must meet it
        hold.unlink()
        run.wait_for(lambda: outage.reset_connections >= 3, "the run trying the store during the outage")
        outage.back()
        rc = run.finish()
        assert rc == 0, run.text()[-3000:]
    finally:
        outage.close()
    fs.invalidate_cache()
    videos = pa.concat_tables(
        [pq.read_table(fs.open(p, "rb")) for p in fs.find(f"{bucket}/tables/videos") if p.endswith(".parquet")]
    ).to_pylist()
    captions = pa.concat_tables(
        [pq.read_table(fs.open(p, "rb")) for p in fs.find(f"{bucket}/tables/captions") if p.endswith(".parquet")]
    ).to_pylist()
    assert sorted(v["status"] for v in videos) == ["ok"] * 4
    assert len({v["video_id"] for v in videos}) == 4
    keys = [(c["video_id"], c["window_index"]) for c in captions]
    assert len(keys) == len(set(keys)) == 6
