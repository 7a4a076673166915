"""Unit tests of pipeline.results.parse: Molmo2's <points>/<tracks> grammar (FORMAT.md) and malformed output."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.results.parse import GroundedPoint, ParsedAnswer, format_points, parse_answer

FORMAT_POINTS = '<points coords="8.5 1 255 301 2 610 288">penguins</points>'
FORMAT_TRACKS = '<tracks coords="0.0 1 730 615 2 120 400;0.5 1 720 600 2 130 410;1.0 1 710 590">cat</tracks>'


def coords(parsed: ParsedAnswer) -> list[tuple[float, int | None, float, float]]:
    return [(p.t, p.object_id, p.x, p.y) for p in parsed.points]


# --- FORMAT.md examples --------------------------------------------------------------------------


def test_format_md_points_example() -> None:
    parsed = parse_answer(FORMAT_POINTS)
    assert parsed.status == "ok"
    assert parsed.points == (
        GroundedPoint("points", 0, "penguins", 8.5, 1, 255.0, 301.0),
        GroundedPoint("points", 0, "penguins", 8.5, 2, 610.0, 288.0),
    )
    assert parsed.text == "penguins"
    assert parsed.unparsed == ""
    assert parsed.number is None


def test_format_md_tracks_example() -> None:
    parsed = parse_answer(FORMAT_TRACKS)
    assert parsed.status == "ok"
    assert {p.kind for p in parsed.points} == {"tracks"}
    assert {p.label for p in parsed.points} == {"cat"}
    assert coords(parsed) == [
        (0.0, 1, 730, 615),
        (0.0, 2, 120, 400),
        (0.5, 1, 720, 600),
        (0.5, 2, 130, 410),
        (1.0, 1, 710, 590),  # object 2 not visible in the last frame: groups vary in size
    ]
    assert parsed.unparsed == ""


def test_format_md_examples_round_trip_through_format_points() -> None:
    for answer in (FORMAT_POINTS, FORMAT_TRACKS):
        parsed = parse_answer(answer)
        kind = parsed.points[0].kind
        assert format_points(parsed.points, kind, parsed.points[0].label) == answer


def test_examples_with_text_around_them() -> None:
    parsed = parse_answer(f"Here they are: {FORMAT_POINTS}. Done.")
    assert parsed.status == "ok"
    assert parsed.text == "Here they are: penguins. Done."
    assert len(parsed.points) == 2


# --- separators, sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t", ",", ":", "; "])
def test_group_separators(sep: str) -> None:
    answer = f'<tracks coords="0.0 1 730 615 2 120 400{sep}0.5 1 720 600 2 130 410">cat</tracks>'
    parsed = parse_answer(answer)
    assert parsed.status == "ok"
    assert coords(parsed) == [(0.0, 1, 730, 615), (0.0, 2, 120, 400), (0.5, 1, 720, 600), (0.5, 2, 130, 410)]


def test_mixed_separators_and_extra_spaces() -> None:
    answer = '<tracks coords=" 0.0  1 100 200 ;\t0.5 1 110 210,1.0 1 120 220:1.5 1 130 230; ">x</tracks>'
    parsed = parse_answer(answer)
    assert parsed.status == "ok"
    assert [(p.t, p.x) for p in parsed.points] == [(0.0, 100), (0.5, 110), (1.0, 120), (1.5, 130)]


def test_many_objects_and_frames() -> None:
    frames = [i * 0.5 for i in range(120)]
    objects = range(1, 13)
    groups = [
        " ".join(
            [str(t)]
            + [f"{oid} {(oid * 70 + i) % 1001:03d} {(oid * 37 + 2 * i) % 1001:03d}" for oid in objects]
        )
        for i, t in enumerate(frames)
    ]
    parsed = parse_answer(f'<tracks coords="{";".join(groups)}">fish</tracks>')
    assert parsed.status == "ok"
    assert len(parsed.points) == len(frames) * len(objects)
    assert parsed.points[-1] == GroundedPoint(
        "tracks", 0, "fish", frames[-1], 12, float((12 * 70 + 119) % 1001), float((12 * 37 + 238) % 1001)
    )


def test_zero_padded_and_four_digit_coordinates() -> None:
    parsed = parse_answer('<points coords="3.0 1 005 050 2 1000 0999">dots</points>')
    assert parsed.status == "ok"
    assert coords(parsed) == [(3.0, 1, 5.0, 50.0), (3.0, 2, 1000.0, 999.0)]


def test_decimal_coordinates_are_kept_as_written() -> None:
    parsed = parse_answer('<points coords="3 1 255.5 300.25">dot</points>')
    assert coords(parsed) == [(3.0, 1, 255.5, 300.25)]


# --- two tags, text only -------------------------------------------------------------------------


def test_two_tags_in_one_answer() -> None:
    answer = (
        'I see <points coords="1.0 1 100 100 2 200 200">dogs</points> and '
        '<tracks coords="0.0 1 500 500;0.5 1 510 505">a ball</tracks>.'
    )
    parsed = parse_answer(answer)
    assert parsed.status == "ok"
    assert [(p.kind, p.tag_index, p.label) for p in parsed.points] == [
        ("points", 0, "dogs"),
        ("points", 0, "dogs"),
        ("tracks", 1, "a ball"),
        ("tracks", 1, "a ball"),
    ]
    assert parsed.text == "I see dogs and a ball."


def test_tag_index_counts_tags_without_points() -> None:
    parsed = parse_answer('<points coords="">none</points><points coords="1 1 100 100">one</points>')
    assert parsed.status == "ok"
    assert [p.tag_index for p in parsed.points] == [1]


@pytest.mark.parametrize(
    ("answer", "number"),
    [
        ("There are 7 penguins.", 7),
        ("I count three dogs.", 3),
        ("Twenty birds fly by.", 20),
        ("Zero cats.", 0),
        ("The person is walking a dog in the park.", None),
        ("At 8.5 seconds a car passes.", None),  # a decimal is not a count
        ("At 1:30 a car passes.", None),  # nor a clock time
        ("Someone waves.", None),  # no number word inside another word
        ("twenty-one geese", None),  # not read as 20
        ("There are 12 cars and 3 bikes.", 12),  # the first count stated
        ("There are no people.", 0),  # how a count of zero is said
        ("There is no dog here.", 0),
        ("No, the dog is not there.", None),  # a bare "no" is not a count
    ],
)
def test_text_only(answer: str, number: int | None) -> None:
    parsed = parse_answer(answer)
    assert parsed.status == "no_tags"
    assert parsed.points == ()
    assert parsed.text == answer
    assert parsed.unparsed == ""
    assert parsed.number == number


def test_number_is_read_from_text_with_tags_too() -> None:
    parsed = parse_answer('There are 2 <points coords="8.5 1 255 301 2 610 288">penguins</points>.')
    assert parsed.number == 2
    assert len(parsed.points) == 2


def test_empty_answer() -> None:
    assert parse_answer("") == ParsedAnswer("no_tags", (), "", "", None)


# --- missing IDs and the pairs/triples ambiguity -------------------------------------------------


def test_missing_ids_pairs() -> None:
    parsed = parse_answer('<points coords="8.5 255 301 610 288">penguins</points>')
    assert parsed.status == "ok"
    assert coords(parsed) == [(8.5, None, 255, 301), (8.5, None, 610, 288)]


def test_missing_ids_single_pair() -> None:
    parsed = parse_answer('<points coords="2.0 400 500">ball</points>')
    assert coords(parsed) == [(2.0, None, 400, 500)]


def test_six_numbers_read_as_triples_per_grammar() -> None:
    # Either 2 triples or 3 ID-less pairs: the documented grammar (triples) wins.
    parsed = parse_answer('<points coords="1.0 1 100 200 2 300 400">x</points>')
    assert coords(parsed) == [(1.0, 1, 100, 200), (1.0, 2, 300, 400)]


def test_irregular_group_reads_leading_triples_and_reports_the_rest() -> None:
    parsed = parse_answer('<points coords="1.0 1 100 200 2 300">x</points>')
    assert parsed.status == "partial"
    assert coords(parsed) == [(1.0, 1, 100, 200)]
    assert parsed.unparsed == "1.0 2 300"


def test_irregular_group_follows_pairs_when_the_tag_uses_pairs() -> None:
    parsed = parse_answer('<tracks coords="0.0 100 200 300 400;0.5 110 210 310 410 510">x</tracks>')
    assert parsed.status == "partial"
    assert coords(parsed) == [
        (0.0, None, 100, 200),
        (0.0, None, 300, 400),
        (0.5, None, 110, 210),
        (0.5, None, 310, 410),
    ]
    assert parsed.unparsed == "0.5 510"


def test_six_numbers_follow_a_tag_that_uses_pairs() -> None:
    # "1.0 ..." has 6 numbers (ambiguous); "0.5 ..." has 4 (pairs only): the tag writes pairs.
    parsed = parse_answer('<tracks coords="0.5 100 200 300 400;1.0 110 210 310 410 510 610">x</tracks>')
    assert parsed.status == "ok"
    assert [p.object_id for p in parsed.points] == [None] * 5
    assert coords(parsed)[-1] == (1.0, None, 510, 610)


def test_three_numbers_are_a_triple_even_in_a_pairs_tag() -> None:
    # Only one reading fits three numbers, so the count decides, not the rest of the tag.
    parsed = parse_answer('<tracks coords="0.0 100 200 300 400;0.5 7 210 310">x</tracks>')
    assert coords(parsed)[-1] == (0.5, 7, 210, 310)


def test_non_integer_id_is_unparsed() -> None:
    parsed = parse_answer('<points coords="1.0 1.5 100 200 2 300 400">x</points>')
    assert parsed.status == "partial"
    assert coords(parsed) == [(1.0, 2, 300, 400)]
    assert parsed.unparsed == "1.0 1.5 100 200"


# --- out-of-range values -------------------------------------------------------------------------


def test_value_over_1000_is_dropped() -> None:
    parsed = parse_answer('<points coords="8.5 1 1255 301 2 610 288">penguins</points>')
    assert parsed.status == "partial"
    assert coords(parsed) == [(8.5, 2, 610, 288)]
    assert parsed.unparsed == "8.5 1 1255 301"


def test_negative_coordinate_is_dropped() -> None:
    parsed = parse_answer('<points coords="8.5 1 -5 301 2 610 288">p</points>')
    assert parsed.status == "partial"
    assert coords(parsed) == [(8.5, 2, 610, 288)]
    assert parsed.unparsed == "8.5 1 -5 301"


def test_negative_time_drops_the_whole_group() -> None:
    parsed = parse_answer('<tracks coords="-0.5 1 100 100;0.0 1 110 110">p</tracks>')
    assert parsed.status == "partial"
    assert coords(parsed) == [(0.0, 1, 110, 110)]
    assert parsed.unparsed == "-0.5 1 100 100"


def test_nothing_valid_is_invalid() -> None:
    parsed = parse_answer('<points coords="8.5 1 1255 301 2 610 2880">p</points>')
    assert parsed.status == "invalid"
    assert parsed.points == ()
    assert parsed.unparsed == "8.5 1 1255 301 | 8.5 2 610 2880"


def test_boundary_values_are_valid() -> None:
    parsed = parse_answer('<points coords="0 0 0 0 1 1000 1000">p</points>')
    assert parsed.status == "ok"
    assert coords(parsed) == [(0.0, 0, 0, 0), (0.0, 1, 1000, 1000)]


@pytest.mark.parametrize(
    ("answer", "unparsed"),
    [
        ('<points coords="abc 1 100 100;1.0 1 200 200">p</points>', "abc 1 100 100"),
        ('<points coords="1.0 1 1e2 100;1.0 1 200 200">p</points>', "1.0 1 1e2 100"),
        ('<points coords="5.0;1.0 1 200 200">p</points>', "5.0"),
        ('<points coords="nan 1 100 100;1.0 1 200 200">p</points>', "nan 1 100 100"),
        (f'<points coords="1.0 {"9" * 5000} 100 100;1.0 1 200 200">p</points>', f"1.0 {'9' * 5000} 100 100"),
    ],
)
def test_unreadable_group_is_reported(answer: str, unparsed: str) -> None:
    parsed = parse_answer(answer)
    assert parsed.status == "partial"
    assert coords(parsed) == [(1.0, 1, 200, 200)]
    assert parsed.unparsed == unparsed


def test_huge_time_is_unparsed_not_inf() -> None:
    parsed = parse_answer(f'<points coords="{"9" * 400} 1 100 100">p</points>')
    assert parsed.status == "invalid"
    assert parsed.points == ()


# --- truncation ----------------------------------------------------------------------------------


def test_truncated_inside_coords_keeps_complete_points() -> None:
    answer = '<tracks coords="0.0 1 730 615 2 120 400;0.5 1 720 600 2 13'
    parsed = parse_answer(answer, hit_max_new_tokens=True)
    assert parsed.status == "truncated"
    assert coords(parsed) == [(0.0, 1, 730, 615), (0.0, 2, 120, 400), (0.5, 1, 720, 600)]
    assert parsed.unparsed == "0.5 2 13"


def test_unclosed_tag_without_max_tokens_is_partial() -> None:
    parsed = parse_answer('<tracks coords="0.0 1 730 615 2 120 400;0.5 1 720 600 2 13')
    assert parsed.status == "partial"
    assert len(parsed.points) == 3


def test_last_number_of_a_cut_value_is_not_trusted() -> None:
    # "100" may be the start of "1000"; the model stopped before writing a delimiter.
    parsed = parse_answer('<points coords="1.0 1 250 100', hit_max_new_tokens=True)
    assert parsed.points == ()
    assert parsed.unparsed == "1.0 1 250 100"
    assert parsed.status == "truncated"


def test_cut_value_ending_in_a_delimiter_is_complete() -> None:
    parsed = parse_answer('<points coords="1.0 1 250 100 ', hit_max_new_tokens=True)
    assert coords(parsed) == [(1.0, 1, 250, 100)]
    assert parsed.unparsed == ""
    parsed = parse_answer('<tracks coords="1.0 1 250 100;', hit_max_new_tokens=True)
    assert coords(parsed) == [(1.0, 1, 250, 100)]


def test_truncated_in_label() -> None:
    parsed = parse_answer('Look: <points coords="8.5 1 255 301 2 610 288">pengu')
    assert parsed.status == "partial"
    assert len(parsed.points) == 2
    assert parsed.points[0].label == "pengu"
    assert parsed.text == "Look: pengu"
    assert parse_answer('<points coords="8.5 1 255 301">pengu', hit_max_new_tokens=True).status == "truncated"


@pytest.mark.parametrize("answer", ["<points", "<points coo", '<tracks coords="', '<tracks coords="0.'])
def test_truncated_opening_tag(answer: str) -> None:
    parsed = parse_answer(answer, hit_max_new_tokens=True)
    assert parsed.status == "truncated"
    assert parsed.points == ()
    partial = parse_answer(answer)
    assert partial.status in ("invalid", "partial")


def test_truncated_second_tag_keeps_the_first() -> None:
    answer = f'{FORMAT_POINTS} and <tracks coords="0.0 1 730 615 2 120 4'
    parsed = parse_answer(answer, hit_max_new_tokens=True)
    assert parsed.status == "truncated"
    assert coords(parsed) == [(8.5, 1, 255, 301), (8.5, 2, 610, 288), (0.0, 1, 730, 615)]
    assert parsed.unparsed == "0.0 2 120 4"


def test_hit_max_new_tokens_always_truncated() -> None:
    assert parse_answer(FORMAT_POINTS, hit_max_new_tokens=True).status == "truncated"
    assert parse_answer("A long caption that", hit_max_new_tokens=True).status == "truncated"


def test_unclosed_tag_followed_by_another_tag() -> None:
    parsed = parse_answer('<points coords="1 1 100 100">cats <points coords="2 1 200 200">dogs</points>')
    assert parsed.status == "partial"
    assert [(p.label, p.tag_index) for p in parsed.points] == [("cats", 0), ("dogs", 1)]


# --- attribute and tag variants ------------------------------------------------------------------


def test_single_quotes_and_extra_attributes() -> None:
    parsed = parse_answer(
        "<points alt='penguins' coords='8.5 1 255 301' data-x=\"1\" foo=bar>penguins</points>"
    )
    assert parsed.status == "ok"
    assert coords(parsed) == [(8.5, 1, 255, 301)]


def test_other_attribute_named_like_coords_is_ignored() -> None:
    parsed = parse_answer('<points data-coords="9 9 9 9" coords="8.5 1 255 301">p</points>')
    assert coords(parsed) == [(8.5, 1, 255, 301)]


def test_self_closing_tag() -> None:
    parsed = parse_answer('Here <points coords="8.5 1 255 301"/> it is.')
    assert parsed.status == "ok"
    assert coords(parsed) == [(8.5, 1, 255, 301)]
    assert parsed.points[0].label == ""


def test_tag_without_coords() -> None:
    parsed = parse_answer("<points>cats</points>")
    assert parsed.status == "invalid"
    assert parsed.unparsed == "<points>"
    assert parsed.text == "cats"


def test_uppercase_and_mismatched_closing_tag() -> None:
    parsed = parse_answer('<POINTS coords="8.5 1 255 301">p</tracks>')
    assert parsed.status == "ok"
    assert parsed.points[0].kind == "points"


def test_stray_closing_tag() -> None:
    parsed = parse_answer(f"{FORMAT_POINTS}</points>")
    assert parsed.status == "partial"
    assert parsed.unparsed == "</points>"
    assert parsed.text == "penguins"


def test_similar_tag_names_are_text() -> None:
    parsed = parse_answer('<point x="10" y="20">a</point> <pointsx>')
    assert parsed.status == "no_tags"


# --- format_points -------------------------------------------------------------------------------


@dataclass(frozen=True)
class P:
    t: float
    object_id: int | None
    x: float
    y: float


def test_format_points_rejects_ambiguous_idless_groups() -> None:
    with pytest.raises(ValueError, match="triples"):
        format_points([P(1.0, None, 1, 2), P(1.0, None, 3, 4), P(1.0, None, 5, 6)], "points", "x")
    with pytest.raises(ValueError, match="mixes"):
        format_points([P(1.0, None, 1, 2), P(1.0, 3, 3, 4)], "points", "x")
    with pytest.raises(ValueError, match="finite"):
        format_points([P(float("nan"), 1, 1, 2)], "points", "x")


def test_format_points_accepts_any_point_like() -> None:
    assert (
        format_points([P(0.5, 3, 7, 1000)], "tracks", "ball")
        == '<tracks coords="0.5 3 007 1000">ball</tracks>'
    )
    assert format_points([], "points", "none") == '<points coords="">none</points>'


# --- properties ----------------------------------------------------------------------------------

coordinate = st.one_of(
    st.integers(min_value=0, max_value=1000).map(float),
    st.floats(min_value=0, max_value=1000, allow_nan=False),
)
frame_time = st.floats(min_value=0, max_value=1e6, allow_nan=False)
label = st.text(st.characters(blacklist_characters="<>"), max_size=20).map(str.strip)


@st.composite
def frames_with_ids(draw: st.DrawFn) -> list[P]:
    times = draw(st.lists(frame_time, min_size=0, max_size=8, unique=True))
    points: list[P] = []
    for t in times:
        ids = draw(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=6, unique=True))
        points += [P(t, oid, draw(coordinate), draw(coordinate)) for oid in ids]
    return points


@st.composite
def frames_without_ids(draw: st.DrawFn) -> list[P]:
    times = draw(st.lists(frame_time, min_size=1, max_size=8, unique=True))
    points: list[P] = []
    for t in times:
        count = draw(st.integers(min_value=1, max_value=8).filter(lambda n: n % 3 != 0))
        points += [P(t, None, draw(coordinate), draw(coordinate)) for _ in range(count)]
    return points


@given(frames_with_ids(), st.sampled_from(["points", "tracks"]), label)
def test_format_then_parse_round_trips(points: list[P], kind: str, name: str) -> None:
    assert kind in ("points", "tracks")
    answer = format_points(points, kind, name)  # type: ignore[arg-type]
    parsed = parse_answer(f"Answer: {answer} end")
    assert parsed.status == "ok"
    assert parsed.unparsed == ""
    assert [P(p.t, p.object_id, p.x, p.y) for p in parsed.points] == points
    assert all(p.label == name and p.kind == kind for p in parsed.points)


@given(frames_without_ids(), label)
def test_format_then_parse_round_trips_without_ids(points: list[P], name: str) -> None:
    parsed = parse_answer(format_points(points, "points", name))
    assert parsed.status == "ok"
    assert [P(p.t, p.object_id, p.x, p.y) for p in parsed.points] == points


def check_invariants(parsed: ParsedAnswer, hit: bool) -> None:
    assert parsed.status in ("ok", "partial", "no_tags", "truncated", "invalid")
    assert (parsed.status == "truncated") == hit
    assert "parser error" not in parsed.unparsed  # robust by construction, not by the last-resort guard
    for p in parsed.points:
        assert 0 <= p.x <= 1000 and 0 <= p.y <= 1000 and p.t >= 0
        assert p.object_id is None or p.object_id >= 0
    if parsed.status == "ok":
        assert parsed.unparsed == ""
    if parsed.status == "no_tags":
        assert parsed.points == ()


@settings(max_examples=500)
@given(st.text(), st.booleans())
def test_never_raises_on_arbitrary_text(answer: str, hit: bool) -> None:
    check_invariants(parse_answer(answer, hit_max_new_tokens=hit), hit)


tag_soup = st.lists(
    st.sampled_from(
        [
            "<points", "<tracks", "</points>", "</tracks>", " coords=", "coords='", '"', "'", ">", "/>", "<",
            " ", ";", "\t", ",", ":", ".", "-", "8.5", "0", "1", "12", "255", "1000", "1001", "9999", "abc",
            "three", " 7 ", "\n", "alt=", "=",
        ]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@settings(max_examples=1000)
@given(tag_soup, st.booleans())
def test_never_raises_on_tag_soup(answer: str, hit: bool) -> None:
    check_invariants(parse_answer(answer, hit_max_new_tokens=hit), hit)
