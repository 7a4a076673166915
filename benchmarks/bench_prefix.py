"""2. One prefix, many questions: K=5 questions on one window against one question, and against K calls.

Model: the tiny random Molmo2 built with the real geometry (378 px frames, 14 px patches, 3x3 pooling:
81 visual tokens a frame), one 64-frame window (~5,600 prompt tokens), so vision and prefill dominate.
Every answer is exactly 24 tokens (`FixedLengthEngine`), so the paths do equal decoding work.

- one question: ``Molmo2Engine.answer_batch([window], [q])`` (processor + prefill + decode);
- K questions, shared prefix: ``answer_shared_prefix(window, 5 questions)`` (processor and prefill of the
  visual prefix once, the KV cache branched per question, the 5 suffixes decoded as one batch);
- K independent calls: ``answer_batch`` five times (what a loop over questions does; first round only).

Clock: process CPU time with torch on 1 thread (as the model actor runs on this machine: Ray gives it
1 CPU, so OMP_NUM_THREADS=1); wall time is reported too. Rounds interleave the three paths.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import (
    Result,
    at_most,
    base_parser,
    ensure_tiny_model,
    maybe_wait,
    median,
    prepare_environment,
    print_results,
    spread,
    timed,
    write_json,
)

BENCH = "2 prefix"


def run(quick: bool, workdir: Path, rounds: int) -> list[Result]:
    prepare_environment()
    import torch

    from benchmarks.tiny import QUESTIONS, FixedLengthEngine, host_settings, window

    torch.set_num_threads(1)
    size, frames, new_tokens = (112, 8, 8) if quick else (378, 64, 24)
    model = ensure_tiny_model(workdir, size)
    engine = FixedLengthEngine(host_settings(str(model), QUESTIONS, new_tokens))
    w = window(frames, size)
    prompts = [t.prompt for t in QUESTIONS]
    k = len(prompts)

    def one() -> list[str]:
        return [a.text for a in engine.answer_batch([w], prompts[:1])]

    def shared() -> list[str]:
        return [a.text for a in engine.answer_shared_prefix(w, prompts)]

    def independent() -> list[str]:
        return [engine.answer_batch([w], [p])[0].text for p in prompts]

    first = engine.answer_batch([w], prompts[:1])[0]  # warm-up
    paths = {"one": one, "shared": shared, "independent": independent}
    cpu: dict[str, list[float]] = {n: [] for n in paths}
    wall: dict[str, list[float]] = {n: [] for n in paths}
    answers: dict[str, list[str]] = {}
    for r in range(rounds):
        names = list(paths)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in names:
            if name == "independent" and cpu["independent"]:
                continue  # K full calls cost the most and vary the least: measured in the first round only
            out, t = timed(paths[name])
            answers[name] = out
            cpu[name].append(t.cpu_s)
            wall[name].append(t.wall_s)

    # The processor's share of one question (it runs on the actor's CPU before the GPU sees anything).
    _, enc = timed(lambda: engine._encode([engine.chat_text(prompts[0])], [w]))
    shared_vs_one = [s / o for s, o in zip(cpu["shared"], cpu["one"], strict=True)]
    indep_vs_shared = [i / s for i, s in zip(cpu["independent"], cpu["shared"], strict=False)]
    wall_ratio = [s / o for s, o in zip(wall["shared"], wall["one"], strict=True)]
    same = answers["shared"] == answers["independent"]
    return [
        Result(
            BENCH,
            f"K={k} questions with a shared prefix / one question (CPU time, 1 thread)",
            median(shared_vs_one),
            "<= 1.5x",
            at_most(median(shared_vs_one), 1.5),
            detail=(
                f"CPU s: shared {spread(cpu['shared'])}, one {spread(cpu['one'])}; {frames} frames of "
                f"{size} px, {first.prompt_tokens} prompt tokens, {new_tokens} new tokens per answer"
            ),
        ),
        Result(
            BENCH,
            f"K={k} independent calls / shared prefix (speed-up of sharing)",
            median(indep_vs_shared),
            "",
            None,
            detail=f"CPU s: independent {spread(cpu['independent'])}; greedy answers identical: {same}",
        ),
        Result(
            BENCH,
            "shared / one, wall clock (machine shared with other work)",
            median(wall_ratio),
            "",
            None,
            detail=f"wall s: shared {spread(wall['shared'])}, one {spread(wall['one'])}",
        ),
        Result(
            BENCH,
            "processor (resize, normalise, patchify) share of one question",
            enc.cpu_s / median(cpu["one"]),
            "",
            None,
            unit="",
            detail=f"{enc.cpu_s:.2f} CPU s for {frames} frames, on the model actor's CPU",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "prefix benchmark")
    parser.add_argument("--rounds", type=int, default=None, help="Interleaved rounds (default 3).")
    args = parser.parse_args(argv)
    maybe_wait(args)
    started = time.perf_counter()
    results = run(args.quick, args.workdir, args.rounds or (1 if args.quick else 3))
    print_results(f"2. One prefix, many questions ({time.perf_counter() - started:.0f} s)", results)
    write_json(args.json_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
