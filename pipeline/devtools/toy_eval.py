"""Evaluate a toy Molmo2 checkpoint on fresh toy-world clips (seeds disjoint from training).

Greedy `model.generate` through the real processor and chat template (no Ray, no pipeline stages: the
training loop's quick check; the end-to-end figures come from benchmarks/bench_accuracy.py); answers read
with the pipeline's parser. Figures:

* count exact: the stated number ("There are 3 people." / "There is 1 person." / "no people" = 0)
  equals the number of distinct people visible in the sampled frames;
* point precision / recall: the points of the count and point answers, matched one-to-one to the true
  people (Hungarian, scipy) where a point at frame label t may match person k if k is visible in that
  frame; a match needs distance <= 5% of the frame: `p50` = normalised distance
  sqrt((dx/W)^2 + (dy/H)^2) <= 0.05 (50 units on the 0..1000 scale; the primary figure), `px5` =
  pixel distance <= 0.05 * max(W, H) (display pixels);
* track id kept: a true person keeps one id when, in every sampled frame where it is visible, a
  predicted track point is matched to it (per-frame Hungarian, 50 units) and all those points carry the
  same id, used for no other true person.

    python -m pipeline.devtools.toy_eval --ckpt toy/checkpoint/model --n 100 [--mp4] [--frames 8]

`--mp4` writes every clip as H.264 mp4 (random size 320x240..1280x720, 10-30 fps, some portrait with
rotation metadata), decodes the sampled frames the way the pipeline does (PyAV, resize of the coded
frame to the model size, rotate upright) and evaluates on those; without it frames are rendered in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.devtools import toyworld as tw
from pipeline.results.parse import parse_answer

EVAL_SEED_BASE = 2_000_000_000  # training seeds stay far below this

# ----------------------------------------------------------------------------------------------
# Parsing: the pipeline's own parser, read into (time label, id, X, Y) points


@dataclass
class Parsed:
    points: list[tuple[str, int | None, float, float]]  # (time label, id, X, Y)
    number: int | None
    ok: bool  # every tag read cleanly, or a count sentence and no tag


def parse(answer: str) -> Parsed:
    """Read an answer with `pipeline.results.parse.parse_answer`; times as the labels the processor writes."""
    parsed = parse_answer(answer)
    points = [(tw.time_label(p.t), p.object_id, p.x, p.y) for p in parsed.points]
    ok = parsed.status == "ok" or (parsed.status == "no_tags" and parsed.number is not None)
    return Parsed(points, parsed.number, ok)


# ----------------------------------------------------------------------------------------------
# Clips


@dataclass
class Clip:
    seed: int
    world: tw.World
    times: np.ndarray  # absolute seconds of the sampled frames
    labels: list[str]
    frames: np.ndarray  # (T, S, S, 3) uint8
    metadata: dict


def sample_times(world: tw.World, rng: np.random.Generator, n_frames: int, step: float) -> np.ndarray:
    idx = np.unique(np.round(np.arange(n_frames) * step * world.fps).astype(int))
    idx = idx[idx < world.n_frames]
    return idx / world.fps


def make_clip_world(seed: int, n_frames: int, *, single_big: bool = False, max_people: int = 5,
                    step: float | None = None, geometry: bool = True, hue_span: float = 1.0, plain: bool = False) -> tuple[tw.World, np.ndarray]:
    rng = np.random.default_rng(seed)
    if step is None:
        step = 0.5 if (n_frames == 1 or rng.random() < 0.7) else float(rng.uniform(0.5, 1.5))
    fps = float(rng.choice([10, 12, 15, 20, 24, 25, 30]))
    duration = (n_frames - 1) * step + 1.0 / fps + 1e-6
    idx = np.unique(np.round(np.arange(n_frames) * step * fps).astype(int))
    times = idx / fps
    if single_big:
        n_start = int(rng.integers(1, 4))
        kw: dict[str, Any] = {"diameter": (0.09, 0.12)}
    else:
        n_start = int(rng.integers(0, max_people + 1))
        kw = {}
    arrival = 0.0 if n_frames == 1 else float(rng.uniform(0.0, 0.7))
    world = tw.make_world(int(rng.integers(0, 2**62)), fps=fps, duration=duration, n_start=n_start,
                          arrival_rate=arrival, check_times=times, hue_span=hue_span, plain=plain, **kw)
    return world, times


def metadata_for(times: np.ndarray, fps: float, size: int) -> dict:
    rel = np.asarray(times, dtype=np.float64) - float(times[0])
    return {
        "total_num_frames": len(rel),
        "fps": float(fps),
        "duration": float(rel[-1] + 1.0 / fps),
        "width": size,
        "height": size,
        "frames_indices": (rel * fps).tolist(),
    }


def labels_for(times: np.ndarray, fps: float) -> list[str]:
    rel = np.asarray(times, dtype=np.float64) - float(times[0])
    return [f"{i / fps:.1f}" for i in (rel * fps).tolist()]


def render_clip(seed: int, n_frames: int, size: int, *, single_big: bool = False, noise: bool = False,
                hue_span: float = 1.0, plain: bool = False) -> Clip:
    world, times = make_clip_world(seed, n_frames, single_big=single_big, hue_span=hue_span, plain=plain)
    rng = np.random.default_rng(seed + 1) if noise else None
    frames = tw.render_model_frames(world, times, size, rng=rng)
    return Clip(seed, world, times, labels_for(times, world.fps), frames, metadata_for(times, world.fps, size))


def mp4_clip(seed: int, n_frames: int, size: int, workdir: str, num_frames: int = 8, max_fps: float = 2.0) -> Clip:
    """A full-spec video (random size/fps/portrait), written as mp4, first window decoded like the pipeline."""
    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(4.0, 8.0))
    world = tw.make_world(seed, duration=duration)
    # the pipeline's window: num_frames / max_fps seconds, native sampling
    window = num_frames / max_fps
    n_src = min(world.n_frames, round(window * world.fps))
    idx = tw.native_sample_times(n_src, world.fps, min(num_frames, n_frames), max_fps)
    times = idx / world.fps
    path = os.path.join(workdir, f"clip_{seed}.mp4")
    tw.write_mp4(world, path, max_frames=int(idx[-1]) + 2)
    frames, _got_t, _info = tw.decode_frames(path, times, size)
    os.unlink(path)
    if len(frames) != len(times):
        raise RuntimeError(f"decoded {len(frames)} of {len(times)} frames")
    return Clip(seed, world, times, labels_for(times, world.fps), frames, metadata_for(times, world.fps, size))


# ----------------------------------------------------------------------------------------------
# Generation


def chat_prompt(processor: Any, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def generate(model: Any, processor: Any, clips: Sequence[Clip], question: str, *, batch: int = 8,
             max_new_tokens: int = 160) -> list[str]:
    import torch

    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    out: list[str] = []
    prompt = chat_prompt(processor, question)
    try:
        for i in range(0, len(clips), batch):
            part = clips[i : i + batch]
            enc = processor(
                text=[prompt] * len(part), videos=[c.frames for c in part],
                video_metadata=[c.metadata for c in part], do_sample_frames=False,
                padding=True, return_tensors="pt",
            )
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
            out += processor.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out


# ----------------------------------------------------------------------------------------------
# Metrics


def _dist_units(world: tw.World, px: np.ndarray, X: float, Y: float) -> tuple[float, float]:
    """(normalised distance in 0..1000 units, pixel distance) between a true centre (display px) and a point."""
    x, y = X / 1000.0 * world.width, Y / 1000.0 * world.height
    dx, dy = x - px[0], y - px[1]
    return 1000.0 * math.hypot(dx / world.width, dy / world.height), math.hypot(dx, dy)


def match_points(clip: Clip, points: list[tuple[str, int | None, float, float]]) -> dict[str, int]:
    """One-to-one match of points (each at a frame label) to the clip's true people."""
    from scipy.optimize import linear_sum_assignment

    ct = tw.clip_truth(clip.world, clip.times, clip.labels)
    n_true = len(ct.first)
    res = {"n_true": n_true, "n_pred": len(points), "tp50": 0, "tp_px5": 0, "tp25": 0, "tp100": 0}
    if not n_true or not points:
        return res
    lab_index = {lab: i for i, lab in enumerate(clip.labels)}
    big = 1e9
    cu = np.full((len(points), n_true), big)
    cp = np.full((len(points), n_true), big)
    for i, (lab, _oid, X, Y) in enumerate(points):
        f = lab_index.get(lab)
        if f is None:
            continue
        for k in range(n_true):
            if ct.visible[k, f]:
                cu[i, k], cp[i, k] = _dist_units(clip.world, ct.px[k, f], X, Y)
    thr_px = 0.05 * max(clip.world.width, clip.world.height)
    for key, cost, thr in (("tp50", cu, 50.0), ("tp_px5", cp, thr_px), ("tp25", cu, 25.0), ("tp100", cu, 100.0)):
        c = np.where(cost <= thr, cost, big)
        r, cidx = linear_sum_assignment(c)
        res[key] = int(np.sum(c[r, cidx] < big))
    return res


