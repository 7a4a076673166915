"""The benchmark suite (benchmarks/) runs end to end in its --quick mode.

Correctness only: every benchmark runs on a tiny corpus and model and reports a number for each item.
No timing or ratio is asserted (figures from --quick are meaningless, and timings belong to
`python -m benchmarks.run_all`, not to tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
BENCHES = {"1 decode", "2 prefix", "3 batching", "4 streaming", "5 memory", "6 gpu sim", "7 on paper"}


def test_every_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--quick", "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads((tmp_path / "results-quick.json").read_text())
    assert data["failed"] == []
    results = data["results"]
    assert {r["bench"] for r in results} == BENCHES
    # Every item produced a number; every item with a target has a verdict (whatever it is).
    assert all(isinstance(r["measured"], (int, float)) for r in results), results
    assert all(isinstance(r["met"], bool) for r in results if r["target"])
    assert "Summary" in done.stdout
