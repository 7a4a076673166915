"""The tiny Molmo2 as the model benchmarks use it: real geometry, and answers of a fixed length.

A random model stops at its end-of-sequence token after an arbitrary number of tokens, which would make
two paths that answer differently do different amounts of work. `FixedLengthEngine` makes every answer
exactly `max_new_tokens` long (``min_new_tokens`` = ``max_new_tokens``), so a ratio compares equal work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import synthetic_frames
from pipeline.model.engine import PASSTHROUGH, HostSettings, Molmo2Engine, WindowInput
from pipeline.results.tasks import Task, build_tasks

QUESTIONS: tuple[Task, ...] = tuple(
    build_tasks(["caption", "count:person", "point:shopping cart", "track:person", "ask:What happens at the end?"])
)


class FixedLengthEngine(Molmo2Engine):
    """Molmo2Engine whose answers are always exactly max_new_tokens long (benchmarks only)."""

    def _gen_kwargs(self) -> dict[str, Any]:
        kwargs = super()._gen_kwargs()
        kwargs["min_new_tokens"] = self.settings.max_new_tokens
        return kwargs


def host_settings(model: str, tasks: tuple[Task, ...], max_new_tokens: int) -> HostSettings:
    return HostSettings(model=model, tasks=tasks, device="cpu", dtype="float32", max_new_tokens=max_new_tokens)


def window(num_frames: int, size: int, seed: int = 0, fps: float = 30.0) -> WindowInput:
    """A window of `num_frames` frames sampled at 2 fps (what the sampler gives a 32 s clip for 64 frames)."""
    return WindowInput(
        frames=synthetic_frames(num_frames, size, seed),
        frame_times=np.arange(num_frames, dtype=np.float64) * 0.5,
        t_start=0.0,
        fps=fps,
    )


def host_batch(windows: list[WindowInput], fps: float = 30.0) -> dict[str, np.ndarray]:
    """A batch as the decode stage hands it to Molmo2Host (numpy batch format)."""
    n = len(windows)
    strings = {
        "video_id": [f"bench{i}" for i in range(n)],
        "uri": [f"bench://{i}" for i in range(n)],
        "codec": ["h264"] * n,
        "decoder": ["decord"] * n,
        "decode_status": ["ok"] * n,
    }
    batch: dict[str, np.ndarray] = {k: np.asarray(v, dtype=object) for k, v in strings.items()}
    for k in ("error_stage", "error_type", "error_message"):
        batch[k] = np.asarray([None] * n, dtype=object)
    size = windows[0].frames.shape[1]
    duration = float(windows[0].frame_times[-1]) + 0.5
    numeric: dict[str, Any] = {
        "size_bytes": np.full(n, 1, dtype=np.int64),
        "duration_s": np.full(n, duration),
        "fps": np.full(n, fps),
        "width": np.full(n, size, dtype=np.int64),
        "height": np.full(n, size, dtype=np.int64),
        "rotation": np.zeros(n, dtype=np.int64),
        "num_windows": np.ones(n, dtype=np.int64),
        "window_index": np.zeros(n, dtype=np.int64),
        "t_start": np.zeros(n),
        "t_end": np.full(n, duration),
    }
    batch.update(numeric)
    batch["frames"] = np.stack([w.frames for w in windows])
    batch["frame_times"] = np.stack([w.frame_times for w in windows])
    for k in PASSTHROUGH:  # columns the decode stage added since (metadata only): empty
        batch.setdefault(k, np.asarray([None] * n, dtype=object))
    return batch
