"""Tasks and their prompts (pure: no Ray, no torch).

A task string names what to ask of every window: `caption`, `count:<noun>`, `point:<noun>`,
`track:<noun>` or `ask:<question>`. Each becomes a `Task` with the exact prompt text the model sees;
that prompt is written on every output row so a table can always be traced to its question.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["caption", "count", "point", "track", "ask"]


TASK_KINDS: tuple[TaskKind, ...] = ("caption", "count", "point", "track", "ask")


# Defaults in Molmo2's own phrasing: dense captions are asked for plainly; grounded tasks use the
# "Point to ..." / "Track ..." / "How many ..." forms the model was trained on, which make it answer
# with <points>/<tracks> tags (counting by pointing).
DEFAULT_TEMPLATES: dict[str, str] = {
    "caption": "Describe this video in detail.",
    "count": "How many {noun} are there?",
    "point": "Point to the {noun}.",
    "track": "Track the {noun}.",
}


@dataclass(frozen=True)
class Task:
    """One question asked of every window."""

    kind: TaskKind
    query: str  # the noun (count/point/track), the question (ask), or "" (caption)
    prompt: str  # the exact text sent to the model after the video

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


def build_tasks(specs: Iterable[str], templates: Mapping[str, str] | None = None) -> list[Task]:
    """Turn task specs into Tasks with their exact prompts, applying template overrides."""
    merged = {**DEFAULT_TEMPLATES, **(templates or {})}
    unknown = set(templates or {}) - set(DEFAULT_TEMPLATES)
    if unknown:
        raise ValueError(
            f"prompt_templates has unknown keys {sorted(unknown)}: use caption, count, point, track"
        )
    tasks = []
    for kind, arg in parse_task_list(specs):
        if kind == "ask":
            prompt = arg
        elif kind == "caption":
            prompt = merged["caption"]
        else:
            template = merged[kind]
            if "{noun}" not in template:
                raise ValueError(f"prompt template for {kind!r} must contain '{{noun}}': {template!r}")
            prompt = template.replace("{noun}", arg)
        tasks.append(Task(kind=kind, query=arg, prompt=prompt))
    return tasks
