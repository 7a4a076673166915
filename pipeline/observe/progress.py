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

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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
