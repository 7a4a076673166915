"""The mutation-testing script's machinery (the full run, `python -m tests.mutations`, is slow and not part
of CI): every mutation still applies to the code, names tests that exist, and the script tells a caught
mutation from a survived one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutations import MUTATIONS, REPO, Mutation, StaleMutation, apply, run_mutation


def test_every_mutation_applies_once_and_names_existing_tests(tmp_path: Path) -> None:
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    for m in MUTATIONS:
        assert m.before != m.after and m.tests, m.name
        target = tmp_path / m.name / m.path
        target.parent.mkdir(parents=True)
        target.write_text((REPO / m.path).read_text())
        apply(m, tmp_path / m.name)  # raises StaleMutation unless `before` occurs exactly once
        assert m.after in target.read_text(), m.name
        for test in m.tests:
            file, _, name = test.partition("::")
            assert (REPO / file).is_file(), (m.name, test)
            assert not name or f"def {name}(" in (REPO / file).read_text(), (m.name, test)


def test_a_stale_mutation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("a = 1\na = 1\n")
    with pytest.raises(StaleMutation, match="2 time"):
        apply(Mutation("m", "r", "x.py", "a = 1", "a = 2", ("t",)), tmp_path)


def test_the_script_tells_caught_from_survived(tmp_path: Path) -> None:
    fast_test = "tests/results/test_collect.py::test_object_keys_rule"
    counting = next(m for m in MUTATIONS if m.name == "id-less-points-one-object")
    caught = run_mutation(Mutation(counting.name, counting.rule, counting.path, counting.before, counting.after,
                                   (fast_test,)), tmp_path)
    assert caught.verdict == "caught", caught.output
    harmless = Mutation("comment-only", "none", "pipeline/results/collect.py", "def object_keys(",
                        "# a comment changes nothing\ndef object_keys(", (fast_test,))
    survived = run_mutation(harmless, tmp_path)
    assert survived.verdict == "survived", survived.output
    assert not any(tmp_path.iterdir())  # each copy is removed
