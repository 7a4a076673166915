"""A window's frames default to what the checkpoint's video processor declares; flags win and are checked
against the checkpoint's context (pure: reads JSON files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import build_parser, config_from_args
from pipeline.config import ConfigError, build_config
from pipeline.model.molmo2 import CONTEXT_TOKENS, Molmo2Sampling, checkpoint_sampling
from pipeline.results.work import work_keys
from pipeline.run import settings
from pipeline.video.sampling import FrameSampler

REPO = Path(__file__).resolve().parents[2]
TOY_MODEL = REPO / "toy" / "checkpoint" / "model"


def _checkpoint(path: Path, video: dict, context: int | None = 4096, *, file: str = "processor_config.json") -> str:
    path.mkdir(parents=True, exist_ok=True)
    body = {"video_processor": {"size": {"height": 252, "width": 252}, "pooling_size": [2, 2], **video}}
    (path / file).write_text(json.dumps(body if file == "processor_config.json" else body["video_processor"]))
    config = {"model_type": "molmo2", "text_config": {"max_position_embeddings": context} if context else {}}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _config(model: str, **sampling: object) -> object:
    return build_config({"source": {"input": "in"}, "output": {"output": "out"}, "model": {"model": model},
                         "sampling": sampling})


def test_the_committed_toy_checkpoint_declares_8_frames_at_2_fps() -> None:
    assert checkpoint_sampling(str(TOY_MODEL), None) == Molmo2Sampling(8, 2.0, 4096)


def test_declared_values_are_read_from_either_processor_file(tmp_path: Path) -> None:
    assert checkpoint_sampling(_checkpoint(tmp_path / "a", {"num_frames": 16, "max_fps": 4}), None) \
        == Molmo2Sampling(16, 4.0, 4096)
    split = _checkpoint(tmp_path / "b", {"num_frames": 12}, None, file="video_preprocessor_config.json")
    assert checkpoint_sampling(split, None) == Molmo2Sampling(12, 2.0, CONTEXT_TOKENS)
    assert checkpoint_sampling(str(tmp_path / "missing"), None) == Molmo2Sampling()  # the released values
    bad = _checkpoint(tmp_path / "c", {"num_frames": 0, "max_fps": "fast"}, -1)
    assert checkpoint_sampling(bad, None) == Molmo2Sampling()


def test_a_run_without_sampling_flags_samples_as_the_checkpoint_declares(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "m", {"num_frames": 8, "max_fps": 2})
    config = _config(model)
    assert (config.sampling.num_frames, config.sampling.max_fps) == (None, None)
    assert settings.sampler_of(config) == FrameSampler("native", 8, 2.0)
    settings.check_ready(config)
    # rows and work keys record the values used, so a default and the same value given as a flag are one work
    assert (settings.row_context(config, "r").num_frames, settings.row_context(config, "r").max_fps) == (8, 2.0)
    explicit = _config(model, num_frames=8, max_fps=2.0)
    tasks = settings.tasks_of(config)
    assert work_keys(tasks, settings.work_settings(config, 252)) == work_keys(tasks, settings.work_settings(explicit, 252))


def test_flags_win_over_the_checkpoint_and_are_checked_against_its_context(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "m", {"num_frames": 8, "max_fps": 2})
    assert settings.sampler_of(_config(model, num_frames=4)) == FrameSampler("native", 4, 2.0)
    assert settings.sampler_of(_config(model, max_fps=1.0)) == FrameSampler("native", 8, 1.0)
    # 81 tokens a frame in a 4,096-token context (less the room for prompt and answer): 39 frames fit, 40 do not
    settings.check_ready(_config(model, num_frames=39))
    with pytest.raises(ConfigError, match=r"num_frames=40 .* 4,096-token context: lower --num-frames \(<= 39\)"):
        settings.check_ready(_config(model, num_frames=40))
    # the released context holds far more
    settings.check_ready(_config(_checkpoint(tmp_path / "big", {}, CONTEXT_TOKENS), num_frames=384))


def test_cli_leaves_sampling_unset_unless_given(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--input", "in", "--output", "out", "--model", str(TOY_MODEL)])
    config = config_from_args(args)
    assert settings.sampler_of(config) == FrameSampler("native", 8, 2.0)
    args = build_parser().parse_args(["run", "--input", "in", "--output", "out", "--model", str(TOY_MODEL),
                                      "--num-frames", "6"])
    assert settings.sampler_of(config_from_args(args)).num_frames == 6
