"""4. Streaming: end-to-end wall time of the pipeline against its slowest stage run alone, and against
the model card's sequential loop, on the same corpus and model.

Corpus: four 6 s 1080p30 H.264 clips repeated to 24 videos (each one window of 12 frames at 2 fps; many
short videos, so that the last batch -- which nothing can overlap -- is a small part of the run). Model:
the tiny Molmo2 at 378 px (real token geometry). Tasks: caption and count:person (two questions per
window: the pipeline shares the visual prefix). Answers up to 24 tokens; batch size 4 (the default).

- pipeline: ``pipeline.run.driver.run_pipeline`` (list, decode tasks, Molmo2Host actor, collect, Parquet);
- decode stage alone: the same run with the model stage replaced by `standins.NullHost` (instant
  answers; it records the decoded windows);
- model stage alone: the same run with the decode stage replaced by `standins.replay_decode_batch`
  (replays the recorded windows);
- the model card's loop: for each video ``molmo_utils.fetch_video`` (decord), then per question the
  processor and ``model.generate``, then the next video (one process, torch on both cores).

This machine has 2 cores and no GPU, so both stages compete for them: the run gives each stage one
core (decode_concurrency=1, decode_threads=1; the actor gets 1 CPU so torch runs 1 thread). Wall clock,
on a machine others share: the load average is printed with the figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Result,
    at_least,
    at_most,
    base_parser,
    ensure_corpus,
    ensure_tiny_model,
    maybe_wait,
    median,
    prepare_environment,
    print_results,
    ray_session,
    replicate,
    spread,
    write_json,
)

BENCH = "4 streaming"
TASKS = ("caption", "count:person")


@contextlib.contextmanager
def patched_graph(decode: Any = None, host: Any = None) -> Iterator[None]:
    """Swap a stage of `pipeline.run.graph.build_dataset` for a stand-in (the rest of the run is unchanged)."""
    import pipeline.run.graph as graph

    saved = (graph.decode_batch, graph.Molmo2Host)
    try:
        if decode is not None:
            setattr(graph, "decode_batch", decode)  # noqa: B010  (a module global build_dataset reads)
        if host is not None:
            setattr(graph, "Molmo2Host", host)  # noqa: B010
        yield
    finally:
        setattr(graph, "decode_batch", saved[0])  # noqa: B010
        setattr(graph, "Molmo2Host", saved[1])  # noqa: B010


def pipeline_config(videos: Path, model: Path, out: Path, new_tokens: int) -> Any:
    from pipeline.config import build_config

    return build_config(
        {
            "source": {"input": str(videos)},
            "model": {"model": str(model), "max_new_tokens": new_tokens, "model_num_cpus": 1.0},
            "decode": {"decode_concurrency": 1, "decode_threads": 1},
            "tasks": {"tasks": list(TASKS)},
            "output": {"output": str(out)},
            "ray": {"progress": "off"},
        }
    )


def run_pipeline_once(kind: str, videos: Path, model: Path, out: Path, new_tokens: int) -> tuple[float, Any]:
    """One run: 'e2e', 'decode' (model stage instant) or 'model' (decode stage replayed)."""
    from benchmarks.standins import NullHost, replay_decode_batch
    from pipeline.run.driver import run_pipeline

    patches: dict[str, dict[str, Any]] = {"decode": {"host": NullHost}, "model": {"decode": replay_decode_batch}}
    patch = patches.get(kind, {})
    with patched_graph(**patch):
        summary = run_pipeline(pipeline_config(videos, model, out, new_tokens), echo=lambda *_: None)
    if summary.exit_code != 0:
        raise RuntimeError(f"{kind} run did not succeed:\n{summary.render()}")
    return summary.elapsed_s, summary


def model_card_loop(videos: list[Path], model: Path, new_tokens: int) -> tuple[float, int]:
    """The model card's way: decode a video, answer its questions one generate each, then the next."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a plain script's default: torch on every core
    try:
        return _model_card_loop(videos, model, new_tokens)
    finally:
        torch.set_num_threads(previous_threads)