def track_consistency(clip: Clip, points: list[tuple[str, int | None, float, float]]) -> dict[str, int]:
    from scipy.optimize import linear_sum_assignment

    ct = tw.clip_truth(clip.world, clip.times, clip.labels)
    n_true = len(ct.first)
    ids_of: list[list[int | None]] = [[] for _ in range(n_true)]
    for f, lab in enumerate(clip.labels):
        pts = [p for p in points if p[0] == lab]
        people = [k for k in range(n_true) if ct.visible[k, f]]
        if not people:
            continue
        assigned = {k: None for k in people}
        if pts:
            c = np.full((len(pts), len(people)), 1e9)
            for i, (_l, _o, X, Y) in enumerate(pts):
                for j, k in enumerate(people):
                    d, _ = _dist_units(clip.world, ct.px[k, f], X, Y)
                    if d <= 50.0:
                        c[i, j] = d
            r, cc = linear_sum_assignment(c)
            for i, j in zip(r, cc, strict=False):
                if c[i, j] < 1e9:
                    assigned[people[j]] = pts[i][1]
        for k in people:
            ids_of[k].append(assigned[k])
    kept = 0
    owner: dict[int, set[int]] = {}
    for k in range(n_true):
        for oid in ids_of[k]:
            if oid is not None:
                owner.setdefault(oid, set()).add(k)
    for k in range(n_true):
        ids = ids_of[k]
        first_id = ids[0] if ids else None
        if first_id is not None and all(i == first_id for i in ids) and owner[first_id] == {k}:
            kept += 1
    n_pred_ids = len({p[1] for p in points})
    return {"n_true": n_true, "kept": kept, "right_n_ids": int(n_pred_ids == n_true)}


