"""The accuracy metrics (pure): ground-truth answers, sent through the pipeline's own parse, grounding and
stitching (`video_tables`), score 100%; answers that are shifted, swapped or mistimed score lower."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.devtools import toyworld as tw
from pipeline.devtools.toy_metrics import SampledWindow, Tally, sampled_windows, score_clip
from pipeline.results.collect import RowContext, video_tables
from pipeline.results.tasks import build_tasks
from pipeline.video.sampling import FrameSampler

SAMPLER = FrameSampler("native", 8, 2.0)  # the toy checkpoint's
WINDOW_S, OVERLAP_S = 4.0, 1.0
TASKS = build_tasks(["count:people", "point:person", "track:person"])
KINDS = ["count", "point", "track"]
CTX = RowContext(run_id="r", model_id="toy", max_new_tokens=512, sampling_mode="native", num_frames=8, max_fps=2.0)
Answer = Callable[[tw.World, SampledWindow, str], str]


def truth(world: tw.World, window: SampledWindow, kind: str) -> str:
    labels = [tw.time_label(t - window.start) for t in window.frame_times]
    return tw.answers(world, window.frame_times, labels)[kind]


def host_rows(world: tw.World, windows: list[SampledWindow], answer: Answer, video_id: str = "v") -> list[dict[str, Any]]:
    """The rows the model stage hands the driver for one video, with `answer` as the model's answers."""
    rows = []
    for w in windows:
        for task in TASKS:
            rows.append({
                "video_id": video_id, "uri": f"file:///{video_id}.mp4", "size_bytes": 1, "duration_s": world.duration,
                "fps": world.fps, "width": world.width, "height": world.height, "codec": "h264",
                "rotation": world.rotation, "num_windows": len(windows), "window_index": w.index,
                "t_start": w.start, "t_end": w.end, "frame_times": w.frame_times.tolist(), "decoder": "pyav",
                "decode_status": "ok", "error_stage": None, "error_type": None, "error_message": None,
                "task": task.kind, "query": task.query, "prompt": task.prompt, "answer": answer(world, w, task.kind),
                "prompt_tokens": 1, "generated_tokens": 1, "hit_max_new_tokens": False, "latency_s": 0.1,
                "frames_used": len(w.frame_times), "infer_error_type": None, "infer_error_message": None,
            })
    return rows


def figures(worlds: list[tw.World], answer: Answer) -> dict[str, float | None]:
    tally = Tally()
    for n, world in enumerate(worlds):
        windows = sampled_windows(world, window_s=WINDOW_S, overlap_s=OVERLAP_S, sampler=SAMPLER)
        tables = video_tables(host_rows(world, windows, answer, f"v{n}"), TASKS, CTX)
        tally.add(score_clip(world, windows, tables, f"v{n}", KINDS))
    return tally.figures()


def _worlds() -> list[tw.World]:
    short = [tw.make_world(9_000 + k, duration=4.0 + 2.5 * k) for k in range(10)]  # 4-26.5 s, mixed sizes
    portrait = [tw.make_world(9_100 + k, portrait=True, duration=12.0) for k in range(2)]
    long = [tw.make_world(9_200 + k, duration=60.0 + 30 * k, n_start=3, arrival_rate=0.1) for k in range(2)]
    return short + portrait + long


WORLDS = _worlds()


def test_the_fixture_has_people_windows_and_portrait_clips() -> None:
    assert any(w.rotation in (90, 270) for w in WORLDS) and max(w.duration for w in WORLDS) >= 90
    windows = [sampled_windows(w, window_s=WINDOW_S, overlap_s=OVERLAP_S, sampler=SAMPLER) for w in WORLDS]
    assert max(len(ws) for ws in windows) > 20
    assert all(len(win.frame_times) == 8 for ws in windows for win in ws[:-1])  # 4 s at 2 fps: 8 frames
    assert sum(len(w.people) for w in WORLDS) > 30


def test_ground_truth_answers_score_perfectly() -> None:
    got = figures(WORLDS, truth)
    # Stitched count points cannot give a per-video count of several windows (toy_metrics' docstring): the
    # one clip of a single window and the empty ones are exact, the others are not, even with true answers.
    assert got.pop("count_exact_video_points") < 1.0
    assert got == {key: 1.0 for key in got}, got


def _shift_x(world: tw.World, window: SampledWindow, kind: str) -> str:
    """Truth answers with every X moved by 10% of the width (twice the match distance at most aspects)."""
    ct = tw.clip_truth(world, window.frame_times, [tw.time_label(t - window.start) for t in window.frame_times])
    ct.units[..., 0] = (ct.units[..., 0] + 100) % 1000
    return {"count": tw.answer_count, "point": tw.answer_point, "track": tw.answer_track}[kind](ct)


def _swap_xy(world: tw.World, window: SampledWindow, kind: str) -> str:
    ct = tw.clip_truth(world, window.frame_times, [tw.time_label(t - window.start) for t in window.frame_times])
    ct.units[...] = ct.units[..., ::-1].copy()
    return {"count": tw.answer_count, "point": tw.answer_point, "track": tw.answer_track}[kind](ct)


def _late_by_a_frame(world: tw.World, window: SampledWindow, kind: str) -> str:
    """Every time written 0.25 s late (between two sampled frames): a window-offset kind of mistake."""
    labels = [tw.time_label(t - window.start + 0.25) for t in window.frame_times]
    return tw.answers(world, window.frame_times, labels)[kind]


def _one_too_many(world: tw.World, window: SampledWindow, kind: str) -> str:
    answer = truth(world, window, kind)
    if kind != "count":
        return answer
    n = len(tw.clip_truth(world, window.frame_times).pids)
    return answer.replace(tw.count_sentence(n), tw.count_sentence(n + 1)) if n == 0 else answer + ' <points coords="0.0 9 500 500">people</points>'


@pytest.mark.parametrize(("wrong", "lower"), [
    (_shift_x, ("point_precision", "point_recall", "track_id_kept", "idf1")),
    (_swap_xy, ("point_precision", "point_recall", "track_id_kept", "idf1")),
    (_late_by_a_frame, ("points_on_sampled_frames", "point_recall", "track_id_kept")),
    (_one_too_many, ("count_exact_first_window", "count_exact_all_windows")),
])
def test_wrong_answers_score_lower(wrong: Answer, lower: tuple[str, ...]) -> None:
    got = figures(WORLDS, wrong)
    for key in lower:
        assert got[key] is not None and got[key] < 0.9, (key, got)


def test_missing_answers_count_as_misses() -> None:
    got = figures(WORLDS, lambda world, window, kind: "I cannot tell.")
    assert got["count_exact_first_window"] is not None and got["count_exact_first_window"] < 0.5
    assert got["point_recall"] == 0.0 and got["track_id_kept"] == 0.0 and got["idf1"] == 0.0
    assert got["point_precision"] is None  # nothing was pointed to
