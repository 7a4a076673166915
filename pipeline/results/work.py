"""Work identity: what a run must produce, so a rerun does exactly the missing work (pure: no Ray, no torch).

A unit of work is one video x one *work key*. The key names everything that changes an answer: the task
(kind, query and the exact prompt), the model and its revision, the frame sampling (mode, frames, fps),
the windowing (length, overlap), the model's frame size and the generation budget. Each committed `videos`
row lists the work keys it completed (`work_keys`), and every result row carries its own (`work_key`), so:

- an unchanged rerun finds every (video, key) done and does nothing;
- a new task, a new prompt or another model over an old corpus does only that work, decoding each video
  once for all of its missing tasks;
- a changed object is a new video (its `video_id` includes the object's version).

The latest answer for a video and a task is the result row of that work key whose run committed last:
see docs/tables.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

from pipeline.results.tasks import Task

KEY_LENGTH = 16


@dataclass(frozen=True)
class WorkSettings:
    """The run settings that change answers (everything else, e.g. batch size or decoder, does not)."""

    model_id: str
    revision: str | None
    sampling_mode: str
    num_frames: int
    max_fps: float
    window_s: float
    overlap_s: float
    frame_size: int | None
    max_new_tokens: int


def work_key(task: Task, settings: WorkSettings) -> str:
    """16 hex digits naming (task, prompt, model, revision, sampling, windows, frame size, budget)."""
    spec = {"kind": task.kind, "query": task.query, "prompt": task.prompt, **asdict(settings)}
    # A task with its own sampling (tracking at 8 fps) is asked of other frames than the run's default.
    if task.max_fps is not None:
        spec["max_fps"] = task.max_fps
    if task.num_frames is not None:
        spec["num_frames"] = task.num_frames
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def work_keys(tasks: Sequence[Task], settings: WorkSettings) -> list[str]:
    return [work_key(t, settings) for t in tasks]


def legacy_work_keys(task_names: str | None, model_id: str | None, tasks: Sequence[Task], keys: Sequence[str],
                     current_model: str) -> set[str]:
    """The keys a `videos` row written before work keys existed stands for: the run's tasks it names, when
    it was made by the same model (its other settings are unknown: taken to be today's)."""
    if not task_names or model_id != current_model:
        return set()
    named = {n.strip() for n in task_names.split(",")}
    return {k for t, k in zip(tasks, keys, strict=True) if t.name in named}


class DoneRow(NamedTuple):
    """What work identity needs of one committed `videos` row (a column an old table lacks is None)."""

    video_id: str
    status: str | None
    work_keys: list[str] | None
    tasks: str | None
    model_id: str | None


@dataclass(frozen=True)
class DoneQuery:
    """How a run reads committed rows: its work keys and tasks, its model, and the statuses that count as
    done (None: every status; with --retry-statuses, the others)."""

    keys: tuple[str, ...]
    tasks: tuple[Task, ...]
    model_id: str
    statuses: tuple[str, ...] | None = None


def work_done(rows: Iterable[DoneRow], query: DoneQuery, *, any_status: bool = False,
              into: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Per video, the work keys its rows completed (only rows whose status counts as done, unless
    `any_status`); rows written before work keys existed stand for the tasks they name (`legacy_work_keys`)."""
    done: dict[str, set[str]] = {} if into is None else into
    for r in rows:
        if not any_status and query.statuses is not None and r.status not in query.statuses:
            continue
        got = set(r.work_keys) if r.work_keys is not None else legacy_work_keys(
            r.tasks, r.model_id, query.tasks, query.keys, query.model_id)
        done.setdefault(r.video_id, set()).update(got)
    return done


def missing_tasks(done: Iterable[str], keys: Sequence[str]) -> tuple[int, ...]:
    """Indexes of the tasks whose work key is not among `done` (a video's completed keys)."""
    have = set(done)
    return tuple(i for i, k in enumerate(keys) if k not in have)


@dataclass
class WorkDecision:
    """What a batch of listed videos still needs: per video its missing task indexes, and counts."""

    todo: dict[str, tuple[int, ...]]
    skipped: int = 0  # videos with nothing missing
    retried: int = 0  # videos whose missing work was committed before with a status this run retries
    some_tasks: int = 0  # videos that need only some of the tasks
    pairs: int = 0  # video x task pairs to do


def decide_work(video_ids: Iterable[str], done: Mapping[str, set[str]], keys: Sequence[str],
                committed: Mapping[str, set[str]] | None = None) -> WorkDecision:
    """Per video, the tasks still to do given `done` (its completed keys), with the run's counts."""
    decision = WorkDecision(todo={})
    for vid in video_ids:
        missing = missing_tasks(done.get(vid, ()), keys)
        if not missing:
            decision.skipped += 1
            continue
        decision.todo[vid] = missing
        decision.pairs += len(missing)
        decision.some_tasks += len(missing) < len(keys)
        decision.retried += any(keys[i] in (committed or {}).get(vid, ()) for i in missing)
    return decision