def evaluate(model: Any, processor: Any, clips: Sequence[Clip], *, tasks: Sequence[str] = ("count", "point"),
             batch: int = 8, details: list | None = None, track_n: int | None = None) -> dict[str, float]:
    fig: dict[str, float] = {}
    agg = {"n_true": 0, "n_pred": 0, "tp50": 0, "tp_px5": 0, "tp25": 0, "tp100": 0}
    truths = [tw.clip_truth(c.world, c.times, c.labels) for c in clips]
    for task in tasks:
        max_new = 24 + 12 * 8 * 5 if task == "track" else (24 + 12 * 8 if task in ("count", "point") else 80)
        all_clips = clips
        if task == "track" and track_n is not None:
            clips = clips[:track_n]
        answers = generate(model, processor, clips, tw.QUESTIONS[task], batch=batch, max_new_tokens=max_new)
        parsed = [parse(a) for a in answers]
        fig[f"{task}_parsed"] = float(np.mean([p.ok for p in parsed]))
        if task == "count":
            exact = [p.number == len(ct.first) for p, ct in zip(parsed, truths, strict=False)]
            fig["count_exact"] = float(np.mean(exact))
        if task in ("count", "point"):
            for c, p in zip(clips, parsed, strict=False):
                m = match_points(c, p.points)
                for k in agg:
                    agg[k] += m[k]
        if task == "track":
            kept = n = right = 0
            for c, p in zip(clips, parsed, strict=False):
                t = track_consistency(c, p.points)
                kept += t["kept"]
                n += t["n_true"]
                right += t["right_n_ids"]
            fig["track_id_kept"] = kept / max(n, 1)
            fig["track_right_n_ids"] = right / max(len(clips), 1)
        if details is not None:
            for c, a in zip(clips, answers, strict=False):
                details.append({"seed": c.seed, "task": task, "answer": a,
                                "truth": tw.answers(c.world, c.times, c.labels)[task]})
        clips = all_clips
    if agg["n_true"] or agg["n_pred"]:
        for key in ("tp50", "tp_px5", "tp25", "tp100"):
            name = key[2:]
            fig[f"P{name}"] = agg[key] / max(agg["n_pred"], 1)
            fig[f"R{name}"] = agg[key] / max(agg["n_true"], 1)
    return fig


