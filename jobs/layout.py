"""Where a retail clip comes from, parsed from its path: store, camera and the clip's start time.

The default layout is `store={store}/camera={camera}/{clip_start}.mp4`, i.e.
`s3://BUCKET/[PREFIX/]store=<id>/camera=<id>/2026-11-01T13:45:00Z.mp4`. A layout is either a template
(`{name}` matches one path segment or part of it, `*` anything within a segment) or a regular expression
with the named groups `store`, `camera` and `clip_start`. It is matched against the end of the video's
URI, so the bucket and any prefix before it do not matter.

The clip start is ISO 8601: `2026-11-01T13:45:00Z`, `2026-11-01T13:45:00+01:00`, the basic form
`20261101T134500Z`, or with `-` instead of `:` in the time (`2026-11-01T13-45-00Z`, safe in file names).
A time without an offset is taken in `naive_timezone` (UTC unless configured). Times are stored in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.errors import MolmoBatchError

DEFAULT_LAYOUT = "store={store}/camera={camera}/{clip_start}.mp4"
REQUIRED_GROUPS = ("store", "camera", "clip_start")

_TOLERANT = re.compile(
    r"^(?P<Y>\d{4})-?(?P<M>\d{2})-?(?P<D>\d{2})[T_ ]?(?P<h>\d{2})[-:]?(?P<m>\d{2})(?:[-:]?(?P<s>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:?\d{2})?$"
)


class LayoutError(MolmoBatchError, ValueError):
    """A layout that cannot work (missing group, bad regex, unknown time zone)."""


def template_to_regex(template: str) -> str:
    """`store={store}/camera={camera}/{clip_start}.mp4` -> an anchored regex with named groups."""
    out = []
    pos = 0
    for m in re.finditer(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|\*", template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+?)" if m.group(1) else "[^/]*?")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return "(?:^|/)" + "".join(out).lstrip("/") + "$"


def parse_clip_start(text: str, naive_tz: tzinfo = UTC) -> datetime:
    """ISO 8601 (extended or basic, `-` allowed between time fields) -> an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        m = _TOLERANT.match(text)
        if not m:
            raise ValueError(f"not an ISO 8601 time: {text!r}") from None
        tz = m.group("tz") or ""
        if tz and tz != "Z" and ":" not in tz:
            tz = tz[:3] + ":" + tz[3:]
        iso = (f"{m['Y']}-{m['M']}-{m['D']}T{m['h']}:{m['m']}:{m['s'] or '00'}{m['f'] or ''}"
               f"{'+00:00' if tz == 'Z' else tz}")
        value = datetime.fromisoformat(iso)
    if value.tzinfo is None:
        value = value.replace(tzinfo=naive_tz)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ClipKey:
    store: str
    camera: str
    clip_start: datetime  # UTC


@dataclass(frozen=True)
class ClipLayout:
    pattern: re.Pattern[str]
    naive_tz: tzinfo = UTC

    @classmethod
    def create(cls, template: str | None = None, regex: str | None = None, naive_timezone: str = "UTC") -> ClipLayout:
        source = regex if regex else template_to_regex(template or DEFAULT_LAYOUT)
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise LayoutError(f"layout regex {source!r} does not compile: {exc}") from None
        missing = [g for g in REQUIRED_GROUPS if g not in pattern.groupindex]
        if missing:
            raise LayoutError(
                f"layout {regex or template!r} lacks {', '.join(missing)}: a template needs "
                "{store}, {camera} and {clip_start}; a regex the named groups (?P<store>...), "
                "(?P<camera>...), (?P<clip_start>...)"
            )
        try:
            tz: tzinfo = UTC if naive_timezone.upper() == "UTC" else ZoneInfo(naive_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise LayoutError(f"unknown time zone {naive_timezone!r} (use an IANA name such as Europe/Berlin)") from None
        return cls(pattern, tz)

    def parse(self, uri: str) -> ClipKey | None:
        """The clip's keys, or None when `uri` does not follow the layout (or its time does not parse)."""
        path = uri.split("://", 1)[-1]
        m = self.pattern.search(path)
        if not m:
            return None
        try:
            start = parse_clip_start(m.group("clip_start"), self.naive_tz)
        except ValueError:
            return None
        return ClipKey(store=m.group("store"), camera=m.group("camera"), clip_start=start)
