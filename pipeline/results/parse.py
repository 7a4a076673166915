"""Parse Molmo2 answers: grounded ``<points>`` / ``<tracks>`` tags, plain text and stated counts.

Grammar (see the Molmo2 model card and docs/tasks.md)::

    <points coords="GROUPS">LABEL</points>
    <tracks coords="GROUPS">LABEL</tracks>

``GROUPS`` are frame groups separated by ``;`` (the model card's parser also splits on tabs, ``,``
and ``:``, and so do we). A frame group is ``TIME ID X Y [ID X Y ...]``: the frame time in seconds
(relative to the clip the model saw), then one ``ID X Y`` triple per object, with ``X`` and ``Y`` on a
0..1000 scale.

How this parser differs from the card's three regexes, and why:

* It never raises and it says what it could not read: every dropped fragment goes to
  ``ParsedAnswer.unparsed`` and the status records how much of the answer was usable. The card's
  regexes silently skip anything that does not match.
* Groups without IDs (``TIME X Y [X Y ...]``) are read as ``object_id=None`` pairs when the count
  of numbers after the time makes that the only reading (even and not a multiple of 3). The grammar
  is ambiguous: six numbers are either two ``ID X Y`` triples or three ``X Y`` pairs; such groups
  follow the tag's unambiguous groups, and the documented grammar (triples) when there are none.
  See ``_choose_reading``.
* ``X``/``Y`` may have any number of digits (the card requires 3 or 4); values outside 0..1000,
  negative times and non-integer IDs drop that point into ``unparsed``.
* A tag cut off by ``max_new_tokens`` keeps every complete point. When the ``coords`` value itself is
  cut, its final number may be cut mid-way (``100`` of ``1000``), so it is only trusted if a delimiter
  follows it.
* Single-quoted values, extra attributes, self-closing tags and mismatched closing tags are accepted.
  Attribute values must not contain ``<`` or ``>`` (the tag ends at the first ``>``).

Status precedence: ``truncated`` (the generation hit ``max_new_tokens``) > ``invalid`` (tags were
present but not one point could be read, and something was unreadable) > ``partial`` (some fragment
unreadable or a tag never closed) > ``ok`` (tags read cleanly) / ``no_tags`` (no tag markup at all).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "GroundedPoint",
    "ParseStatus",
    "ParsedAnswer",
    "PointLike",
    "TagKind",
    "format_points",
    "parse_answer",
]


ParseStatus = Literal["ok", "partial", "no_tags", "truncated", "invalid"]


TagKind = Literal["points", "tracks"]


COORD_SCALE = 1000.0


"""Coordinates are written on a 0..COORD_SCALE scale of the frame width and height."""


_FRAGMENT_SEP = " | "


# The card's parser splits frame groups on `;`, tabs, `,` and `:`; newlines never occur inside a
# coordinate value in valid output, so they are treated as group separators too.
_GROUP_SEP_RE = re.compile(r"[;\t,:\n\r]")


_DELIMITERS = frozenset(";\t,:\n\r ")


# ASCII digits only: `\d` would accept other scripts' digits, which float() also accepts.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


_ID_RE = re.compile(r"[0-9]{1,18}")  # bounded: int() refuses strings over 4300 digits


_OPEN_RE = re.compile(r"<\s*(points|tracks)(?=[\s/>]|$)", re.IGNORECASE)


_CLOSE_RE = re.compile(r"<\s*/\s*(?:points|tracks)\s*>", re.IGNORECASE)


_COORDS_ATTR_RE = re.compile(
    r"""(?<![\w.:-])coords\s*=\s*(?:"(?P<dq>[^"]*)(?P<dq_end>")?|'(?P<sq>[^']*)(?P<sq_end>')?)""",
    re.IGNORECASE,
)


_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip


