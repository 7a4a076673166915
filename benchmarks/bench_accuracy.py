"""Accuracy end to end: the toy Molmo2 through the real pipeline, on fresh toy-world clips, against their truth.

Generates toy-world clips the model never saw (seeds from 5e9 up: training samples use seeds below 1e9 that
draw random world seeds, evals 2e9-2.1e9; toy/NOTES.md) as mp4 files: N count/point clips of 4-30 s and
fewer tracking clips of 60-180 s, mixed sizes 320x240..1280x720, 10-30 fps, a quarter portrait (stored
landscape with rotation metadata). Then runs the documented CLI, as a user would:

    python -m pipeline run --input DIR --output OUT --model toy/checkpoint/model \\
        --tasks count:person,point:person,track:person --window-s 4 --overlap-s 1 --max-new-tokens 640

(no --num-frames / --max-fps: the pipeline takes 8 frames at 2 fps from the checkpoint) and scores the
Parquet tables it wrote with `pipeline.devtools.toy_metrics` (definitions there and in docs/benchmarks.md):
counts and points on the short clips, tracks on the long ones.

    python benchmarks/bench_accuracy.py --n 12 --n-long 2 [--model toy/checkpoint/model] [--json out.json]

Clips are cached in the work folder by seed (a rerun only runs the pipeline again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED_BASE = 5_000_000_000  # never used by training (< 1e9 sample seeds) or its evals (2e9 + ...)
LONG_SEED_OFFSET = 1_000_000
TASKS = "count:person,point:person,track:person"  # asks "How many people are there?", as the toy model learned
WINDOW_S, OVERLAP_S = 4.0, 1.0  # the checkpoint's 8 frames at 2 fps cover 4 s; 1 s (2 frames) to stitch across
MAX_NEW_TOKENS = 640  # a full track answer: 8 frames x 5 people x ~13 tokens, plus the tag


def clip_world(seed: int, long: bool) -> Any:
    """One clip of the spec: short 4-30 s (counts, points) or long 60-180 s (tracks); every fourth portrait."""
    from pipeline.devtools import toyworld as tw

    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(60.0, 180.0) if long else rng.uniform(4.0, 30.0))
    return tw.make_world(seed, duration=duration, portrait=True if seed % 4 == 1 else None)


def write_clips(folder: Path, seeds: list[int], long: bool) -> list[tuple[str, Any]]:
    """(file name, world) of each clip, written as mp4 unless already there."""
    from pipeline.devtools import toyworld as tw

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        world = clip_world(seed, long)
        name = f"toy_{seed}.mp4"
        if not (folder / name).exists():
            tw.write_mp4(world, str(folder / (name + ".tmp.mp4")))
            os.replace(folder / (name + ".tmp.mp4"), folder / name)
        out.append((name, world))
    return out


def run_pipeline_cli(videos: Path, output: Path, model: str, extra: list[str], *, rerun: bool = True) -> float:
    """The documented command, in a subprocess; returns its wall time (s). `rerun=False` keeps the tables
    an earlier run wrote (to score them again)."""
    if not rerun and output.exists():
        return 0.0
    if output.exists():
        shutil.rmtree(output)
    cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(videos), "--output", str(output),
           "--model", model, "--tasks", TASKS, "--window-s", str(WINDOW_S), "--overlap-s", str(OVERLAP_S),
           "--max-new-tokens", str(MAX_NEW_TOKENS), "--progress", "off", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.monotonic() - t0


def read_tables(output: Path) -> dict[str, list[dict[str, Any]]]:
    """Every committed row of the tables the metrics read."""
    from pipeline.tables.reader import open_tables

    con = open_tables(str(output)).con
    out = {}
    for name in ("videos", "counts", "points", "tracks", "video_counts"):
        cursor = con.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in cursor.description]
        out[name] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    return out


def score(clips: list[tuple[str, Any]], tables: dict[str, list[dict[str, Any]]], kinds: list[str],
          sampler: Any) -> dict[str, Any]:
    """Figures of `clips` for the task kinds `kinds`, plus run checks (statuses, window plans)."""
    from pipeline.devtools.toy_metrics import Tally, sampled_windows, score_clip

    by_name = {Path(str(v["uri"]).split("://")[-1]).name: v for v in tables["videos"]}
    tally = Tally()
    problems = []
    for name, world in clips:
        video = by_name.get(name)
        if video is None:
            problems.append(f"{name}: no videos row")
            continue
        if video["status"] != "ok":
            problems.append(f"{name}: status {video['status']}: {video.get('error_summary')}")
        windows = sampled_windows(world, window_s=WINDOW_S, overlap_s=OVERLAP_S, sampler=sampler)
        if video["windows"] != len(windows):
            problems.append(f"{name}: the run cut {video['windows']} windows, the metric expects {len(windows)}")
        tally.add(score_clip(world, windows, tables, video["video_id"], kinds))
    figures: dict[str, Any] = {k: (round(v, 3) if v is not None else None) for k, v in tally.figures().items()}
    figures.update({"clips": len(clips), "tallies": dict(tally.counts), "problems": problems})
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12, help="count/point clips (4-30 s)")
    ap.add_argument("--n-long", type=int, default=2, help="tracking clips (60-180 s)")
    ap.add_argument("--seed", type=int, default=SEED_BASE, help="first clip seed (keep >= 5e9: unseen in training)")
    ap.add_argument("--model", default=str(REPO / "toy" / "checkpoint" / "model"))
    ap.add_argument("--workdir", default=str(REPO / "benchmarks" / ".work" / "accuracy"))
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--score-only", action="store_true", help="score the tables of the last run again")
    ap.add_argument("--num-frames", type=int, default=None,
                    help="frames a window (default: what the checkpoint declares; 1 = single frames, the stage the "
                         "committed checkpoint reached)")
    ap.add_argument("--pipeline-args", default="--ray-num-cpus 4 --decode-concurrency 1",
                    help="extra `pipeline run` flags (quoted)")
    args = ap.parse_args(argv)

    from pipeline.model.molmo2 import checkpoint_sampling
    from pipeline.video.sampling import FrameSampler

    work = Path(args.workdir)
    short_dir, long_dir = work / "clips" / "short", work / "clips" / "long"
    short = write_clips(short_dir, [args.seed + k for k in range(args.n)], long=False)
    long = write_clips(long_dir, [args.seed + LONG_SEED_OFFSET + k for k in range(args.n_long)], long=True)
    declared = checkpoint_sampling(args.model, None)
    num_frames = args.num_frames or declared.num_frames
    sampler = FrameSampler("native", num_frames, declared.max_fps)  # what the run samples
    results: dict[str, Any] = {"model": args.model, "seeds": [args.seed, args.seed + LONG_SEED_OFFSET],
                               "window_s": WINDOW_S, "overlap_s": OVERLAP_S, "num_frames": num_frames,
                               "max_fps": declared.max_fps, "date": time.strftime("%Y-%m-%d")}
    meta = Path(args.model) / "molmo_toy.json"
    history = REPO / "toy" / "checkpoint" / "history.json"
    if history.exists() and Path(args.model).resolve() == (REPO / "toy" / "checkpoint" / "model").resolve():
        results["checkpoint_step"] = json.loads(history.read_text())[-1]["step"]
    elif meta.exists():
        results["checkpoint"] = json.loads(meta.read_text()).get("kind")
    extra = args.pipeline_args.split() + (["--num-frames", str(args.num_frames)] if args.num_frames else [])
    for label, clips, folder, kinds in (("counts_points", short, short_dir, ["count", "point"]),
                                        ("tracks", long, long_dir, ["count", "track"])):
        if not clips:
            continue
        output = work / f"out_{label}_{num_frames}f"
        wall = run_pipeline_cli(folder, output, args.model, extra, rerun=not args.score_only)
        results[label] = {**score(clips, read_tables(output), kinds, sampler), "wall_s": round(wall, 1)}
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
