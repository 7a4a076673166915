"""What a run did: the summary printed at the end, its exit code, run ids and dates."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

log = logging.getLogger("pipeline")


EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3


VIDEO_STATUSES = ("ok", "partial", "failed")  # the `videos` table's status values


@dataclass
class RunSummary:
    run_id: str
    output: str
    videos_listed: int = 0
    input_objects: int = 0  # distinct objects read: files, tar shards, manifest entries
    videos_skipped: int = 0
    videos_committed_elsewhere: int = 0  # processed, but another writer committed them first (not written)
    videos_retried: int = 0  # processed again because of output.retry_statuses (counted in processed)
    ok: int = 0
    partial: int = 0
    failed: int = 0
    windows: int = 0
    answers: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    rows_written: dict[str, int] = field(default_factory=dict)
    plan: str = ""
    stats: str = ""  # Ray Data's execution stats of the graph (operators, tasks, actors, times)
    elapsed_s: float = 0.0
    # Time per stage, summed over parallel tasks/actors (work time, not elapsed; see pipeline.observe.progress).
    decode_s: float = 0.0  # decode tasks' wall time (fetch, probe, decode, resize)
    model_s: float = 0.0  # model actors' call time (processor + generate)
    generate_s: float = 0.0  # generate calls alone (distinct per-call latencies)
    write_s: float = 0.0  # driver: parsing answers into rows and writing Parquet

    @property
    def processed(self) -> int:
        return self.ok + self.partial + self.failed

    @property
    def exit_code(self) -> int:
        if self.failed == 0 and self.partial == 0:
            return EXIT_OK
        if self.ok == 0 and self.partial == 0:
            return EXIT_FAILED
        return EXIT_PARTIAL

    def render(self) -> str:
        rate = self.windows / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"run {self.run_id}: {self.processed} video(s) processed, {self.videos_skipped} already done "
            f"(of {self.videos_listed} listed from {self.input_objects} input object(s)) in {self.elapsed_s:.1f}s",
            f"  videos ok={self.ok} partial={self.partial} failed={self.failed}; windows={self.windows} "
            f"({rate:.2f}/s); answers={self.answers}",
            f"  tokens: prompt={self.prompt_tokens} generated={self.generated_tokens}",
        ]
        if self.videos_committed_elsewhere:
            lines.append(f"  {self.videos_committed_elsewhere} video(s) were committed by another writer on this "
                         "output meanwhile (not written again)")
        if self.plan:
            lines.append(f"  plan: {self.plan}")
        if self.error_types:
            lines.append("  errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.error_types.items())))
        if self.rows_written:
            lines.append("  rows written: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rows_written.items())))
        if self.processed:
            per = self.elapsed_s if self.elapsed_s > 0 else float("nan")
            lines.append(
                f"  time per stage (summed over parallel workers): decode {self.decode_s:.1f}s, "
                f"model {self.model_s:.1f}s (generate {self.generate_s:.1f}s), write {self.write_s:.1f}s"
            )
            lines.append(
                f"  throughput: {self.processed / per:.3f} videos/s, {self.windows / per:.2f} windows/s, "
                f"{self.generated_tokens / per:.1f} generated tokens/s"
            )
        lines.append(f"  tables under {self.output}")
        return "\n".join(lines)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def run_date_for(run_id: str) -> str:
    """The `run_date` partition (YYYY-MM-DD) of a run: its id's first 8 digits (YYYYMMDD), else today (UTC)."""
    day = run_id[:8] if len(run_id) >= 8 and run_id[:8].isdigit() else datetime.now(UTC).strftime("%Y%m%d")
    return f"{day[:4]}-{day[4:6]}-{day[6:8]}"
