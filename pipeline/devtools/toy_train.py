"""Train the toy Molmo2 on the toy world, on a CPU, offline, seeded and resumable.

Curriculum (stages advance on eval gates or step caps, see STAGES):
  A  single frames, 1-3 large discs, count + point
  B  single frames, 0-5 discs of the full size range, count + point
  C  clips of 1-8 frames (2 fps mostly), count + point + caption (single frames kept in the mix)
  D  as C plus tracking (only once video pointing is good)

Loss on answer tokens + the end token only; batches go through the real processor and chat template.
State (model, optimizer, step, stage, rng, best figure) is saved to RUN/ckpt every --ckpt-min minutes
and a restart resumes from it. The best model so far (by the current stage's eval figure) is saved
with save_pretrained (model + processor) to RUN/best at each eval; RUN/last holds the latest eval's model.

    nohup nice -n 10 python -m pipeline.devtools.toy_train --run RUN > RUN/train.log 2>&1 &
    python -m pipeline.devtools.toy_train --smoke [--run DIR]   # 3 steps (one of each batch kind), saved

--smoke runs 3 more steps than the run folder holds (a fresh folder: steps 1-3; again: 4-6, resumed), with
tiny evals, and saves the model (RUN/last) and the resume state like a real run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.devtools import toy_build
from pipeline.devtools import toy_eval as ev
from pipeline.devtools import toyworld as tw

# stage: min steps in the stage, latest end (fraction of the time budget --max-hours), eval gate to move on
STAGES: dict[str, dict[str, Any]] = {
    "A": {"min": 300, "until": 0.30, "gate": ("F50", 0.40)},
    "B": {"min": 800, "until": 0.55, "gate": ("F50", 0.80)},
    "C": {"min": 300, "until": 0.80, "gate": ("F50", 0.70)},
    "D": {"min": 10**9, "until": 10.0, "gate": None},
}
NEXT = {"A": "B", "B": "C", "C": "D"}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def sample_spec(stage: str, rng: np.random.Generator, max_frames: int, single_share: float = 0.2
                ) -> tuple[int, bool, str]:
    """(n_frames, single_big, task) of one training sample; `max_frames` may be ramped (--frames-ramp)."""
    if stage == "A":
        return 1, True, str(rng.choice(["count", "point"]))
    if stage == "B":
        return 1, rng.random() < 0.1, str(rng.choice(["count", "point"]))
    n = 1 if rng.random() < single_share or max_frames < 2 else int(rng.integers(2, max_frames + 1))
    if stage == "C":
        task = str(rng.choice(["count", "point", "caption"], p=[0.45, 0.45, 0.10]))
    else:
        task = str(rng.choice(["count", "point", "track", "caption"], p=[0.28, 0.24, 0.40, 0.08]))
        if task == "track" and n == 1 and rng.random() < 0.7:
            n = int(rng.integers(2, max_frames + 1))
    return n, False, task


def ease_at(stage: str, steps_in_stage: int, args: Any) -> float:
    """Curriculum ease 1 -> 0: stage A is fully easy (red-ish discs only, a plain grey floor: the language
    model must first find a linear colour feature); over the first --hue-ramp steps of stage B hues widen
    to the whole circle and textured, tinted floors come in."""
    if stage == "A":
        return 1.0
    if stage == "B":
        return max(0.0, 1.0 - steps_in_stage / max(args.hue_ramp, 1))
    return 0.0


def make_sample(seed: int, stage: str, size: int, max_frames: int, ease: float = 0.0, single_share: float = 0.2
                ) -> tuple[np.ndarray, dict, str, str]:
    rng = np.random.default_rng(seed)
    n, big, task = sample_spec(stage, rng, max_frames, single_share)
    span = 1.0 if ease <= 0 else 0.06 + 0.94 * (1.0 - ease)  # hue span: red-ish (6% of the circle) when easy
    plain = bool(rng.random() < ease)
    world, times = ev.make_clip_world(seed, n, single_big=big, hue_span=span, plain=plain)
    frames = tw.render_model_frames(world, times, size, rng=rng)
    if rng.random() < 0.5:  # brightness / colour-range jitter (decoded mp4s differ by a few levels)
        shift = rng.normal(0, 2.5, size=3)
        frames = np.clip(frames.astype(np.float32) + shift, 0, 255).astype(np.uint8)
    labels = ev.labels_for(times, world.fps)
    ans = tw.answers(world, times, labels)[task]
    return frames, ev.metadata_for(times, world.fps, size), tw.QUESTIONS[task], ans


class Batcher:
    def __init__(self, processor: Any):
        self.processor = processor
        tok = processor.tokenizer
        self.tail_len = len(tok("<|im_start|>assistant\n", add_special_tokens=False).input_ids)
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.eos = tok.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, samples: list) -> dict:
        import torch

        p = self.processor
        p.tokenizer.padding_side = "right"
        texts = [ev.chat_prompt(p, q) + a + "<|im_end|>" for _, _, q, a in samples]
        enc = p(text=texts, videos=[s[0] for s in samples], video_metadata=[s[1] for s in samples],
                do_sample_frames=False, padding=True, return_tensors="pt")
        ids = enc["input_ids"]
        labels = torch.full_like(ids, -100)
        for b in range(ids.shape[0]):
            pos = (ids[b] == self.im_start).nonzero().flatten()
            start = int(pos[-1]) + self.tail_len
            end = int(enc["attention_mask"][b].sum())
            labels[b, start:end] = ids[b, start:end]
        enc["labels"] = labels
        return enc


def lr_at(step: int, train_s: float, args: Any) -> float:
    """Warm-up over steps, then constant, then a cosine to lr_floor over the last 25% of the time budget."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac_t = train_s / (args.max_hours * 3600)
    if frac_t < 0.75:
        return args.lr
    frac = min(1.0, (frac_t - 0.75) / 0.25)
    return args.lr * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def vis_mult(step: int, args: Any) -> float:
    """Learning-rate multiplier of the vision side: 0 (frozen) before --vis-freeze, then a linear ramp over
    --vis-freeze steps to --vis-lr-mult."""
    if step < args.vis_freeze:
        return 0.0
    return args.vis_lr_mult * min(1.0, (step - args.vis_freeze + 1) / max(args.vis_freeze, 1))


