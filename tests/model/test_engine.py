"""The model host's generation paths with the tiny Molmo2 (real transformers classes, float32, CPU)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.model.engine import HostSettings, Molmo2Engine, WindowInput
from pipeline.results.tasks import build_tasks
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.sampling import FrameSampler

pytestmark = pytest.mark.integration

TASKS = build_tasks(["caption", "count:person", "point:cart", "track:person", "ask:What moves fastest?"])


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Molmo2Engine:
    return Molmo2Engine(HostSettings(model=str(tiny_model_dir), tasks=tuple(TASKS), max_new_tokens=20))


@pytest.fixture(scope="module")
def windows(sample_videos: Path) -> list[WindowInput]:
    settings = DecodeSettings(frame_size=112, sampler=FrameSampler(num_frames=12), window_s=10.0, overlap_s=2.0)
    out = []
    for name in ("parking_long", "street_short"):
        ref = {"video_id": name, "uri": str(sample_videos / f"{name}.mp4"), "size_bytes": 1}
        for row in decode_video(ref, settings):
            out.append(WindowInput(row["frames"], row["frame_times"], row["t_start"], row["fps"]))
    return out


def _texts(answers: list[list]) -> list[list[str]]:
    return [[a.text for a in per_window] for per_window in answers]


def test_prefix_reuse_equals_separate_runs_token_for_token(engine: Molmo2Engine, windows: list[WindowInput]) -> None:
    shared = engine.answer_windows(windows, TASKS)
    engine.settings = dataclasses.replace(engine.settings, prefix_reuse=False)
    try:
        separate = engine.answer_windows(windows, TASKS)
    finally:
        engine.settings = dataclasses.replace(engine.settings, prefix_reuse=True)
    assert _texts(shared) == _texts(separate)
    assert [[a.generated_tokens for a in w] for w in shared] == [[a.generated_tokens for a in w] for w in separate]
    assert [[a.prompt_tokens for a in w] for w in shared] == [[a.prompt_tokens for a in w] for w in separate]
    # The test can fail: answers depend on the question and on the video.
    assert len({a.text for a in shared[0]}) > 1
    assert len({w[0].text for w in shared}) > 1


def test_batched_windows_equal_one_at_a_time(engine: Molmo2Engine, windows: list[WindowInput]) -> None:
    caption = [TASKS[0]]
    batched = engine.answer_windows(windows, caption)
    alone = [engine.answer_windows([w], caption)[0] for w in windows]
    assert _texts(batched) == _texts(alone)


def test_prompt_carries_frame_times_relative_to_window(engine: Molmo2Engine, windows: list[WindowInput]) -> None:
    def labels(w: WindowInput) -> list[str]:
        text = engine.tokenizer.decode(engine._encode([engine.chat_text("q")], [w])["input_ids"][0])
        return re.findall(r"(\d+\.\d) <frame_start>", text)

    first, second = windows[0], windows[1]  # the long video's windows at 0 s and 8 s (25 fps source)
    assert (first.t_start, second.t_start) == (0.0, 8.0)
    # 12 frames of 8.00, 8.80, 9.64, 10.48, ... 17.16 s, labelled from the window's start with one decimal.
    assert [round(float(t), 2) for t in second.frame_times] == [
        8.0, 8.8, 9.64, 10.48, 11.32, 12.16, 13.0, 13.8, 14.64, 15.48, 16.32, 17.16]
    want = ["0.0", "0.8", "1.6", "2.5", "3.3", "4.2", "5.0", "5.8", "6.6", "7.5", "8.3", "9.2"]
    assert labels(second) == want
    assert labels(first) == want  # the same frame pattern at 0 s: the same labels


def test_hitting_max_new_tokens_is_marked(engine: Molmo2Engine, windows: list[WindowInput]) -> None:
    engine.settings = dataclasses.replace(engine.settings, max_new_tokens=3)
    try:
        answers = engine.answer_windows(windows[:1], TASKS[:1])[0]
    finally:
        engine.settings = dataclasses.replace(engine.settings, max_new_tokens=20)
    # The random model never writes its end token this early: the answer is cut, and says so.
    assert (answers[0].generated_tokens, answers[0].hit_max_new_tokens) == (3, True)
