"""Per-task sampling in the decode stage: one decode pass, one row per sampling group, each group's frames
exactly those its sampler alone would give; and the checks at start (rate vs frame budget, token budget)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, build_config
from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.run.settings import check_ready, decode_settings, host_settings, task_samplers, tasks_of
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.sampling import FrameSampler

SLOW, FAST = FrameSampler("native", 8, 2.0), FrameSampler("native", 40, 8.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("rates") / "walk.mp4", SampleSpec("walk", seconds=7.0, fps=24, seed=3))


def _rows(clip: Path, sampler: FrameSampler = SLOW, groups: tuple[FrameSampler, ...] = ()) -> list[dict]:
    settings = DecodeSettings(frame_size=56, sampler=sampler, window_s=4.0, overlap_s=1.0, group_samplers=groups)
    return list(decode_video({"video_id": "v", "uri": str(clip), "size_bytes": 1}, settings))


def test_each_sampling_group_gets_the_frames_its_sampler_alone_would(clip: Path) -> None:
    both = _rows(clip, groups=(SLOW, FAST))
    assert [(r["window_index"], r["task_group"]) for r in both] == [(w, g) for w in range(2) for g in range(2)]
    assert all(r["num_windows"] == 2 and r["decode_status"] == "ok" for r in both)
    for group, sampler in enumerate((SLOW, FAST)):
        alone = _rows(clip, sampler)
        mine = [r for r in both if r["task_group"] == group]
        for a, b in zip(mine, alone, strict=True):
            assert np.array_equal(a["frame_times"], b["frame_times"])
            assert np.array_equal(a["frames"], b["frames"])  # decoded once for both, same pixels
    fast0 = both[1]
    assert len(fast0["frame_times"]) == 32 and np.allclose(np.diff(fast0["frame_times"]), 0.125)  # 4 s at 8 fps
    assert len(both[0]["frame_times"]) == 8  # 4 s at 2 fps
    assert all(r["task_group"] == 0 for r in _rows(clip))  # one group: one row per window, as before


def _config(**tasks: object) -> object:
    return build_config({"source": {"input": "/v"}, "output": {"output": "/o"}, "window": {"window_s": 30, "overlap_s": 2},
                         "tasks": {"tasks": ["caption", "track:person", "count:person"], **tasks}})


def test_settings_give_decode_and_host_the_same_groups() -> None:
    config = _config(task_max_fps={"track": 8}, task_num_frames={"track": 240})
    tasks = tasks_of(config)  # type: ignore[arg-type]
    groups = task_samplers(config, tasks)  # type: ignore[arg-type]
    assert [(s.num_frames, s.max_fps, members) for s, members in groups] == [(64, 2.0, (0, 2)), (240, 8.0, (1,))]
    decode = decode_settings(config, 112)  # type: ignore[arg-type]
    host = host_settings(config, tasks)  # type: ignore[arg-type]
    assert decode.samplers == tuple(s for s, _ in groups) and host.task_groups == ((0, 2), (1,))
    check_ready(config)  # type: ignore[arg-type]  # 240 frames x 81 tokens fit the context
    plain = _config()
    assert decode_settings(plain, 112).group_samplers == () and host_settings(plain, tasks_of(plain)).task_groups == ()  # type: ignore[arg-type]


def test_a_rate_the_frame_budget_cannot_hold_or_the_context_cannot_fit_stops_the_run() -> None:
    with pytest.raises(ConfigError, match="track:person: 8 fps over a 30 s window needs 240 frames, above its budget of 64"):
        check_ready(_config(task_max_fps={"track": 8}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_frames=480"):
        check_ready(_config(task_max_fps={"track": 16}, task_num_frames={"track": 480}))  # type: ignore[arg-type]
    check_ready(_config(task_max_fps={"track": 1}))  # type: ignore[arg-type]  # a lower rate needs fewer frames


def test_frames_for_rate() -> None:
    assert FrameSampler("native", 64, 8.0).frames_for_rate(30.0) == 240
    assert FrameSampler("uniform_last_frame", 64, 8.0).frames_for_rate(30.0) == 241
    assert FrameSampler("native", 64, None).frames_for_rate(30.0) == 64