CURVE_COLUMNS = ["step", "stage", "min", "count_exact", "P50", "R50", "P_px5", "R_px5", "P100", "R100",
                 "track_id_kept", "video_gain"]


def curve_table(history: list[dict[str, Any]]) -> str:
    """A run's eval history (RUN/history.json) as a markdown table."""
    lines = ["| " + " | ".join(CURVE_COLUMNS) + " |", "|" + "---|" * len(CURVE_COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in CURVE_COLUMNS) + " |" for r in history]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", help="checkpoint folder (save_pretrained model + processor)")
    ap.add_argument("--curve", metavar="HISTORY", help="print the learning curve of RUN/history.json and stop")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--frames", type=int, default=8, help="max frames a clip (window)")
    ap.add_argument("--single", action="store_true", help="single-frame clips")
    ap.add_argument("--mp4", action="store_true", help="write mp4s, decode like the pipeline")
    ap.add_argument("--tasks", default="count,point,track")
    ap.add_argument("--seed-offset", type=int, default=500_000)
    ap.add_argument("--details", default=None, help="write answers + truths as JSON lines here")
    args = ap.parse_args(argv)
    if args.curve:
        with open(args.curve) as fh:
            print(curve_table(json.load(fh)))
        return 0
    if not args.ckpt:
        ap.error("give --ckpt DIR (or --curve HISTORY)")

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(args.ckpt)
    model = AutoModelForImageTextToText.from_pretrained(args.ckpt, dtype=torch.float32).eval()
    size = int(processor.video_processor.size["height"])
    num_frames = int(processor.video_processor.num_frames)
    max_fps = float(processor.video_processor.max_fps)
    t0 = time.monotonic()
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.n):
            seed = EVAL_SEED_BASE + args.seed_offset + k
            if args.mp4:
                clips.append(mp4_clip(seed, 1 if args.single else args.frames, size, tmp, num_frames, max_fps))
            else:
                n_fr = 1 if args.single else int(np.random.default_rng(seed).integers(1, args.frames + 1))
                clips.append(render_clip(seed, n_fr, size))
    t1 = time.monotonic()
    details: list = []
    fig = evaluate(model, processor, clips, tasks=args.tasks.split(","), details=details)
    fig.update({"n_clips": len(clips), "mp4": bool(args.mp4), "clip_s": round(t1 - t0, 1),
                "eval_s": round(time.monotonic() - t1, 1)})
    print(json.dumps(fig, indent=1))
    if args.details:
        with open(args.details, "w") as fh:
            for d in details:
                fh.write(json.dumps(d) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