def save_state(path: Path, model: Any, opt: Any, state: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state(),
                "py_rng": random.getstate()}, tmp)
    os.replace(tmp, path)


def save_pretrained(model: Any, processor: Any, out: Path) -> None:
    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    meta = out.parent / "init" / toy_build.METADATA_FILE
    if meta.exists():
        shutil.copy(meta, tmp / "molmo_toy.json")
    for f in tmp.iterdir():
        f.chmod(0o644)  # save_pretrained writes the weights 0600
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def video_gain(model: Any, batcher: Any, stage: str, size: int, max_frames: int) -> float:
    """Loss with each sample's videos replaced by another sample's minus loss with the true videos (0: the
    model ignores the video)."""
    import torch

    samples = [make_sample(900_000_000 + i, stage, size, max_frames, 1.0 if stage == "A" else 0.0) for i in range(8)]
    shuffled = [(samples[(i + 3) % 8][0], samples[(i + 3) % 8][1], samples[i][2], samples[i][3]) for i in range(8)]
    with torch.no_grad():
        true = float(model(**batcher(samples)).loss)
        other = float(model(**batcher(shuffled)).loss)
    return other - true


def mp4_eval_set(run: Path, n: int, size: int, num_frames: int, max_fps: float) -> list:
    """Fixed eval clips for the video stages: full-spec videos (random size 320x240..1280x720, 10-30 fps,
    some portrait with rotation metadata) written as H.264 mp4 and decoded like the pipeline (first window,
    native sampling). Built once, cached in RUN/evalset_mp4.pkl."""
    import pickle
    import tempfile

    cache = run / "evalset_mp4.pkl"
    if cache.exists():
        clips = pickle.loads(cache.read_bytes())
        if len(clips) >= n:
            return clips[:n]
    t0 = time.monotonic()
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n):
            clips.append(ev.mp4_clip(ev.EVAL_SEED_BASE + 5_000_000 + k, num_frames, size, tmp, num_frames, max_fps))
    cache.write_bytes(pickle.dumps(clips))
    log(f"built {n} mp4 eval clips in {time.monotonic() - t0:.0f} s -> {cache}")
    return clips


