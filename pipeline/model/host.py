"""Inference stage: `Molmo2Host`, a Ray Data actor that hosts one Molmo2 and answers every task of
every window it is given.

The model loads once, in the actor's constructor, through `AutoProcessor` /
`AutoModelForImageTextToText` exactly as for `allenai/Molmo2-8B` (bf16 on the GPU Ray assigned to the
actor; fp32 on CPU). Two generation paths:

- one question per window: windows (of any videos) are batched into one left-padded `generate`;
- several questions per window: the visual prefix (everything up to and including the video, which
  Molmo2 puts first) is prefilled once, and the KV cache is branched per question, all questions
  decoding as one batch. Greedy answers equal the unshared path token for token (tested).

An out-of-memory error splits the batch and retries; what still fails becomes error rows. Nothing here
raises on a bad window: errors are rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline import faults, ledger
from pipeline.io.secrets import redact
from pipeline.model.engine import PASSTHROUGH, Answer, HostSettings, Molmo2Engine, WindowInput
from pipeline.observe.metrics import record_generation
from pipeline.results.tasks import Task

log = logging.getLogger(__name__)


class Molmo2Host:
    """Ray Data actor: decoded windows in, one row per (window, task) out.

    Faults, and what becomes of them:
    - an exception in the model (bad input, a bug) fails that call's windows as error rows;
    - out of memory splits the batch (`Molmo2Engine._with_oom_split`);
    - the process dying (segfault, OOM killer, CUDA fault, os._exit) is seen by Ray, which starts a new
      actor and retries the call (bounded: graph.py). The retried call finds its batch in the
      `ledger.AttemptLedger`, so it runs the windows one at a time; a window that still kills the process after
      `crash_retries` retries alone is not run again but written as a `WorkerCrashed` error row, and the
      others of its batch are answered normally. A deterministic crash ends as data, not a retry loop.
    """

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        faults.event("model-load", settings.test_hooks)
        self.engine = Molmo2Engine(settings)

    @property
    def group_task_ids(self) -> list[tuple[int, ...]]:
        """Indexes of the tasks asked of each sampling group's rows (a decoded row's `task_group`); one: all."""
        return list(self.settings.task_groups or (tuple(range(len(self.settings.tasks))),))

    def _row_tasks(self, group: int, task_ids: Any) -> tuple[Task, ...]:
        """The tasks of a row: its group's, less those its video has done (`task_ids`: the ones still to do;
        empty or None: all)."""
        wanted = None if task_ids is None or len(task_ids) == 0 else {int(i) for i in task_ids}
        return tuple(self.settings.tasks[i] for i in self.group_task_ids[group] if wanted is None or i in wanted)


    def _crash_hooks(self, uris: Sequence[str]) -> None:
        """TEST-ONLY (pipeline.faults): kill this process the way a native crash would."""
        hooks = self.settings.test_hooks
        marker = faults.get("CRASH_ONCE", hooks)
        if marker and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            os._exit(1)
        needle = faults.get("CRASH_ON", hooks)
        if needle and any(needle in u for u in uris):
            os._exit(1)

    def _answer(self, windows: list[WindowInput], uris: list[str], tasks: Sequence[Task]) -> list[list[Answer]]:
        faults.event("infer-call", self.settings.test_hooks)
        self._crash_hooks(uris)
        try:
            t0 = time.perf_counter()  # for the Ray metrics (observe.metrics)
            per_window = self.engine.answer_windows(windows, tasks)
            record_generation(per_window, time.perf_counter() - t0)  # Ray metrics (observe.metrics)
            return per_window
        except Exception as exc:  # a model-side failure fails these windows, not the job
            msg = redact(f"{type(exc).__name__}: {exc}")[:2000]
            return [[Answer("", 0, 0, False, 0.0, type(exc).__name__, msg) for _ in tasks] for _ in windows]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        n = len(batch["video_id"])
        group_of = [int(batch["task_group"][i]) if "task_group" in batch else 0 for i in range(n)]
        out: dict[str, list[Any]] = {k: [] for k in (*PASSTHROUGH, *RESULT_COLUMNS)}
        ready = [i for i in range(n) if batch["decode_status"][i] != "failed" and len(batch["frames"][i]) > 0]
        answers: dict[int, list[Answer]] = {}
        # A row is asked its sampling group's tasks that its video still needs (a rerun with a new task asks
        # only that one); rows asked the same tasks are answered together.
        tasks = {i: self._row_tasks(group_of[i], batch["task_ids"][i] if "task_ids" in batch else None)
                 for i in range(n)}
        for row_tasks in dict.fromkeys(tasks[i] for i in ready):
            members = [i for i in ready if tasks[i] == row_tasks]
            if row_tasks:
                answers.update(self._answer_group(members, batch, row_tasks))
            else:  # this group's tasks are all done for the video: nothing to ask, nothing to emit
                answers.update({i: [] for i in members})
        for i in range(n):
            base = {k: _plain(batch[k][i]) for k in PASSTHROUGH}
            if i not in answers:  # failed decode: pass its error through once
                _append(out, base, {**dict.fromkeys(RESULT_COLUMNS), "frames_used": 0})
                continue
            for task, ans in zip(tasks[i], answers[i], strict=True):
                _append(
                    out,
                    base,
                    {
                        "task": task.kind,
                        "query": task.query,
                        "prompt": task.prompt,
                        "answer": ans.text,
                        "prompt_tokens": ans.prompt_tokens,
                        "generated_tokens": ans.generated_tokens,
                        "hit_max_new_tokens": ans.hit_max_new_tokens,
                        "latency_s": ans.latency_s,
                        "frames_used": len(batch["frame_times"][i]),
                        "infer_error_type": ans.error_type,
                        "infer_error_message": ans.error_message,
                    },
                )
        return out

    def _answer_group(self, todo: list[int], batch: dict[str, np.ndarray], tasks: Sequence[Task]) -> dict[int, list[Answer]]:
        """Answers of `tasks` for the rows `todo` of the batch (one sampling group), crash-isolated."""
        answers: dict[int, list[Answer]] = {}
        if todo:
            windows = [
                WindowInput(
                    frames=np.asarray(batch["frames"][i], dtype=np.uint8),
                    frame_times=np.asarray(batch["frame_times"][i], dtype=np.float64),
                    t_start=float(batch["t_start"][i]),
                    fps=float(batch["fps"][i]),
                )
                for i in todo
            ]
            uris = [str(batch["uri"][i]) for i in todo]
            group_index = int(batch["task_group"][todo[0]]) if "task_group" in batch else 0
            group = f"@{group_index}" if group_index else ""  # a window has one row per sampling group
            keys = [f"{batch['video_id'][i]}#{int(batch['window_index'][i])}{group}" for i in todo]
            batch_key = "batch:" + hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()
            if ledger.begin(self.settings.ledger, batch_key) <= 1:
                answers = dict(zip(todo, self._answer(windows, uris, tasks), strict=True))
            else:
                # This batch killed an actor before: isolate the culprit, one window at a time.
                for i, window, uri, key in zip(todo, windows, uris, keys, strict=True):
                    crashes = ledger.begin(self.settings.ledger, "window:" + key) - 1  # crashes while this window ran alone
                    if crashes >= self.settings.crash_retries:
                        msg = (
                            f"the model process died on this window's batch and then {crashes} more time(s) "
                            f"on the window alone (a crash, OOM kill or native fault); not retried past "
                            f"model_crash_retries={self.settings.crash_retries}"
                        )
                        answers[i] = [Answer("", 0, 0, False, 0.0, "WorkerCrashed", msg) for _ in tasks]
                    else:
                        answers[i] = self._answer([window], [uri], tasks)[0]
                    ledger.done(self.settings.ledger, "window:" + key)
            ledger.done(self.settings.ledger, batch_key)
        return answers


RESULT_COLUMNS = (
    "task",
    "query",
    "prompt",
    "answer",
    "prompt_tokens",
    "generated_tokens",
    "hit_max_new_tokens",
    "latency_s",
    "frames_used",
    "infer_error_type",
    "infer_error_message",
)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    # A column that was all None in its block reaches us as NaN floats; passing NaN on would make it a
    # float column that Ray Data cannot concatenate with the same column holding text in another batch.
    if isinstance(value, float) and value != value:
        return None
    return value


def _append(out: dict[str, list[Any]], base: dict[str, Any], result: dict[str, Any]) -> None:
    for k, v in base.items():
        out[k].append(v)
    for k in RESULT_COLUMNS:
        out[k].append(result.get(k))
