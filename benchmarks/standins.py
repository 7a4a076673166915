"""Stand-ins the Ray benchmarks put into the pipeline's real graph (`pipeline.run.graph.build_dataset`).

They live in an importable module (not a script's ``__main__``) because Ray workers import them by name.

- `NullHost`: the model stage answering instantly (empty answers); it also records every decoded window
  next to its video, so a later run can replay them. Used to time the decode stage alone.
- `replay_decode_batch`: the decode stage replaying recorded windows (no decoding). Used to time the
  model stage alone.
- `timed_decode_batch`: the real decode stage, plus each row's decode CPU time (`decode_cpu_s`).
- `SimulatedMolmo2Host`: SIMULATION of Molmo2-8B on one H100 (benchmarks/latency_model.py): sleeps for
  the modelled time of each call and reports when it was busy.
"""

from __future__ import annotations

import glob
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.model.engine import Answer, HostSettings, WindowInput
from pipeline.model.host import Molmo2Host
from pipeline.results.tasks import Task
from pipeline.video.decode import DecodeSettings, decode_batch

RECORD_SUFFIX = ".bench-window-{index:04d}.pkl"


def recorded_paths(uri: str) -> list[str]:
    return sorted(glob.glob(glob.escape(uri) + ".bench-window-*.pkl"))


class _InstantEngine:
    """Answers every question at once with an empty answer."""

    def answer_windows(self, windows: Sequence[WindowInput], tasks: Sequence[Task]) -> list[list[Answer]]:
        return [[Answer("", 0, 0, False, 0.0) for _ in tasks] for _ in windows]


class NullHost(Molmo2Host):
    """Molmo2Host without a model: instant empty answers; records each decoded window for replay."""

    def __init__(self, settings: HostSettings) -> None:
        super().__init__(settings)  # loads the (tiny) model like the real host, then answers without it
        self.engine = _InstantEngine()  # type: ignore[assignment]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        for i in range(len(batch["video_id"])):
            row = {k: batch[k][i] for k in batch}
            if row.get("decode_status") == "failed":
                continue
            path = str(row["uri"]) + RECORD_SUFFIX.format(index=int(row["window_index"]))
            with open(path, "wb") as fh:
                pickle.dump(row, fh, protocol=5)
        return super().__call__(batch)


def replay_decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """The decode stage's output for these videos, read back from what `NullHost` recorded."""
    del settings
    for uri in batch["uri"]:
        paths = recorded_paths(str(uri))
        if not paths:
            raise FileNotFoundError(f"no recorded windows for {uri}: run the decode-alone pass first")
        for path in paths:
            with open(path, "rb") as fh:
                row = pickle.load(fh)
            yield {k: [v] if not isinstance(v, np.ndarray) else v[None, ...] for k, v in row.items()}


def timed_decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> Iterator[dict[str, Any]]:
    """The real decode stage; each output row also carries the process CPU time spent producing it
    (libraries are imported before the clock starts: a worker's first import is not decoding)."""
    import importlib

    for name in ("av", "torch", "decord"):  # torch before decord, as decode.py does
        importlib.import_module(name)

    clock = time.process_time()
    for out in decode_batch(batch, settings):
        now = time.process_time()
        out["decode_cpu_s"] = [now - clock]
        yield out
        clock = time.process_time()


@dataclass(frozen=True)
class SimSpec:
    """The simulated GPU, encoded in HostSettings.model as 'simulated-h100:scale=S,mfu=M,bw=B,step=T'."""

    scale: float = 1.0  # multiply every modelled time (>1: a slower GPU, to match fewer decode CPUs)
    mfu: float = 0.40
    bandwidth: float = 0.60
    step_overhead_s: float = 0.0

    def encode(self) -> str:
        return (
            f"simulated-h100:scale={self.scale:g},mfu={self.mfu:g},bw={self.bandwidth:g},"
            f"step={self.step_overhead_s:g}"
        )

    @classmethod
    def decode(cls, text: str) -> SimSpec:
        _, _, params = text.partition(":")
        values = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        return cls(
            scale=float(values.get("scale", 1.0)),
            mfu=float(values.get("mfu", 0.40)),
            bandwidth=float(values.get("bw", 0.60)),
            step_overhead_s=float(values.get("step", 0.0)),
        )


class SimulatedMolmo2Host:
    """SIMULATION: a Ray Data actor standing in for Molmo2-8B on one H100.

    Each call sleeps for the latency model's time for its windows (their sampled frames give the prompt
    tokens; every task's answer is `max_new_tokens` long), as infer.py would run them: one question ->
    the windows batched in one generate; several -> per window, the prefix once and the questions as
    one batch. Output: one row per window with the modelled seconds and when the actor was busy.
    """

    def __init__(self, settings: HostSettings) -> None:
        from benchmarks.latency_model import GpuModel

        self.settings = settings
        self.spec = SimSpec.decode(settings.model)
        self.gpu = GpuModel(self.spec.mfu, self.spec.bandwidth, self.spec.step_overhead_s)
        self.answer_tokens = tuple(settings.max_new_tokens for _ in settings.tasks)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from benchmarks.latency_model import batch_gpu_s

        n = len(batch["video_id"])
        ok = [i for i in range(n) if batch["decode_status"][i] != "failed"]
        frames = [len(batch["frame_times"][i]) for i in ok]
        modelled = batch_gpu_s(frames, self.answer_tokens, self.gpu) * self.spec.scale
        start = time.time()
        if modelled > 0:
            time.sleep(modelled)
        end = time.time()
        cpu = batch["decode_cpu_s"] if "decode_cpu_s" in batch else np.zeros(n)
        return {
            "video_id": [str(v) for v in batch["video_id"]],
            "window_index": [int(v) for v in batch["window_index"]],
            "frames": [len(batch["frame_times"][i]) for i in range(n)],
            "decode_status": [str(s) for s in batch["decode_status"]],
            "decode_cpu_s": [float(c) for c in cpu],
            "call_modelled_s": [modelled] * n,
            "call_windows": [len(ok)] * n,
            "busy_start": [start] * n,
            "busy_end": [end] * n,
        }
