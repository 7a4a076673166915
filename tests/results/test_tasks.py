"""Tasks with their own frame sampling (pure): which task gets which rate, and how tasks group by sampling."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, build_config
from pipeline.results.collect import RowContext, VideoCollector, video_tables
from pipeline.results.tasks import build_tasks, fill_template, plural_of, sampling_groups


@pytest.mark.parametrize(("noun", "plural"), [
    ("person", "people"), ("people", "people"), ("cart", "carts"), ("carts", "carts"),
    ("shopping cart", "shopping carts"), ("child", "children"), ("children", "children"), ("box", "boxes"),
    ("sheep", "sheep"), ("man in red", "men in red"), ("bottle of water", "bottles of water"),
])
def test_count_prompts_ask_about_the_plural(noun: str, plural: str) -> None:
    assert plural_of(noun) == plural
    (task,) = build_tasks([f"count:{noun}"])
    assert task.prompt == f"How many {plural} are there?" and task.query == noun  # the noun is kept as written


def test_a_plural_inflect_gets_wrong_is_given_in_noun_plurals() -> None:
    assert plural_of("bus") == "bus"  # inflect reads "bus" as a plural (of "bu"): why the override exists
    plurals = {"bus": "buses", "person wearing a hat": "people wearing hats"}
    tasks = build_tasks(["count:bus", "count:person wearing a hat", "track:bus"], plurals=plurals)
    assert [t.prompt for t in tasks] == ["How many buses are there?", "How many people wearing hats are there?",
                                         "Track the bus."]
    config = build_config({"tasks": {"tasks": "count:bus", "noun_plurals": {"bus": "buses"}}})
    assert config.tasks.noun_plurals == {"bus": "buses"}
    assert fill_template("Find every {noun}, count the {nouns}.", "bus", plurals) == "Find every bus, count the buses."
    with pytest.raises(ConfigError, match=r"no '\{noun\}' or '\{nouns\}' placeholder"):
        build_config({"tasks": {"tasks": "count:bus", "prompt_templates": {"count": "How many?"}}})


def test_a_task_name_wins_over_its_kind_and_other_tasks_keep_the_run_sampling() -> None:
    tasks = build_tasks(["caption", "track:person", "track:cart", "count:person"],
                        max_fps={"track": 8.0, "track:cart": 4.0}, num_frames={"track": 240})
    got = {t.name: (t.max_fps, t.num_frames) for t in tasks}
    assert got == {"caption": (None, None), "track:person": (8.0, 240), "track:cart": (4.0, 240),
                   "count:person": (None, None)}
    assert [t.name for t in tasks] == ["caption", "track:person", "track:cart", "count:person"]


def test_keys_must_name_a_task_or_a_kind_of_one() -> None:
    with pytest.raises(ValueError, match=r"task_max_fps has key\(s\) \['track'\] that name none of the tasks"):
        build_tasks(["caption"], max_fps={"track": 8.0})
    with pytest.raises(ConfigError, match="task_num_frames"):
        build_config({"tasks": {"tasks": ["caption", "track:person"], "task_num_frames": {"track:cart": 9}}})
    with pytest.raises(ConfigError, match="rates must be > 0"):
        build_config({"tasks": {"tasks": ["track:person"], "task_max_fps": {"track": 0}}})
    config = build_config({"tasks": {"tasks": "caption,track:person", "task_max_fps": {"track:person": "8"}}})
    assert config.tasks.task_max_fps == {"track:person": 8.0}


def test_tasks_group_by_their_resolved_sampling() -> None:
    tasks = build_tasks(["caption", "track:person", "count:person", "track:cart"], max_fps={"track": 8.0},
                        num_frames={"track": 240})
    assert sampling_groups(tasks, 64, 2.0) == [((64, 2.0), (0, 2)), ((240, 8.0), (1, 3))]
    # A task whose own rate equals the run's shares the run's group: one clip, not two identical ones.
    same = build_tasks(["caption", "track:person"], max_fps={"track": 2.0})
    assert sampling_groups(same, 64, 2.0) == [((64, 2.0), (0, 1))]
    assert sampling_groups(build_tasks(["caption", "count:x"]), 64, 2.0) == [((64, 2.0), (0, 1))]


def _row(group_task: str, query: str, frame_times: list[float], answer: str) -> dict[str, object]:
    return {"video_id": "v", "uri": "u", "size_bytes": 1, "duration_s": 4.0, "fps": 24.0, "width": 100, "height": 100,
            "codec": "h264", "rotation": 0, "num_windows": 1, "window_index": 0, "t_start": 0.0, "t_end": 4.0,
            "frame_times": frame_times, "decoder": "pyav", "decode_status": "ok", "error_stage": None,
            "error_type": None, "error_message": None, "task": group_task, "query": query, "prompt": "p",
            "answer": answer, "prompt_tokens": 10, "generated_tokens": 5, "hit_max_new_tokens": False,
            "latency_s": 0.1, "frames_used": len(frame_times), "infer_error_type": None, "infer_error_message": None}


def test_rows_of_two_samplings_complete_a_window_and_record_their_own_rate() -> None:
    tasks = build_tasks(["caption", "track:person"], max_fps={"track": 8.0}, num_frames={"track": 32})
    ctx = RowContext(run_id="r", model_id="m", max_new_tokens=16, sampling_mode="native", num_frames=8, max_fps=2.0)
    slow = [0.0, 0.5, 1.0, 1.5]
    fast = [i / 8 for i in range(32)]
    collector = VideoCollector(num_tasks=2)
    assert collector.add(_row("caption", "", slow, "a street")) is None
    # The track answer points at 1.125 s: a frame of the 8 fps clip, between two of the 2 fps clip's.
    done = collector.add(_row("track", "person", fast, '<tracks coords="1.125 1 500 500"/>'))
    assert done is not None
    tables = video_tables(done, tasks, ctx)
    assert tables["videos"][0]["status"] == "ok"
    (caption,) = tables["captions"]
    assert (caption["max_fps"], caption["num_frames"], caption["frames_used"]) == (2.0, 8, 4)
    track_rows = tables["tracks"]
    assert track_rows and all((r["max_fps"], r["num_frames"]) == (8.0, 32) for r in track_rows)
    assert all(r["frame_matched"] for r in track_rows)
    (counts,) = tables["video_counts"]
    assert counts["max_fps"] == 8.0
