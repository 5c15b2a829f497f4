"""The README is a short front door and no page of the docs links to a file that is not there.

Relative links of README.md and docs/*.md must name an existing file or folder (the part before
a ``#`` anchor; anchors themselves are not checked); links in code blocks and code spans are not
links. README.md stays at most ``README_MAX_LINES`` lines: details belong to a docs/ page.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 170
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    """README.md and every page under docs/ (the generated science_check report included)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def link_targets(text: str) -> list[str]:
    """The targets of a markdown text's inline and reference links, outside code."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file part does not exist, as ``target`` strings."""
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / file_part).exists():
            broken.append(target)
    return broken


def test_link_checker_finds_links_and_ignores_code(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#there) [gone](missing.md) ![img](pic.png) [web](https://example.org/x.md)\n"
        "[anchor](#here) `[span](span.md)`\n```\n[fenced](fenced.md)\n```\n[ref]: ref_missing.md\n")
    assert link_targets(page.read_text()) == [
        "there.md#there", "missing.md", "pic.png", "https://example.org/x.md", "#here", "ref_missing.md"]
    assert broken_links(page) == ["missing.md", "pic.png", "ref_missing.md"]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing files"


def test_readme_is_a_short_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"
