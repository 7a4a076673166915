"""`plan`: the corpus from container metadata, and the estimate's numbers checked against a hand computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.config import build_config, config_from_flags
from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.model.molmo2 import FRAME_SIZE, Molmo2Geometry
from pipeline.tools.estimate import (
    DEFAULT_PROFILE,
    VideoMeta,
    load_profile,
    plan_geometry,
    probe_metadata,
    window_frames,
)
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.probe import probe_video
from pipeline.video.sampling import FrameSampler

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan") / "videos"
    write_video(root / "a.mp4", SampleSpec("a", seconds=3.0, fps=10, width=64, height=48, seed=1))
    write_video(root / "b.mp4", SampleSpec("b", seconds=25.0, fps=8, width=64, height=48, seed=2))
    (root / "broken.mp4").write_bytes(b"this is not a video" * 10)
    return root


def test_plan_geometry(tmp_path: Path) -> None:
    assert DEFAULT_PROFILE["frame_size"] == FRAME_SIZE == 378
    assert plan_geometry(build_config({}), DEFAULT_PROFILE) == Molmo2Geometry(378)  # a Hub id: the profile's
    assert plan_geometry(build_config({}), {**DEFAULT_PROFILE, "frame_size": 224}).tokens_per_frame == 36
    # A local checkpoint declares its geometry; --frame-size replaces only the frame side.
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 252, "width": 252}, "patch_size": 14, "pooling_size": [2, 2]}))
    local = build_config({"model": {"model": str(tmp_path)}})
    assert plan_geometry(local, DEFAULT_PROFILE) == Molmo2Geometry(252, 14, (2, 2))
    sized = build_config({"model": {"model": str(tmp_path)}, "decode": {"frame_size": 126}})
    assert plan_geometry(sized, DEFAULT_PROFILE) == Molmo2Geometry(126, 14, (2, 2))


def test_plan_flags_are_the_run_configs() -> None:
    args = build_parser().parse_args(["plan", "--input", "/v", "--window-s", "20", "--tasks", "count:car",
                                      "--include", "*.mp4", "--gpus", "4", "--print-profile"])
    config = config_from_flags(vars(args))
    assert (config.source.input, config.window.window_s, config.tasks.tasks) == ("/v", 20.0, ["count:car"])
    assert config.source.include == ["*.mp4"]
    unset = config_from_flags(vars(build_parser().parse_args(["plan"])))
    assert unset == build_config({})  # every default is the run config's
    assert (vars(args)["plan.gpus"], vars(args)["plan.print_profile"]) == (4, True)


def test_plan_refuses_bad_run_options(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["plan", "--input", "/nowhere", "--window-s", "10", "--overlap-s", "10"]) == 2
    assert "plan error" in (err := capsys.readouterr().err) and "overlap_s" in err
    assert main(["plan", "--input", "/nowhere", "--tasks", "dance:x"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_metadata_matches_the_decoder_without_decoding(corpus: Path) -> None:
    for name, frames, fps in (("a.mp4", 30, 10.0), ("b.mp4", 200, 8.0)):
        meta = probe_metadata(str(corpus / name))
        assert (meta.frames, meta.fps, meta.width, meta.height, meta.error) == (frames, fps, 64, 48, None)
        assert meta.duration_s == pytest.approx(probe_video(str(corpus / name)).duration_s)
    assert probe_metadata(str(corpus / "broken.mp4")).error
    # Frames per window equal what the run's decode stage samples from the real file.
    sampler = FrameSampler("native", 8, 2.0)
    meta = probe_metadata(str(corpus / "b.mp4"))
    settings = DecodeSettings(frame_size=28, sampler=sampler, window_s=10.0, overlap_s=2.0, decoder="pyav")
    decoded = [len(r["frame_times"]) for r in decode_video({"video_id": "b", "uri": str(corpus / "b.mp4")}, settings)]
    assert window_frames(meta, 10.0, 2.0, sampler) == decoded == [8, 8, 8]
    assert window_frames(VideoMeta("x", 0, duration_s=3.0, fps=10.0, frames=30), 10.0, 2.0, sampler) == [6]


def test_plan_command_against_a_hand_computed_corpus(corpus: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "gpu": "test-gpu", "gpu_hour_usd": 3.0, "efficiency": 0.5, "frame_overhead_tokens": 6,
        "prompt_text_tokens": 25, "question_tokens": 12, "generated_tokens": {"caption": 100, "count": 20},
        "variants": {"test/X": {"prefill_tokens_per_s": 1000, "decode_tokens_per_s": 50}},
    }))
    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", "--input", str(corpus), "--model", "test/X", "--profile", str(profile),
         "--tasks", "caption,count:person", "--window-s", "10", "--overlap-s", "2", "--num-frames", "8",
         "--max-fps", "2", "--frame-size", "112", "--gpus", "2", "--format", "json"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=os.environ.copy(),
    )
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    # By hand: a.mp4 = 30 frames at 10 fps = 3 s: one window, native sampling picks min(8, 3 s x 2 fps) = 6 frames.
    # b.mp4 = 200 frames at 8 fps = 25 s: windows [0,10) [8,18) [16,25], 80/80/72 frames, 8 sampled each.
    assert (plan["videos"], plan["unreadable"], plan["windows"], plan["frames"]) == (2, 1, 4, 6 + 24)
    assert plan["hours"] == pytest.approx(28 / 3600)
    assert [(Path(v["uri"]).name, v["windows"], v["frames"]) for v in plan["per_video"]] == [("a.mp4", 1, 6), ("b.mp4", 3, 24)]
    assert plan["errors"][0]["uri"].endswith("broken.mp4")
    t_frame = 9  # 112 px frames
    assert plan["visual_tokens"] == 30 * t_frame == 270
    # prefill per window = F x (9 + 6) + 25 + 2 tasks x 12; generated per window = 100 + 20
    assert plan["prefill_tokens"] == 15 * 30 + 4 * (25 + 24) == 646
    assert plan["generated_tokens"] == 4 * 120 == 480
    est = {v["model"]: v for v in plan["variants"]}
    gpu_hours = (646 / 1000 + 480 / 50) / 3600 / 0.5
    assert est["test/X"]["gpu_hours"] == pytest.approx(gpu_hours)
    assert est["test/X"]["cost_usd"] == pytest.approx(gpu_hours * 3.0)
    assert est["test/X"]["wall_hours"] == pytest.approx(gpu_hours / 2)
    assert set(est) == {"test/X", *DEFAULT_PROFILE["variants"]}  # the file is merged over the default
    assert plan["settings"]["gpu"] == "test-gpu" and plan["settings"]["tokens_per_frame"] == 9


def test_plan_table_output_and_bad_profile(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["plan", "--input", str(corpus), "--window-s", "10", "--overlap-s", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("a.mp4", "b.mp4", "unreadable", "2 video(s) (1 unreadable)", "GPU-hours", "allenai/Molmo2-8B <- --model"):
        assert text in out, text
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"variants": {"x/Y": {"prefill_tokens_per_s": 10}}}))
    assert main(["plan", "--input", str(corpus), "--profile", str(bad)]) == 2
    assert "decode_tokens_per_s" in capsys.readouterr().err
    assert load_profile(None) == DEFAULT_PROFILE and np.isclose(load_profile(None)["gpu_hour_usd"], 2.5)
