"""Every relative link in README.md and docs/ resolves: its file exists, and its #fragment too.

A link is ``[text](target)`` or ``![alt](target)`` outside fenced code blocks and inline code.
Links with a scheme (``https:``, ``mailto:``) are not checked. A fragment into a Markdown file
must name one of its headings by GitHub's slug (lowercase; punctuation but ``-`` and ``_``
dropped; spaces as ``-``; a repeated heading gets ``-1``, ``-2``...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+).+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The numbered lines of ``text`` outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield number, line


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    for number, line in prose_lines(text):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(page: Path) -> list[str]:
    """What is wrong with each relative link of ``page``, one message per link."""
    problems = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target):
            continue
        path, _, fragment = target.partition("#")
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        dest = (page.parent / unquote(path)).resolve() if path else page
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            problems.append(f"{where}: no heading #{fragment} in {dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Apps, packages and droplets (`/v3`)", "apps-packages-and-droplets-v3"),
        ("Departures from the seeds and DESIGN.md", "departures-from-the-seeds-and-designmd"),
        (
            "Running services: pods, nodes and containers",
            "running-services-pods-nodes-and-containers",
        ),
        ("AMQP 1.0 events (build tags)", "amqp-10-events-build-tags"),
        ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
    ],
)
def test_slugs_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_links_outside_code_only() -> None:
    text = '[a](one.md) `[b](two.md)`\n```sh\n[c](three.md)\n```\n![d](four.png "t")\n'
    assert [target for _, target in links(text)] == ["one.md", "four.png"]


def test_the_pages_exist() -> None:
    assert REPO / "README.md" in PAGES
    assert len(PAGES) > 1, "docs/ holds no Markdown pages"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken(page) == []
