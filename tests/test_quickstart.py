"""The README's first Quick start command, run as a user would, into a clean directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def test_readme_quickstart_demo(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make demo\b", readme, re.M), "README Quick start must start with `make demo`"
    workdir = tmp_path / "fresh"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        ["make", "-C", str(REPO), "demo", f"VENV={Path(sys.prefix)}", f"WORKDIR={workdir}"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"videos ok=4 partial=0 failed=0", out), out[-4000:]
    for table in ("videos", "captions", "counts", "points", "tracks", "video_counts"):
        assert f"\n{table}: " in proc.stdout, table
        assert list((workdir / "tables" / table).rglob("*.parquet")), table
    assert "random weights" in proc.stdout