# A count is a whole number standing alone: not part of a decimal ("8.5"), a clock time ("1:30"),
# a thousands group ("1,000"), a word ("mp4", "3D") or a hyphenated compound ("twenty-one",
# which we do not try to read rather than read it as 20).
_COUNT_RE = re.compile(
    r"(?<![\w.,:-])(?:(?P<digits>[0-9]{1,9})|(?P<word>" + "|".join(_NUMBER_WORDS) + r"))"
    r"(?![\w-]|[.,:][0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GroundedPoint:
    """One object position at one frame time, as written by the model."""

    kind: TagKind
    """Which tag the point came from."""
    tag_index: int
    """Index of the tag within the answer (0-based, counting both kinds)."""
    label: str
    """Text inside the tag (stripped)."""
    t: float
    """Frame time in seconds as written, relative to the clip the model saw."""
    object_id: int | None
    """Object ID from an ``ID X Y`` triple; ``None`` when the model wrote ``X Y`` pairs."""
    x: float
    """0..1000 scale of the frame width, as written."""
    y: float
    """0..1000 scale of the frame height, as written."""


@dataclass(frozen=True)
class ParsedAnswer:
    """Everything read from one answer."""

    status: ParseStatus
    points: tuple[GroundedPoint, ...]
    text: str
    """The answer with each tag replaced by its label."""
    unparsed: str
    """Every fragment that could not be read, joined with ``" | "``; ``""`` when none."""
    number: int | None
    """The first count stated in ``text`` (digits or zero..twenty in words), or ``None``."""


class PointLike(Protocol):
    """Anything with the coordinates of a :class:`GroundedPoint`."""

    @property
    def t(self) -> float: ...
    @property
    def object_id(self) -> int | None: ...
    @property
    def x(self) -> float: ...
    @property
    def y(self) -> float: ...


_RawPoint = tuple[float, int | None, float, float]


_Reading = Literal["triples", "pairs"]


def parse_answer(answer: str, *, hit_max_new_tokens: bool = False) -> ParsedAnswer:
    """Read the grounded points, plain text and any stated count out of one Molmo2 answer.

    Never raises: whatever cannot be read is reported in ``unparsed`` and ``status``.

    Args:
        answer: the decoded answer text.
        hit_max_new_tokens: whether generation stopped at ``max_new_tokens`` (status ``truncated``).
    """
    try:
        return _parse(answer, hit_max_new_tokens)
    except Exception as exc:  # the contract is "never raises"; this is a last-resort guard
        text = answer if isinstance(answer, str) else ""
        return ParsedAnswer(
            status="truncated" if hit_max_new_tokens else "invalid",
            points=(),
            text=text,
            unparsed=f"parser error {type(exc).__name__}: {text[:200]}",
            number=None,
        )


def _parse(answer: str, hit_max_new_tokens: bool) -> ParsedAnswer:
    points: list[GroundedPoint] = []
    text_parts: list[str] = []
    fragments: list[str] = []
    has_markup = False
    unclosed = False
    tag_index = 0
    pos = 0
    # The next closing tag at or after the current position; searched again only once passed, so a
    # run of unclosed tags costs linear time, not quadratic.
    closing = _CLOSE_RE.search(answer)

    def add_text(segment: str) -> None:
        # Closing tags without an opening tag carry nothing readable; keep them out of the text.
        nonlocal has_markup
        for stray in _CLOSE_RE.finditer(segment):
            has_markup = True
            fragments.append(stray.group(0))
        text_parts.append(_CLOSE_RE.sub("", segment))

    while True:
        opening = _OPEN_RE.search(answer, pos)
        add_text(answer[pos : opening.start() if opening else len(answer)])
        if opening is None:
            break
        has_markup = True
        kind: TagKind = "points" if opening.group(1).lower() == "points" else "tracks"

        # The opening tag ends at the first `>`; a `<` or the end of the answer first means it was cut.
        lt = answer.find("<", opening.end())
        gt = answer.find(">", opening.end(), lt if lt != -1 else len(answer))
        tag_complete = gt != -1
        if tag_complete:
            attrs = answer[opening.end() : gt]
            after = gt + 1
        else:
            after = lt if lt != -1 else len(answer)
            attrs = answer[opening.end() : after]
            unclosed = True

        raw: list[_RawPoint] = []
        coords = _COORDS_ATTR_RE.search(attrs)
        if coords is None:
            fragments.append(answer[opening.start() : after].strip())
        else:
            quoted = coords.group("dq") is not None
            value = coords.group("dq") if quoted else coords.group("sq")
            quote_closed = coords.group("dq_end" if quoted else "sq_end") is not None
            raw, bad = _parse_coords(value or "", complete=quote_closed or tag_complete)
            fragments.extend(bad)

        if not tag_complete or attrs.rstrip().endswith("/"):  # cut off, or self-closing <points .../>
            label = ""
            pos = after
        else:
            if closing is not None and closing.start() < after:
                closing = _CLOSE_RE.search(answer, after)
            next_opening = _OPEN_RE.search(answer, after)
            if closing is not None and (next_opening is None or closing.start() < next_opening.start()):
                label = answer[after : closing.start()]
                pos = closing.end()
            else:  # never closed: the label runs to the next tag or the end of the answer
                end = next_opening.start() if next_opening else len(answer)
                label = answer[after:end]
                pos = end
                unclosed = True

        label = label.strip()
        text_parts.append(label)
        points.extend(
            GroundedPoint(kind=kind, tag_index=tag_index, label=label, t=t, object_id=oid, x=x, y=y)
            for t, oid, x, y in raw
        )
        tag_index += 1

    text = "".join(text_parts).strip()
    status: ParseStatus
    if hit_max_new_tokens:
        status = "truncated"
    elif not has_markup:
        status = "no_tags"
    elif not points and fragments:
        status = "invalid"
    elif fragments or unclosed:
        status = "partial"
    else:
        status = "ok"
    return ParsedAnswer(
        status=status,
        points=tuple(points),
        text=text,
        unparsed=_FRAGMENT_SEP.join(fragments),
        number=_stated_number(text),
    )


def _parse_coords(value: str, *, complete: bool) -> tuple[list[_RawPoint], list[str]]:
    """Read a ``coords`` value into (t, id, x, y) tuples and the fragments that could not be read.

    ``complete`` is False when the value was cut off (no closing quote and no end of tag).
    """
    groups = _GROUP_SEP_RE.split(value)
    cut_token: str | None = None
    last_tokens = groups[-1].split()
    if not complete and last_tokens and value[-1:] not in _DELIMITERS:
        # Nothing follows the final number, so it may be cut mid-way ("100" of "1000").
        cut_token = last_tokens[-1]

    token_groups: list[tuple[str, list[str], bool]] = []  # (raw text, tokens, is_cut_group)
    for index, group in enumerate(groups):
        tokens = group.split()
        is_cut = not complete and index == len(groups) - 1
        if is_cut and cut_token is not None:
            tokens = tokens[:-1]
        if tokens or (is_cut and cut_token is not None):
            token_groups.append((group.strip(), tokens, is_cut))

    # Groups whose count does not decide the reading follow the tag's other groups (a model writes one
    # form throughout a tag); with no evidence either way, the documented grammar (triples) wins.
    votes = [
        _choose_reading(len(tokens) - 1)
        for _, tokens, is_cut in token_groups
        if not is_cut and all(_NUMBER_RE.fullmatch(tok) for tok in tokens)
    ]
    fallback: _Reading = "pairs" if votes.count("pairs") > votes.count("triples") else "triples"

    points: list[_RawPoint] = []
    fragments: list[str] = []
    for raw_group, tokens, is_cut in token_groups:
        tail = [cut_token] if is_cut and cut_token is not None else []
        if not tokens or not all(_NUMBER_RE.fullmatch(tok) for tok in tokens):
            fragments.append(" ".join([*tokens, *tail]) if is_cut else raw_group)
            continue
        time_token, numbers = tokens[0], tokens[1:]
        t = float(time_token) + 0.0  # + 0.0 turns "-0" into 0.0
        if not math.isfinite(t) or t < 0 or not (numbers or tail):
            fragments.append(" ".join([*tokens, *tail]) if is_cut else raw_group)
            continue
        reading = (None if is_cut else _choose_reading(len(numbers))) or fallback
        width = 3 if reading == "triples" else 2
        usable = len(numbers) - len(numbers) % width
        for start in range(0, usable, width):
            unit = numbers[start : start + width]
            point = _read_unit(t, unit)
            if point is None:
                fragments.append(" ".join([time_token, *unit]))
            else:
                points.append(point)
        leftover = numbers[usable:] + tail
        if leftover:
            fragments.append(" ".join([time_token, *leftover]))
    return points, fragments


def _choose_reading(count: int) -> _Reading | None:
    """How ``count`` numbers after a frame time must be read, or None when the count does not decide.

    The grammar's ambiguity, made explicit:
    * 3, 9, 15, ... (a multiple of 3 only) can only be ``ID X Y`` triples;
    * 2, 4, 8, 10, ... (even, not a multiple of 3) can only be ID-less ``X Y`` pairs (``object_id=None``);
    * 6, 12, ... (a multiple of 6) are either 2k triples or 3k pairs: undecided;
    * 0, 1, 5, 7, ... have no complete reading: undecided.
    Undecided groups (and a group cut off by the end of generation) are read the way the tag's
    decided groups mostly are, triples on a tie; numbers left over are reported as unparsed.
    """
    if count <= 0:
        return None
    triples, pairs = count % 3 == 0, count % 2 == 0
    if triples and not pairs:
        return "triples"
    if pairs and not triples:
        return "pairs"
    return None


def _read_unit(t: float, unit: Sequence[str]) -> _RawPoint | None:
    """One ``ID X Y`` triple or ``X Y`` pair, or None when a value is out of range."""
    object_id: int | None = None
    if len(unit) == 3:
        if not _ID_RE.fullmatch(unit[0]):
            return None
        object_id = int(unit[0])
    x, y = float(unit[-2]) + 0.0, float(unit[-1]) + 0.0
    if not (0.0 <= x <= COORD_SCALE and 0.0 <= y <= COORD_SCALE):  # also False for NaN
        return None
    return (t, object_id, x, y)


# "There are no people." is how a count of zero is said (the toy Molmo2's grammar, and plain English):
# without it an empty clip's count would be null (unknown), not 0.
_NONE_THERE_RE = re.compile(r"\bthere\s+(?:are|is)\s+no\b", re.IGNORECASE)


def _stated_number(text: str) -> int | None:
    match = _COUNT_RE.search(text)
    if match is None:
        return 0 if _NONE_THERE_RE.search(text) else None
    if match.group("digits") is not None:
        return int(match.group("digits"))
    return _NUMBER_WORDS[match.group("word").lower()]


def format_points(points: Sequence[PointLike], kind: TagKind, label: str) -> str:
    """Write points as one Molmo2 tag, the inverse of :func:`parse_answer` for one tag.

    Points are grouped by frame time in order of first appearance; groups are separated by ``;``.
    Whole coordinates are zero-padded to 3 digits as the model writes them.

    Raises:
        ValueError: a value is not finite, a frame group mixes points with and without IDs, or an
            ID-less frame group has a multiple of 3 points (it would read back as ``ID X Y`` triples).
    """
    groups: dict[float, list[PointLike]] = {}
    for point in points:
        if not all(math.isfinite(v) for v in (point.t, point.x, point.y)):
            raise ValueError(f"cannot format a non-finite value: {point!r}")
        groups.setdefault(point.t, []).append(point)

    written: list[str] = []
    for t, members in groups.items():
        with_ids = {p.object_id is not None for p in members}
        if len(with_ids) > 1:
            raise ValueError(f"frame group at t={t} mixes points with and without object IDs")
        if with_ids == {False} and len(members) % 3 == 0:
            raise ValueError(
                f"frame group at t={t} has {len(members)} points without IDs: "
                "it would read back as ID X Y triples"
            )
        parts = [_format_number(t, pad=False)]
        for p in members:
            if p.object_id is not None:
                parts.append(str(p.object_id))
            parts += [_format_number(p.x, pad=True), _format_number(p.y, pad=True)]
        written.append(" ".join(parts))
    return f'<{kind} coords="{";".join(written)}">{label}</{kind}>'


def _format_number(value: float, *, pad: bool) -> str:
    value = float(value)
    if pad and value.is_integer() and value >= 0:
        return f"{int(value):03d}"
    # Shortest positional text that reads back to the same float (never scientific notation).
    return np.format_float_positional(value, unique=True, trim="0")
