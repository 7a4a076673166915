"""Work identity (pipeline.results.work): what changes an answer changes the key; the rest does not."""

from __future__ import annotations

import dataclasses

from pipeline.results.tasks import build_tasks
from pipeline.results.work import (
    WorkSettings,
    decide_work,
    legacy_work_keys,
    missing_tasks,
    work_key,
    work_keys,
)

BASE = WorkSettings(model_id="allenai/Molmo2-8B", revision=None, sampling_mode="native", num_frames=64,
                    max_fps=2.0, window_s=60.0, overlap_s=5.0, frame_size=None, max_new_tokens=256)


def test_every_setting_that_changes_an_answer_changes_the_key() -> None:
    caption, count = build_tasks(["caption", "count:person"])
    key = work_key(caption, BASE)
    assert len(key) == 16 and key == work_key(caption, dataclasses.replace(BASE))  # stable
    changes = {"model_id": "allenai/Molmo2-4B", "revision": "abc123", "sampling_mode": "uniform", "num_frames": 32,
               "max_fps": 8.0, "window_s": 30.0, "overlap_s": 0.0, "frame_size": 252, "max_new_tokens": 64}
    keys = {work_key(caption, dataclasses.replace(BASE, **{name: value})) for name, value in changes.items()}
    assert len(keys) == len(changes) and key not in keys
    assert work_key(count, BASE) != key
    (other_prompt,) = build_tasks(["count:person"], {"count": "Count the {noun}."})
    assert work_key(other_prompt, BASE) != work_key(count, BASE)  # same task, another prompt
    assert work_key(build_tasks(["count:car"])[0], BASE) != work_key(count, BASE)


def test_a_rerun_does_only_the_missing_pairs() -> None:
    tasks = build_tasks(["caption", "count:person"])
    keys = work_keys(tasks, BASE)
    done = {"v1": {keys[0]}, "v2": {keys[0], keys[1]}, "v3": {"some-other-model-key"}}
    committed = {**done, "v4": {keys[1]}}  # v4's count was committed with a status this run retries
    d = decide_work(["v1", "v2", "v3", "v4"], done, keys, committed)
    assert d.todo == {"v1": (1,), "v3": (0, 1), "v4": (0, 1)} and d.skipped == 1
    assert (d.pairs, d.some_tasks, d.retried) == (5, 1, 1)
    assert missing_tasks(keys, keys) == ()


def test_rows_from_before_work_keys_stand_for_the_tasks_they_name_with_the_same_model() -> None:
    tasks = build_tasks(["caption", "count:person"])
    keys = work_keys(tasks, BASE)
    assert legacy_work_keys("caption", BASE.model_id, tasks, keys, BASE.model_id) == {keys[0]}
    assert legacy_work_keys("caption,count:person", BASE.model_id, tasks, keys, BASE.model_id) == set(keys)
    assert legacy_work_keys("caption", "allenai/Molmo2-4B", tasks, keys, BASE.model_id) == set()
    assert legacy_work_keys(None, BASE.model_id, tasks, keys, BASE.model_id) == set()


def test_a_tasks_own_sampling_rate_is_part_of_its_key() -> None:
    (track,) = build_tasks(["track:person"])
    at_8 = dataclasses.replace(track, max_fps=8.0)
    assert work_key(at_8, BASE) != work_key(track, BASE)
    assert work_key(dataclasses.replace(track, max_fps=2.0), BASE) == work_key(track, BASE)  # 2.0 is the run's
    assert work_key(dataclasses.replace(track, num_frames=128), BASE) != work_key(track, BASE)
