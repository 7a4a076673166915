"""Progress, metrics and the record of a run.

- `RunProgress`: what a person watching a long run sees: videos and windows done of the total, rate
  and ETA. On a terminal it is a rich live display (on stderr); with `ray.progress=on` and no terminal
  (CI, job logs) it is a plain line every `interval_s` seconds; `auto` is quiet without a terminal.
- Ray metrics (`record_window_decoded`, `record_generation`): counters and histograms exported through
  Ray's metrics agent (Prometheus, prefixed `ray_`), called from the decode UDF and the model actor.
  They are no-ops outside a Ray worker and never raise.
- The run record: `stage_times` (time per stage from Ray Data's execution stats), `runs_row` (one row
  of the `runs` table: command, config without secrets, package versions, model revision, git commit,
  counts, timings) and `write_runs_row` (one atomic file per run, outside the per-video part protocol).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeline.secrets import MASK, redact

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.run import RunSummary


# -------------------------------------------------------------------------------------------------
# Progress display


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _bar(done: int, total: int | None, width: int = 20) -> str:
    if not total:
        return "[" + "?" * width + "]"
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class RunProgress:
    """Videos and windows done of the total, rate and ETA, fed with the model stage's rows.

    Args:
        mode: the `ray.progress` setting: 'auto' (a live display on a terminal, else nothing), 'on'
            (live on a terminal, else a plain line every `interval_s`), 'off'.
        total_videos: videos this run will process.
        num_tasks: answers per window (one row per window and task arrives from the model stage).
    """

    def __init__(
        self,
        mode: str,
        total_videos: int,
        *,
        num_tasks: int,
        stream: IO[str] | None = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = mode == "on" or (mode == "auto" and is_tty)
        self.live = self.enabled and is_tty
        self.total_videos = total_videos
        self.num_tasks = max(1, num_tasks)
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.videos_done = 0
        self.videos_failed = 0
        self.windows_done = 0
        self._windows_known: dict[str, int] = {}
        self._answers: dict[tuple[str, int], int] = {}
        self._first_window_at: float | None = None
        self._last_line = -float("inf")
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._closed = False
        if self.live:
            self._start_live()

    # -- numbers -------------------------------------------------------------------------------

    def windows_total(self) -> tuple[int | None, bool]:
        """(total windows, exact?): exact once every video's first window has been seen."""
        if not self._windows_known:
            return None, False
        known = sum(self._windows_known.values())
        unseen = max(0, self.total_videos - len(self._windows_known))
        if unseen == 0:
            return known, True
        mean = known / len(self._windows_known)
        return max(self.windows_done, round(known + unseen * mean)), False

    def rate(self) -> float:
        """Windows per second since the first window finished."""
        if self._first_window_at is None or self.windows_done == 0:
            return 0.0
        dt = self.clock() - self.started
        return self.windows_done / dt if dt > 0 else 0.0

    def eta_s(self) -> float | None:
        total, _ = self.windows_total()
        r = self.rate()
        if total is not None and r > 0:
            return max(0.0, (total - self.windows_done) / r)
        elapsed = self.clock() - self.started
        if self.videos_done and self.total_videos:  # no window rate yet: use the video rate
            return elapsed / self.videos_done * (self.total_videos - self.videos_done)
        return None

    def line(self) -> str:
        total, exact = self.windows_total()
        wtotal = "?" if total is None else (str(total) if exact else f"~{total}")
        failed = f" ({self.videos_failed} failed)" if self.videos_failed else ""
        return (
            f"progress: videos {_bar(self.videos_done, self.total_videos)} {self.videos_done}/{self.total_videos}"
            f"{failed} | windows {self.windows_done}/{wtotal} | {self.rate():.2f} windows/s | "
            f"elapsed {_fmt_duration(self.clock() - self.started)} | ETA {_fmt_duration(self.eta_s())}"
        )

    # -- feeding ----------------------------------------------------------------------------------

    def row(self, row: Mapping[str, Any]) -> None:
        """One row from the model stage (a window x task answer, or a video's decode error row)."""
        vid = str(row.get("video_id"))
        w = int(row.get("window_index", -1))
        if w < 0:
            return
        if vid not in self._windows_known and row.get("num_windows") is not None:
            self._windows_known[vid] = int(row["num_windows"])
        key = (vid, w)
        n = self._answers.get(key, 0) + 1
        if n >= self.num_tasks:
            self._answers.pop(key, None)
            self.windows_done += 1
            if self._first_window_at is None:
                self._first_window_at = self.clock()
        else:
            self._answers[key] = n
        self._refresh()

    def track(self, rows: Iterable[Any]) -> Iterator[Any]:
        """Pass the model stage's rows through, counting them; the display closes when the stream ends."""
        try:
            for row in rows:
                self.row(row)
                yield row
        finally:
            self.close()

    def video_done(self, status: str) -> None:
        self.videos_done += 1
        self.videos_failed += status == "failed"
        self._refresh(force_line=False)

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._refresh()
        self._closed = True
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
        else:
            self._emit()

    # -- output -------------------------------------------------------------------------------------

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            refresh_per_second=2,
        )
        self._tasks["videos"] = self._progress.add_task("videos", total=self.total_videos, note="")
        self._tasks["windows"] = self._progress.add_task("windows", total=None, note="")
        self._progress.start()

    def _emit(self) -> None:
        self._last_line = self.clock()
        print(self.line(), file=self.stream, flush=True)

    def _refresh(self, force_line: bool = False) -> None:
        if not self.enabled or self._closed:
            return
        if self._progress is None:
            if force_line or self.clock() - self._last_line >= self.interval_s:
                self._emit()
            return
        total, exact = self.windows_total()
        failed = f"{self.videos_failed} failed" if self.videos_failed else ""
        self._progress.update(self._tasks["videos"], completed=self.videos_done, note=failed)
        self._progress.update(
            self._tasks["windows"],
            completed=self.windows_done,
            total=total,
            note=f"{self.rate():.2f}/s" + ("" if exact or total is None else " (total estimated)"),
        )