def _model_card_loop(videos: list[Path], model: Path, new_tokens: int) -> tuple[float, int]:
    import torch
    from molmo_utils import fetch_video
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipeline.results.tasks import build_tasks

    started = time.perf_counter()
    processor: Any = AutoProcessor.from_pretrained(model)
    auto: Any = AutoModelForImageTextToText
    net = auto.from_pretrained(model, dtype=torch.float32)
    net.eval()
    generated = 0
    for path in videos:
        frames, metadata = fetch_video({"video": str(path), "num_frames": 64, "max_fps": 2, "backend": "decord"})
        for task in build_tasks(list(TASKS)):
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": task.prompt}]}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = processor(
                text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"
            )
            with torch.inference_mode():
                out = net.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            new = [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t != processor.tokenizer.eos_token_id]
            processor.tokenizer.decode(new, skip_special_tokens=True)
            generated += len(new)
    return time.perf_counter() - started, generated


def run(quick: bool, workdir: Path, rounds: int, num_videos: int | None = None) -> list[Result]:
    prepare_environment()
    size, new_tokens = (112, 4) if quick else (378, 24)
    count = num_videos or (3 if quick else 24)
    clips = ensure_corpus("quick" if quick else "hd_short", workdir)
    model = ensure_tiny_model(workdir, size)
    videos = replicate(clips, count, workdir / "streaming" / "videos")
    paths = sorted(videos.glob("*.mp4"))
    times: dict[str, list[float]] = {"decode": [], "model": [], "e2e": [], "sequential": []}
    info: dict[str, Any] = {}
    with ray_session():
        for r in range(rounds):
            # decode-alone records the windows model-alone replays, so it runs first in every round.
            order = ["decode", "e2e", "model", "sequential"] if r % 2 == 0 else ["decode", "sequential", "model", "e2e"]
            for kind in order:
                out = workdir / "streaming" / f"tables-{kind}-{r}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                if kind == "sequential":
                    elapsed, generated = model_card_loop(paths, model, new_tokens)
                    info["sequential_generated"] = generated
                else:
                    elapsed, summary = run_pipeline_once(kind, videos, model, out, new_tokens)
                    if kind == "e2e":
                        info["e2e_generated"] = summary.generated_tokens
                        info["windows"] = summary.windows
                times[kind].append(elapsed)
    slowest = [max(d, m) for d, m in zip(times["decode"], times["model"], strict=True)]
    overlap = [e / s for e, s in zip(times["e2e"], slowest, strict=True)]
    speedup = [s / e for s, e in zip(times["sequential"], times["e2e"], strict=True)]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    which = "decode" if median(times["decode"]) >= median(times["model"]) else "model"
    return [
        Result(
            BENCH,
            f"pipeline wall / slowest stage alone ({which})",
            median(overlap),
            "<= 1.15x",
            at_most(median(overlap), 1.15),
            detail=(
                f"wall s: pipeline {spread(times['e2e'])}, decode alone {spread(times['decode'])}, "
                f"model alone {spread(times['model'])}; {count} videos, {info.get('windows')} windows, "
                f"tasks {','.join(TASKS)}; load avg {load}"
            ),
        ),
        Result(
            BENCH,
            "model card's sequential loop / pipeline (wall)",
            median(speedup),
            ">= 1.8x",
            at_least(median(speedup), 1.8),
            detail=(
                f"wall s: sequential {spread(times['sequential'])}; generated tokens: pipeline "
                f"{info.get('e2e_generated')}, sequential {info.get('sequential_generated')}"
            ),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "streaming benchmark")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds of the four runs (default 1).")
    parser.add_argument("--videos", type=int, default=None, help="Videos in the corpus (default 24).")
    args = parser.parse_args(argv)
    maybe_wait(args)
    started = time.perf_counter()
    results = run(args.quick, args.workdir, args.rounds or 1, args.videos)
    print_results(f"4. Streaming ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
