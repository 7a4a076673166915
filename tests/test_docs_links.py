"""The README and docs/ hold together: every relative link resolves, and the README stays a short front page
that links every docs page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 250

# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" is ignored).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~)")


def _pages() -> list[Path]:
    # cluster/SIZING.md is linked from the docs as one of their pages.
    return [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "cluster" / "SIZING.md"]


def _prose(text: str, *, inline_code: bool = False) -> str:
    """The text outside fenced code blocks, and outside inline code unless `inline_code` (links in code are
    examples, not links; a heading's anchor keeps its code's text)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line if inline_code else re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """The link targets of a markdown text."""
    return _LINK.findall(_prose(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    heads = [m.group(1) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(text, inline_code=True), re.M)]
    return {_slug(h) for h in heads}


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file (or heading anchor, in a markdown file) does not exist."""
    bad = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http(s)://, mailto: ...: not a file of this repository
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        shown = dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest
        if not dest.exists():
            bad.append(f"{target} (no {shown})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target} (no heading #{anchor} in {shown})")
    return bad


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_is_short_and_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < README_MAX_LINES
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(readme) if not re.match(r"^[a-z]+:", t)}
    pages = sorted(DOCS.glob("*.md"))
    assert len(pages) > 1
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert missing == []


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok too](there.md#a-heading-with-code) [web](https://example.org/x.md)\n"
        "[gone](missing.md) [bad anchor](there.md#nowhere) ![pic](missing.png)\n"
        "```\n[in code](also-missing.md)\n```\n`[inline](inline-missing.md)`\n"
    )
    bad = broken_links(page)
    assert [b.split()[0] for b in bad] == ["missing.md", "there.md#nowhere", "missing.png"]
