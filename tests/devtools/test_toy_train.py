"""Smoke test of the toy training script as a user runs it: a few steps from a freshly built (very small) toy
Molmo2, a loadable checkpoint and resume state, and a second run that resumes and continues the step count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.model.molmo2 import checkpoint_geometry, checkpoint_sampling

REPO = Path(__file__).resolve().parents[2]
# Narrower than the committed checkpoint (256 x 4 text, 96 x 3 vision) so that the smoke test stays quick.
SMALL = ["--text-hidden", "64", "--text-layers", "1", "--vision-hidden", "32", "--vision-layers", "1"]


def _smoke(run: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.devtools.toy_train", "--smoke", "--run", str(run), *SMALL],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_smoke_trains_saves_and_resumes(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run = tmp_path / "run"
    first = _smoke(run)
    assert "step 3 stage" in first and "done at step 3" in first
    state = torch.load(run / "ckpt" / "state.pt", weights_only=False)
    assert state["state"]["step"] == 3 and {"model", "opt", "torch_rng"} <= set(state)

    model = AutoModelForImageTextToText.from_pretrained(run / "last")
    processor = AutoProcessor.from_pretrained(run / "last")
    assert type(model).__name__ == "Molmo2ForConditionalGeneration"
    assert processor.video_processor.num_frames == 8
    # the saved checkpoint declares the toy geometry, and the pipeline reads it from there
    assert checkpoint_geometry(str(run / "last"), None).frame_size == 252
    assert (checkpoint_sampling(str(run / "last"), None).num_frames, checkpoint_sampling(str(run / "last"), None).max_fps) \
        == (8, 2.0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    second = _smoke(run)
    assert "resumed from" in second and ": step 3 stage" in second
    assert "step 6 stage" in second and "done at step 6" in second
    assert [h["step"] for h in json.loads((run / "history.json").read_text())] == [3, 6]
    assert torch.load(run / "ckpt" / "state.pt", weights_only=False)["state"]["step"] == 6
    resumed = AutoModelForImageTextToText.from_pretrained(run / "last").state_dict()
    assert any(not torch.equal(weights[k], resumed[k]) for k in weights)  # it trained on, not from scratch
