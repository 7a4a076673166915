"""The jobs for real, on a SeaweedFS bucket with the tiny Molmo2, in both modes:

- nightly captions two nights in a row over a growing bucket: night 1 locally (`python -m
  jobs.nightly_captions`, an embedded Ray), night 2 with `ray job submit --working-dir .` to a real local
  Ray head; the second night processes only new, changed and previously failed videos;
- retail counting with `ray job submit` to the same head.

The head is started here on loopback with its own ports and temp dir (`ray start --head --block`, a
child process of this test) and stopped by the PIDs it started, never with `ray stop`. Submitted jobs
read the model from s3:// (copied once to the node's disk). Jobs run as separate processes: credentials
reach them through their environment (the standard AWS chain), as they would on a cluster node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from pipeline.devtools.ray_head import RayHead
from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.devtools.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the venv's interpreter, also used as the submitted entrypoint's
RAY = str(Path(sys.executable).parent / "ray")
FAST = ["--max-new-tokens", "8", "--num-frames", "2", "--max-fps", "1", "--batch-size", "4", "--progress", "off"]


def _clip(folder: Path, name: str, seed: int, seconds: float = 2.0) -> Path:
    return write_video(folder / name, SampleSpec(name, seconds=seconds, fps=6, width=128, height=96, seed=seed))


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _s3(seaweed: SeaweedServer) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key=seaweed.access_key, secret_key=seaweed.secret_key,
                             endpoint_override=seaweed.endpoint, scheme="http", region="us-east-1")


def _rows(seaweed: SeaweedServer, path: str) -> list[dict[str, Any]]:
    """A table's rows with its `run_date` partition column (pyarrow's own S3 client, explicit keys)."""
    ds = pads.dataset(path, filesystem=_s3(seaweed), format="parquet", partitioning="hive")
    return ds.to_table().to_pylist()


# -- ray job submit against a real local head --------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head(seaweed: SeaweedServer) -> Iterator[RayHead]:
    # The node's credential chain holds the keys (as an instance role would on AWS); no endpoint here.
    env = {**_base_env(), "AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1"}
    head = RayHead(env)
    try:
        head.start()
        yield head
    finally:
        head.stop()
        assert not head._ours()


def test_nightly_captions_two_nights(seaweed: SeaweedServer, ray_head: RayHead, tiny_model_dir: Path,
                                     tmp_path: Path) -> None:
    """Night 1 runs locally (embedded Ray, local model); the bucket grows; night 2 is submitted to the
    head (model from s3://) and processes only the new, the changed and the failed videos."""
    bucket = seaweed.make_bucket("nightly")
    videos, out = f"s3://{bucket}/videos", f"s3://{bucket}/tables"
    model = f"s3://{bucket}/models/tiny-molmo2/"
    seaweed.upload(tiny_model_dir, model)
    local = tmp_path / "clips"
    seaweed.upload(_clip(local, "a.mp4", 1), f"{videos}/a.mp4")
    seaweed.upload(_clip(local, "b.mp4", 2), f"{videos}/cam/b.mp4")
    broken = local / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    seaweed.upload(broken, f"{videos}/broken.mp4")
    job = ["-m", "jobs.nightly_captions", "--input", videos, "--output", out, "--window-s", "10", "--overlap-s", "1",
           "--model-name", "tiny-molmo2",  # the same weights on night 2 come from the bucket: the same model
           *FAST]

    # Night 1, locally, endpoint from the command line: two good videos and a broken one -> exit 3 (partial).
    env = {**_base_env(), "AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1"}
    first = subprocess.run(
        [PYTHON, *job, "--model", str(tiny_model_dir), "--run-id", "20261101T000000Z-a", "--ray-num-cpus", "4",
         "--s3-endpoint-url", seaweed.endpoint],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert first.returncode == 3, first.stdout[-4000:] + first.stderr[-4000:]
    assert "3 to process" in first.stdout
    assert "ok=2 partial=0 failed=1" in first.stdout

    # The bucket grows: a new video, a changed one (same key, new content), the broken one unchanged.
    seaweed.upload(_clip(local, "c.mp4", 3), f"{videos}/c.mp4")
    seaweed.upload(_clip(local, "b2.mp4", 4), f"{videos}/cam/b.mp4")
    # Night 2 on the cluster; the endpoint travels in the job's runtime_env as AWS_ENDPOINT_URL.
    cache = tmp_path / "model-cache"
    second = ray_head.submit(
        PYTHON, *job, "--model", model, "--model-cache-dir", str(cache), "--run-id", "20261102T000000Z-b",
        working_dir=REPO, runtime_env={"env_vars": {"AWS_ENDPOINT_URL": seaweed.endpoint}},
    )
    log = second.stdout + second.stderr
    assert second.returncode != 0 and "exit code 3" in log, log[-4000:] + ray_head.diagnostics()  # partial again
    assert "retrying 1 video(s) whose status was failed" in log
    assert "new or changed: 2, retried: 1" in log
    # Across both nights: a, b (old), b (new), c ok; broken failed (and retried next night).
    assert "all videos in the output: 5 (ok=4 partial=0 failed=1" in log

    vids = _rows(seaweed, f"{bucket}/tables/videos")
    by_night: dict[str, list[tuple[str, str]]] = {}
    for v in vids:
        by_night.setdefault(str(v["run_date"]), []).append((v["uri"].rsplit("/", 1)[-1], v["status"]))
    assert {d: sorted(x) for d, x in by_night.items()} == {
        "2026-11-01": [("a.mp4", "ok"), ("b.mp4", "ok"), ("broken.mp4", "failed")],
        "2026-11-02": [("b.mp4", "ok"), ("broken.mp4", "failed"), ("c.mp4", "ok")],
    }
    assert {v["run_id"] for v in vids if str(v["run_date"]) == "2026-11-02"} == {"20261102T000000Z-b"}
    # The changed b.mp4 is a new video_id; the broken one keeps its id and gets a second row (history).
    ids = {(v["uri"].rsplit("/", 1)[-1], str(v["run_date"])): v["video_id"] for v in vids}
    assert ids[("b.mp4", "2026-11-01")] != ids[("b.mp4", "2026-11-02")]
    assert ids[("broken.mp4", "2026-11-01")] == ids[("broken.mp4", "2026-11-02")]

    captions = _rows(seaweed, f"{bucket}/tables/captions")
    per_night = {d: {c["video_id"] for c in captions if str(c["run_date"]) == d} for d in ("2026-11-01", "2026-11-02")}
    assert per_night["2026-11-01"] == {ids[("a.mp4", "2026-11-01")], ids[("b.mp4", "2026-11-01")]}
    assert per_night["2026-11-02"] == {ids[("c.mp4", "2026-11-02")], ids[("b.mp4", "2026-11-02")]}
    assert all(c["caption"] for c in captions)
    assert {c["model_id"] for c in captions if str(c["run_date"]) == "2026-11-02"} == {model}
    errors = _rows(seaweed, f"{bucket}/tables/errors")
    assert sorted(str(e["run_date"]) for e in errors) == ["2026-11-01", "2026-11-02"]
    # The s3:// model was copied to the node's disk once.
    copies = [p for p in cache.iterdir() if p.is_dir()]
    assert len(copies) == 1 and (copies[0] / ".molmo-batch-complete").exists()


def test_retail_counting_via_ray_job_submit(seaweed: SeaweedServer, ray_head: RayHead, tiny_model_dir: Path,
                                            tmp_path: Path) -> None:
    bucket = seaweed.make_bucket("retail")
    model = f"s3://{bucket}/models/tiny-molmo2/"
    seaweed.upload(tiny_model_dir, model)
    local = tmp_path / "clips"
    seaweed.upload(_clip(local, "r1.mp4", 6, seconds=4.0), f"s3://{bucket}/retail/store=17/camera=3/2026-11-01T13:59:58Z.mp4")
    seaweed.upload(_clip(local, "r2.mp4", 7), f"s3://{bucket}/retail/store=17/camera=4/2026-11-01T14:05:00Z.mp4")
    seaweed.upload(_clip(local, "r3.mp4", 8), f"s3://{bucket}/retail/unsorted/clip.mp4")  # not in the layout
    cache = tmp_path / "model-cache"
    common = ["--model", model, "--model-cache-dir", str(cache), *FAST]

    retail = ray_head.submit(
        PYTHON, "-m", "jobs.retail_counting", "--input", f"s3://{bucket}/retail", "--output", f"s3://{bucket}/out",
        "--run-id", "20261101T000000Z-r", "--queries", "person,shopping cart", "--window-s", "2", "--overlap-s", "0",
        "--s3-endpoint-url", seaweed.endpoint, *common, working_dir=REPO,
    )
    assert retail.returncode == 0, retail.stdout[-4000:] + retail.stderr[-4000:] + ray_head.diagnostics()
    assert "left out 1 video(s) that do not follow the layout" in retail.stdout
    assert "2 clip(s) added" in retail.stdout

    clips = {(v["store"], v["camera"]): v for v in _rows(seaweed, f"{bucket}/out/retail_videos")}
    assert set(clips) == {("17", "3"), ("17", "4")}
    counts = _rows(seaweed, f"{bucket}/out/retail_counts")
    assert len(counts) == (2 + 1) * 2  # windows of 2 s (4 s and 2 s clips) x 2 queries
    assert {c["query"] for c in counts} == {"person", "shopping cart"}
    first = min((c for c in counts if c["camera"] == "3"), key=lambda c: (c["window_index"], c["query"]))
    assert first["wall_start"].isoformat() == "2026-11-01T13:59:58+00:00"
    hourly = _rows(seaweed, f"{bucket}/out/retail_hourly")
    keys = {(h["store"], h["camera"], h["query"], h["hour"].isoformat()): h["windows"] for h in hourly}
    assert keys == {  # clip 1's windows start at 13:59:58 and 14:00:00: one in each hour
        ("17", "3", "person", "2026-11-01T13:00:00+00:00"): 1,
        ("17", "3", "person", "2026-11-01T14:00:00+00:00"): 1,
        ("17", "3", "shopping cart", "2026-11-01T13:00:00+00:00"): 1,
        ("17", "3", "shopping cart", "2026-11-01T14:00:00+00:00"): 1,
        ("17", "4", "person", "2026-11-01T14:00:00+00:00"): 1,
        ("17", "4", "shopping cart", "2026-11-01T14:00:00+00:00"): 1,
    }
    assert {str(h["run_date"]) for h in hourly} == {"2026-11-01"}
    # The tracks' analytics were written to S3 too: the cameras have no geometry, so in-view occupancy only.
    traffic = _rows(seaweed, f"{bucket}/out/retail_traffic_hourly")
    assert {(t["camera"], t["kind"], t["query"]) for t in traffic} == {("3", "view", "person"), ("4", "view", "person")}
    # The s3:// model was copied to the node's disk once.
    copies = [p for p in cache.iterdir() if p.is_dir()]
    assert len(copies) == 1 and (copies[0] / ".molmo-batch-complete").exists()
