"""Progress display, run summary and the `runs` record: unit checks, then one real run with progress=on."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import build_config
from pipeline.observe.metrics import generate_seconds
from pipeline.observe.progress import RunProgress
from pipeline.run.record import package_versions, redact_command, runs_row, write_runs_row
from pipeline.run.summary import RunSummary
from pipeline.tables.reader import open_tables


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rows(video: str, windows: int, tasks: int) -> list[dict[str, Any]]:
    return [{"video_id": video, "window_index": w, "num_windows": windows} for w in range(windows) for _ in range(tasks)]


def test_plain_progress_lines_totals_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = RunProgress("on", 3, num_tasks=2, stream=out, interval_s=10.0, clock=clock)
    assert p.enabled and not p.live
    assert p.windows_total() == (None, False) and p.eta_s() is None
    clock.t = 4.0
    for row in _rows("a", 2, 2):  # video a: 2 windows x 2 tasks
        p.row(row)
    p.video_done("ok")
    assert p.windows_done == 2 and p.windows_total() == (6, False)  # 2 known + 2 unseen videos x 2 (estimated)
    clock.t = 8.0
    for row in _rows("b", 4, 2)[:4]:  # half of video b's windows
        p.row(row)
    assert p.windows_total() == (2 + 4 + 3, False) and p.windows_done == 4  # mean of known = 3
    assert p.rate() == pytest.approx(4 / 8.0)
    assert p.eta_s() == pytest.approx((9 - 4) / 0.5)
    line = p.line()
    assert "videos [######--------------] 1/3" in line and "windows 4/~9" in line and "0.50 windows/s" in line
    assert "ETA 0:00:10" in line
    # The run feeds rows through track(): the display closes when the stream ends.
    for _row in p.track([{"video_id": "c", "window_index": -1, "num_windows": 0}]):  # a failed decode: no window
        p.video_done("failed")
    p.close()  # idempotent
    p.row(_rows("d", 1, 1)[0])  # nothing after close
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("progress: videos [---")  # the first row, then the close
    assert "videos [#############-------] 2/3 (1 failed)" in lines[-1]


def test_progress_modes() -> None:
    assert not RunProgress("auto", 1, num_tasks=1, stream=io.StringIO()).enabled  # quiet without a terminal
    assert not RunProgress("off", 1, num_tasks=1, stream=Tty()).enabled
    tty = Tty()
    p = RunProgress("auto", 2, num_tasks=1, stream=tty)
    assert p.enabled and p.live
    for i, _ in enumerate(p.track(_rows("a", 3, 1))):
        if i == 2:
            p.video_done("ok")
    screen = tty.getvalue()
    assert "videos" in screen and "windows" in screen and "1/2" in screen and "3/" in screen


def test_summary_render_and_runs_row(tmp_path: Path) -> None:
    s = RunSummary(run_id="20260102T030405Z-abc", output=str(tmp_path), videos_listed=3, ok=2, failed=1, windows=5,
                   answers=10, prompt_tokens=1000, generated_tokens=200, elapsed_s=10.0, decode_s=4.0, model_s=6.5,
                   generate_s=5.0, write_s=0.25, error_types=Counter({"probe:DecodeError": 1}), rows_written={"videos": 3})
    text = s.render()
    assert "time per stage (summed over parallel workers): decode 4.0s, model 6.5s (generate 5.0s), write 0.2s" in text
    assert "throughput: 0.300 videos/s, 0.50 windows/s, 20.0 generated tokens/s" in text
    config = build_config({"source": {"input": "s3://user:secret@bucket/in", "s3_endpoint_url": "http://k:s@h:9000"},
                           "output": {"output": str(tmp_path)}, "model": {"model": "allenai/Molmo2-4B", "revision": "v1"}})
    row = runs_row(s, config, started_at=datetime(2026, 1, 2, tzinfo=UTC), finished_at=datetime(2026, 1, 2, 0, 1, tzinfo=UTC),
                   command=["molmo-batch", "run", "--s3-endpoint-url", "http://k:s@h:9000", "--api-token=xyz", "--token", "abc"])
    assert row["status"] == "partial" and row["exit_code"] == 3 and row["model_revision"] == "v1"
    assert "secret" not in row["config"] and "k:s@" not in row["config"] and row["input"] == "s3://***@bucket/in"
    assert row["command"] == "molmo-batch run --s3-endpoint-url http://***@h:9000 --api-token=*** --token ***"
    assert json.loads(row["errors"]) == {"probe:DecodeError": 1} and row["error"] is None
    broke = runs_row(s, config, started_at=datetime(2026, 1, 2, tzinfo=UTC), finished_at=datetime(2026, 1, 2, tzinfo=UTC),
                     command=["x"], error="OSError: storage down (secret_key=abc123)")
    assert (broke["status"], broke["exit_code"]) == ("error", 1) and "abc123" not in broke["error"]
    path = write_runs_row(str(tmp_path), "2026-01-02", row)
    assert path.endswith("runs/run_date=2026-01-02/run-20260102T030405Z-abc.parquet")
    got = open_tables(str(tmp_path)).sql("SELECT run_id, status, decode_s, run_date FROM runs").to_pylist()
    assert [(r["run_id"], r["status"], r["decode_s"], str(r["run_date"])) for r in got] == [
        ("20260102T030405Z-abc", "partial", 4.0, "2026-01-02")]
    assert redact_command(["a", "--secret-key", "v", "--out", "x y"]) == "a --secret-key *** --out 'x y'"
    assert generate_seconds([0.5, 0.5, 0.5, 0.25, None]) == 0.75  # one latency per model call
    assert {"python", "ray", "pyarrow", "molmo-batch"} <= set(package_versions())


@pytest.mark.integration
def test_run_shows_progress_summary_and_records_the_run(
    ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.run.driver import run_pipeline

    out = tmp_path / "tables"
    config = build_config({
        "source": {"input": str(sample_videos), "include": ["street_short.mp4", "parking_long.mp4"]},
        "model": {"model": str(tiny_model_dir), "max_new_tokens": 8, "batch_size": 3},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "sampling": {"num_frames": 4, "max_fps": 1.0},
        "tasks": {"tasks": "caption,count:person"},
        "output": {"output": str(out)},
        "ray": {"progress": "on"},
    })
    summary = run_pipeline(config)
    print(summary.render())
    captured = capsys.readouterr()
    assert summary.exit_code == 0 and (summary.ok, summary.windows) == (2, 4)
    progress = [line for line in captured.err.splitlines() if line.startswith("progress: ")]
    assert progress and "videos [####################] 2/2" in progress[-1] and "windows 4/4" in progress[-1]
    assert "time per stage" in captured.out and "throughput:" in captured.out
    assert summary.decode_s > 0 and summary.model_s > 0 and 0 < summary.generate_s <= summary.model_s

    tables = open_tables(str(out))
    (run,) = tables.sql("SELECT * FROM runs").to_pylist()
    assert run["run_id"] == summary.run_id and run["status"] == "ok" and run["exit_code"] == 0
    assert (run["videos_ok"], run["windows"], run["answers"]) == (2, 4, 8)
    assert (run["prompt_tokens"], run["generated_tokens"]) == (summary.prompt_tokens, summary.generated_tokens)
    assert run["model_s"] == summary.model_s and run["decode_s"] == summary.decode_s
    assert json.loads(run["config"])["model"]["model"] == str(tiny_model_dir)
    assert {"ray", "torch", "transformers"} <= set(json.loads(run["package_versions"]))
    assert run["git_commit"] is None or len(run["git_commit"]) == 40
    assert json.loads(run["rows_written"])["videos"] == 2
    assert tables.sql("SELECT count(*) AS n FROM captions").to_pylist() == [{"n": 4}]

    # A rerun has nothing to do, and still leaves its record.
    again = run_pipeline(config, echo=lambda _m: None)
    assert again.processed == 0
    assert [r["videos_skipped"] for r in open_tables(str(out)).sql(
        "SELECT videos_skipped FROM runs ORDER BY started_at").to_pylist()] == [0, 2]
