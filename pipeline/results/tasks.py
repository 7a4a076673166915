"""Tasks and their prompts (pure: no Ray, no torch).

A task string names what to ask of every window: `caption`, `count:<noun>`, `point:<noun>`,
`track:<noun>` or `ask:<question>`. Each becomes a `Task` with the exact prompt text the model sees;
that prompt is written on every output row so a table can always be traced to its question.

Templates fill `{noun}` with the noun as written and `{nouns}` with its plural: Molmo2 was trained on
"How many people are there?", not "How many person are there?". The plural comes from `inflect`; a noun
it gets wrong (or a phrase such as "person wearing a hat") is given its plural in `noun_plurals`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeVar

TaskKind = Literal["caption", "count", "point", "track", "ask"]
T = TypeVar("T")


TASK_KINDS: tuple[TaskKind, ...] = ("caption", "count", "point", "track", "ask")


# Defaults in Molmo2's own phrasing: dense captions are asked for plainly; grounded tasks use the
# "Point to ..." / "Track ..." / "How many ..." forms the model was trained on, which make it answer
# with <points>/<tracks> tags (counting by pointing).
DEFAULT_TEMPLATES: dict[str, str] = {
    "caption": "Describe this video in detail.",
    "count": "How many {nouns} are there?",
    "point": "Point to the {noun}.",
    "track": "Track the {noun}.",
}


NOUN_PLACEHOLDERS = ("{noun}", "{nouns}")


@cache
def _inflect() -> Any:
    import inflect  # imported on first use: ~50 ms, and only prompts need it

    return inflect.engine()


def plural_of(noun: str, plurals: Mapping[str, str] | None = None) -> str:
    """The plural a prompt asks about: `plurals[noun]` if given, the noun itself when it already reads as
    a plural (`people`, `cars`), else inflect's plural (`person` -> `people`, `shopping cart` -> `shopping
    carts`, `man in red` -> `men in red`)."""
    if plurals and noun in plurals:
        return plurals[noun]
    engine = _inflect()
    singular = engine.singular_noun(noun)
    if singular and singular != noun and engine.plural_noun(singular) == noun:
        return noun
    return str(engine.plural_noun(noun))


def fill_template(template: str, noun: str, plurals: Mapping[str, str] | None = None) -> str:
    """`template` with `{noun}` -> the noun as written and `{nouns}` -> its plural (see `plural_of`)."""
    text = template.replace("{noun}", noun)
    return text.replace("{nouns}", plural_of(noun, plurals)) if "{nouns}" in text else text


@dataclass(frozen=True)
class Task:
    """One question asked of every window."""

    kind: TaskKind
    query: str  # the noun (count/point/track), the question (ask), or "" (caption)
    prompt: str  # the exact text sent to the model after the video
    # This task's own frame sampling (e.g. tracking at 8 fps while captions stay at 2); None: the run's.
    max_fps: float | None = None
    num_frames: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.kind == "caption" else f"{self.kind}:{self.query}"


def parse_task(spec: str) -> tuple[TaskKind, str]:
    """Split 'count:person' into ('count', 'person'); raise ValueError with a fix-it message."""
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind not in TASK_KINDS:
        raise ValueError(
            f"unknown task {spec!r}: use caption, count:<noun>, point:<noun>, track:<noun> or ask:<question>"
        )
    if kind == "caption":
        if arg:
            raise ValueError(f"task {spec!r}: 'caption' takes no argument (write just 'caption')")
        return "caption", ""
    if not sep or not arg:
        raise ValueError(f"task {spec!r} needs an argument, e.g. '{kind}:person'")
    return kind, arg


def parse_task_list(specs: Iterable[str]) -> list[tuple[TaskKind, str]]:
    """Parse and de-duplicate task specs, keeping their order; at least one is required."""
    seen: dict[tuple[TaskKind, str], None] = {}
    for spec in specs:
        seen.setdefault(parse_task(spec), None)
    if not seen:
        raise ValueError("no tasks: pass --tasks caption (or count:<noun>, point:<noun>, ...)")
    return list(seen)


def _task_name(kind: str, arg: str) -> str:
    return kind if kind == "caption" else f"{kind}:{arg}"


def per_task(values: Mapping[str, T] | None, kind: str, name: str) -> T | None:
    """A per-task setting: the value given for the task's name (`track:person`), else for its kind (`track`)."""
    values = values or {}
    return values.get(name, values.get(kind))


def check_task_keys(option: str, keys: Iterable[str], specs: Iterable[str]) -> None:
    """Raise ValueError unless every key names a task of `specs` or the kind of one."""
    parsed = parse_task_list(specs)
    valid = {k for k, _ in parsed} | {_task_name(k, a) for k, a in parsed}
    unknown = sorted(set(keys) - valid)
    if unknown:
        raise ValueError(f"{option} has key(s) {unknown} that name none of the tasks; use a task kind or task "
                         f"of --tasks: {', '.join(sorted(valid))}")


def build_tasks(
    specs: Iterable[str],
    templates: Mapping[str, str] | None = None,
    *,
    max_fps: Mapping[str, float] | None = None,
    num_frames: Mapping[str, int] | None = None,
    plurals: Mapping[str, str] | None = None,
) -> list[Task]:
    """Turn task specs into Tasks with their exact prompts, applying template overrides (`plurals`: the
    plural of a noun where inflect's would be wrong, e.g. {"bus": "buses"}).

    `max_fps` / `num_frames` give tasks their own frame sampling, keyed by task (`track:person`) or kind
    (`track`); the task name wins over the kind. Tasks not named keep the run's sampling (None).
    """
    specs = list(specs)
    merged = {**DEFAULT_TEMPLATES, **(templates or {})}
    unknown = set(templates or {}) - set(DEFAULT_TEMPLATES)
    if unknown:
        raise ValueError(
            f"prompt_templates has unknown keys {sorted(unknown)}: use caption, count, point, track"
        )
    check_task_keys("task_max_fps", (max_fps or {}).keys(), specs)
    check_task_keys("task_num_frames", (num_frames or {}).keys(), specs)
    tasks = []
    for kind, arg in parse_task_list(specs):
        if kind == "ask":
            prompt = arg
        elif kind == "caption":
            prompt = merged["caption"]
        else:
            template = merged[kind]
            if not any(p in template for p in NOUN_PLACEHOLDERS):
                raise ValueError(f"prompt template for {kind!r} must contain '{{noun}}' or '{{nouns}}': {template!r}")
            prompt = fill_template(template, arg, plurals)
        name = _task_name(kind, arg)
        tasks.append(Task(kind=kind, query=arg, prompt=prompt, max_fps=per_task(max_fps, kind, name),
                          num_frames=per_task(num_frames, kind, name)))
    return tasks


def sampling_groups(tasks: Sequence[Task], num_frames: int | None = None,
                    max_fps: float | None = None) -> list[tuple[tuple[int | None, float | None], tuple[int, ...]]]:
    """The tasks that share one frame sampling: ((num_frames, max_fps), task indices) per sampling, in
    order of first appearance; a task's None is the run's `num_frames` / `max_fps`.

    Molmo2 takes one video per prompt: each group is decoded as its own clip of the window (the frames of
    one sampling) and asked its own tasks; with no per-task sampling there is one group of every task.
    """
    groups: dict[tuple[int | None, float | None], list[int]] = {}
    for i, task in enumerate(tasks):
        key = (task.num_frames or num_frames, task.max_fps or max_fps)
        groups.setdefault(key, []).append(i)
    return [(key, tuple(members)) for key, members in groups.items()]