def eval_clips(stage: str, n: int, size: int, max_frames: int, run: Path, processor: Any,
               smoke: bool = False) -> tuple[list, tuple]:
    if smoke:
        return [ev.render_clip(ev.EVAL_SEED_BASE + k, 1 + k % max_frames, size) for k in range(n)], ("count", "point", "track")
    if stage in ("A", "B"):
        easy = stage == "A"
        clips = [ev.render_clip(ev.EVAL_SEED_BASE + k * 7, 1, size, single_big=easy, hue_span=0.06 if easy else 1.0,
                                plain=easy) for k in range(n)]
        return clips, ("count", "point")
    vp = processor.video_processor
    clips = mp4_eval_set(run, n, size, int(vp.num_frames), float(vp.max_fps))
    tasks = ("count", "point", "track") if stage == "D" else ("count", "point")
    return clips, tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="run folder (state, evals, models); --smoke: a new temporary one")
    ap.add_argument("--init", default=None, help="initial checkpoint dir (default RUN/init, built if missing)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch", type=int, default=8, help="single-frame stages")
    ap.add_argument("--video-batch", type=int, default=6, help="video stages")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-floor", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--total-steps", type=int, default=10**9, help="stop after this many steps")
    ap.add_argument("--max-frames", type=int, default=8)
    ap.add_argument("--eval-min", type=float, default=10.0)
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument("--ckpt-min", type=float, default=5.0)
    ap.add_argument("--max-hours", type=float, default=2.5, help="time budget (training seconds; LR schedule and stage caps follow it)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hue-ramp", type=int, default=1500, help="stage-B steps over which hues widen to all")
    ap.add_argument("--vis-freeze", type=int, default=500, help="steps with the vision tower + adapter frozen")
    ap.add_argument("--vis-lr-mult", type=float, default=0.5, help="vision-side LR multiplier after the freeze")
    ap.add_argument("--stage", default=None, help="force the starting stage (fresh runs only)")
    ap.add_argument("--resume-stage", default=None, help="on resume, switch to this stage (e.g. back to B for more single-frame steps)")
    ap.add_argument("--until", default="", help="override stage caps as fractions of --max-hours, e.g. B=0.45,C=0.72")
    ap.add_argument("--single-share", type=float, default=0.2, help="share of single-frame samples in stages C and D")
    ap.add_argument("--frames-ramp", type=int, default=0,
                    help="video-stage steps over which clips grow from 2 frames to --max-frames (0: at once)")
    ap.add_argument("--text-hidden", type=int, default=256)
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--vision-hidden", type=int, default=96)
    ap.add_argument("--vision-layers", type=int, default=3)
    args = ap.parse_args(argv)
    if args.run is None and not args.smoke:
        ap.error("give --run RUN (a folder for the resume state, evals and models), or --smoke")

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run = Path(args.run) if args.run else Path(tempfile.mkdtemp(prefix="toy_smoke_"))
    if args.smoke:
        args.warmup, args.eval_n, args.video_batch, args.batch = 1, 2, 2, 2
    run.mkdir(parents=True, exist_ok=True)
    init = Path(args.init) if args.init else run / "init"
    if not (init / "config.json").exists():
        toy_build.build(argparse.Namespace(out=str(init), text_hidden=args.text_hidden,
                                           text_layers=args.text_layers, vision_hidden=args.vision_hidden,
                                           vision_layers=args.vision_layers, seed=args.seed, overwrite=True))
    processor = AutoProcessor.from_pretrained(init)
    model = AutoModelForImageTextToText.from_pretrained(init, dtype=torch.float32)
    model.model.vision_tower.positional_embedding.requires_grad_(False)
    size = int(processor.video_processor.size["height"])
    # Two parameter families: the language model (+ lm_head), and the vision side (vision tower + adapter).
    # The vision side is frozen for the first --vis-freeze steps and then trained with a smaller learning
    # rate: its weights start small (ViT std 0.02) and Adam's unit-size steps on a gradient that is still
    # noise (the LM does not read the video yet) otherwise wash out the calibrated, salient visual tokens
    # within a few hundred steps (seen: token norm 1 -> 67, dominated by position, disc tokens no longer
    # standing out, and answers independent of the video).
    groups = []
    for fam in ("lm", "vis"):
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad
                  and (("vision_tower" in n or "multi_modal_projector" in n) == (fam == "vis"))]
        groups.append({"params": [p for n, p in params if p.ndim >= 2], "weight_decay": 0.01, "fam": fam})
        groups.append({"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0, "fam": fam})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
    ckpt = run / "ckpt" / "state.pt"
    ckpt.parent.mkdir(exist_ok=True)
    state: dict[str, Any] = {"step": 0, "stage": args.stage or "A", "stage_start": 0, "best": -1.0, "train_s": 0.0,
             "history": []}
    if ckpt.exists():
        blob = torch.load(ckpt, weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        state = blob["state"]
        torch.set_rng_state(blob["torch_rng"])
        np.random.set_state(blob["np_rng"])
        random.setstate(blob["py_rng"])
        log(f"resumed from {ckpt}: step {state['step']} stage {state['stage']}")
        if args.resume_stage and args.resume_stage != state["stage"]:
            log(f"stage {state['stage']} -> {args.resume_stage} (--resume-stage) at step {state['step']}")
            # back-dated start: a return to B keeps its hue/floor ramp finished (ease 0), not easy again
            back = args.hue_ramp if args.resume_stage == "B" else 0
            state["stage"], state["stage_start"] = args.resume_stage, state["step"] - back
    if args.smoke:  # three more steps than the folder holds: a resumed smoke run continues the count
        args.total_steps = state["step"] + 3
    for item in filter(None, args.until.split(",")):
        name, frac = item.split("=")
        STAGES[name.strip()]["until"] = float(frac)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {n_params:,} params; frame {size}px; batch {args.batch}; total_steps {args.total_steps}; run {run}")
    batcher = Batcher(processor)
    t_start = time.monotonic()
    last_ckpt = last_eval = time.monotonic()
    losses: list[float] = []
    base_train_s = state["train_s"]
    model.train()
    while state["step"] < args.total_steps:
        step = state["step"]
        stage = state["stage"]
        if args.smoke:  # one step of each kind of batch: single frame, video, video + tracking
            stage = "ACD"[step % 3]
        seeds = [args.seed * 1_000_000_007 % 10**9 + step * 64 + i for i in range(args.batch if stage in "AB" else args.video_batch)]
        t0 = time.monotonic()
        span = ease_at(stage, step - state["stage_start"], args)
        # Clips grow from 2 frames to --max-frames over --frames-ramp steps of the video stages (a model that
        # points on single frames loses it when thrown 8 frames at once: toy/NOTES.md).
        in_video = max(0, state["step"] - state["stage_start"]) if stage in "CD" else 0
        frames = args.max_frames if args.frames_ramp <= 0 else min(
            args.max_frames, 2 + (args.max_frames - 2) * in_video // args.frames_ramp)
        samples = [make_sample(s, stage, size, frames, span, args.single_share) for s in seeds]
        enc = batcher(samples)
        t1 = time.monotonic()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, state["train_s"], args) * (vis_mult(step, args) if g["fam"] == "vis" else 1.0)
        out = model(**enc)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t2 = time.monotonic()
        losses.append(float(loss.detach()))
        state["step"] = step + 1
        state["train_s"] = base_train_s + (time.monotonic() - t_start)
        if args.smoke or state["step"] % 25 == 0:
            lr_now = lr_at(step, state["train_s"], args)
            log(f"step {state['step']} stage {stage} ease {span:.2f} loss {np.mean(losses):.4f} lr {lr_now:.2e} "
                f"tokens {enc['input_ids'].shape[1]} data {t1 - t0:.2f}s fwdbwd {t2 - t1:.2f}s "
                f"elapsed {state['train_s'] / 60:.1f} min")
            losses = []
        now = time.monotonic()
        do_eval = (args.smoke and state["step"] == args.total_steps) or (now - last_eval) > args.eval_min * 60
        if do_eval:
            model.eval()
            te = time.monotonic()
            clips, tasks = eval_clips(stage, args.eval_n, size, args.max_frames, run, processor, args.smoke)
            fig = ev.evaluate(model, processor, clips, tasks=tasks, track_n=24)
            f50 = 2 * fig.get("P50", 0) * fig.get("R50", 0) / max(fig.get("P50", 0) + fig.get("R50", 0), 1e-9)
            fig["F50"] = f50
            if not args.smoke:
                fig["video_gain"] = video_gain(model, batcher, stage, size, args.max_frames)
            score = f50 + fig.get("count_exact", 0) + (fig.get("track_id_kept", 0) if stage == "D" else 0)
            rec = {"step": state["step"], "stage": stage, "min": round(state["train_s"] / 60, 1),
                   "eval_s": round(time.monotonic() - te, 1), **{k: round(v, 3) for k, v in fig.items()}}
            state["history"].append(rec)
            log("EVAL " + json.dumps(rec))
            save_pretrained(model, processor, run / "last")
            # best: a later stage always beats an earlier one (it covers more of the task)
            rank = "ABCD".index(stage) * 10 + score
            if rank > state["best"]:
                state["best"] = rank
                save_pretrained(model, processor, run / "best")
                log(f"new best (stage {stage}, score {score:.3f}) -> {run / 'best'}")
            spec = STAGES[stage]
            in_stage = state["step"] - state["stage_start"]
            gate = spec["gate"]
            late = state["train_s"] >= spec["until"] * args.max_hours * 3600
            if stage in NEXT and in_stage >= spec["min"] and (late or (gate and fig.get(gate[0], 0) >= gate[1])):
                state["stage"] = NEXT[stage]
                state["stage_start"] = state["step"]
                log(f"STAGE {stage} -> {state['stage']} at step {state['step']}")
            model.train()
            last_eval = time.monotonic()
            with open(run / "history.json", "w") as fh:
                json.dump(state["history"], fh, indent=1)
        if time.monotonic() - last_ckpt > args.ckpt_min * 60 or do_eval:
            save_state(ckpt, model, opt, state)
            last_ckpt = time.monotonic()
        if state["train_s"] > args.max_hours * 3600:
            log("max hours reached")
            break
    save_state(ckpt, model, opt, state)
    log(f"done at step {state['step']}: {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