# -------------------------------------------------------------------------------------------------
# Ray metrics (exported by each node's metrics agent; names get Ray's `ray_` prefix in Prometheus)

_METRICS: dict[str, Any] = {}
_DECODE_BOUNDS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
_GENERATE_BOUNDS = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]


def _metrics() -> dict[str, Any] | None:
    """This process's metric objects, created on first use; None outside a Ray worker/driver."""
    if _METRICS:
        return _METRICS
    ray = sys.modules.get("ray")  # never import Ray just for metrics
    try:
        if ray is None or not ray.is_initialized():
            return None
        from ray.util.metrics import Counter, Histogram

        _METRICS.update(
            windows_decoded=Counter(
                "molmo_batch_windows_decoded", "Window rows produced by the decode stage.", tag_keys=("status",)
            ),
            decode_seconds=Histogram(
                "molmo_batch_decode_seconds",
                "Seconds to fetch, probe and decode one window (the first window of a video includes fetch/probe).",
                boundaries=_DECODE_BOUNDS,
            ),
            answers=Counter(
                "molmo_batch_answers_generated", "Answers generated by the model stage.", tag_keys=("outcome",)
            ),
            generated_tokens=Counter("molmo_batch_generated_tokens", "Tokens generated by the model stage."),
            generate_seconds=Histogram(
                "molmo_batch_generate_latency_seconds",
                "Seconds of one model call (all tasks of a batch of windows).",
                boundaries=_GENERATE_BOUNDS,
            ),
        )
        return _METRICS
    except Exception:  # metrics must never break a run
        return None


def record_window_decoded(seconds: float, status: str) -> None:
    """Called by the decode UDF once per window row it yields (status ok | partial | failed)."""
    m = _metrics()
    if m is None:
        return
    try:
        m["windows_decoded"].inc(1, tags={"status": str(status or "ok")})
        m["decode_seconds"].observe(float(seconds))
    except Exception:
        pass


def record_generation(per_window: Sequence[Sequence[Any]], seconds: float) -> None:
    """Called by the model actor after each model call with its answers (`Answer` lists per window)."""
    m = _metrics()
    if m is None:
        return
    try:
        answers = [a for window in per_window for a in window]
        failed = sum(1 for a in answers if getattr(a, "error_type", None))
        if len(answers) - failed:
            m["answers"].inc(len(answers) - failed, tags={"outcome": "ok"})
        if failed:
            m["answers"].inc(failed, tags={"outcome": "error"})
        tokens = sum(int(getattr(a, "generated_tokens", 0) or 0) for a in answers)
        if tokens:
            m["generated_tokens"].inc(tokens)
        m["generate_seconds"].observe(float(seconds))
    except Exception:
        pass


# -------------------------------------------------------------------------------------------------
# Time per stage


def stage_times(ds: Any) -> dict[str, float]:
    """Summed wall time of the decode tasks and of the model actors' calls, from Ray Data's stats.

    Summed over parallel tasks/actors, so it is work time, not elapsed time: decode_s > elapsed means
    decode ran in parallel; model_s close to elapsed x actors means the model actors were never idle.
    """
    out = {"decode": 0.0, "model": 0.0}
    try:
        summary = ds._get_stats_summary()
    except Exception:
        return out
    todo = [summary]
    while todo:
        s = todo.pop()
        todo.extend(getattr(s, "parents", []) or [])
        for op in getattr(s, "operators_stats", []) or []:
            name = str(getattr(op, "operator_name", ""))
            wall = getattr(op, "wall_time", None)
            seconds = float(getattr(wall, "sum", 0.0) or 0.0)
            if "decode_batch" in name:  # (if fused with the model stage, it cannot be split: all decode)
                out["decode"] += seconds
            elif "Molmo2Host" in name:
                out["model"] += seconds
    return out


def generate_seconds(latencies: Sequence[float | None]) -> float:
    """Total generate time from the rows' latency_s values.

    Every answer of one model call carries that call's latency (a batch of windows, or all tasks of a
    window sharing its visual prefix), so summing per answer would count a call once per answer; the
    distinct values are the calls.
    """
    return float(sum({float(x) for x in latencies if x}))


# -------------------------------------------------------------------------------------------------
# The run record

# A flag whose value is the next argument (`--token abc`): `secrets.redact` sees only `key=value` forms.
_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|passwd|api[_-]?key|access[_-]?key)[\w-]*$", re.I)


def redact_command(argv: Sequence[str]) -> str:
    """The command line as one string, with credentials masked (`pipeline.secrets.redact`)."""
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

    Local: a temporary file renamed into place; S3: one PUT. Returns the file's path.
    """
    import pyarrow.parquet as pq

    from pipeline.schemas import to_table
    from pipeline.storage import get_fs

    fs, root = get_fs(output, endpoint_url)
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", str(row["run_id"]))
    folder = f"{root.rstrip('/')}/runs/run_date={run_date}"
    path = f"{folder}/run-{safe_id}.parquet"
    buf = io.BytesIO()
    pq.write_table(to_table("runs", [row]), buf, compression="zstd")
    payload = buf.getvalue()
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-run-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, payload)
    return path


def now_utc() -> datetime:
    return datetime.now(UTC)
