"""Reading the documentation's commands: README.md and the pages under docs/ (MkDocs).

The walkthrough tests (test_cli_readme.py, test_data_readme.py, ...) run the commands the
pages show, as written; these helpers find them: a page's section by its heading, the bash
blocks in it, one command a line (a line ending in a backslash continues on the next).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"\s*(```+|~~~+)")


def page_path(page: str) -> Path:
    """``"README.md"`` is the repository's README; any other name is a page under docs/."""
    return REPO_ROOT / page if page == "README.md" else DOCS / page


def read_page(page: str) -> str:
    return page_path(page).read_text()


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, level, title)`` of each Markdown heading outside fenced blocks."""
    found, fence = [], None
    for index, line in enumerate(text.splitlines()):
        opening = _FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if fence is None:
                fence = marker
            elif marker.startswith(fence):
                fence = None
            continue
        heading = _HEADING.match(line) if fence is None else None
        if heading:
            found.append((index, len(heading.group(1)), heading.group(2)))
    return found


def doc_section(page: str, heading: str) -> str:
    """The text of ``page`` from the heading ``heading`` (e.g. ``"## Evaluation"``, hashes
    included) to the next heading of the same or a higher level, or the page's end."""
    text = read_page(page)
    lines = text.splitlines(keepends=True)
    marks = heading.split(maxsplit=1)
    level, title = len(marks[0]), marks[1]
    found = headings(text)
    starts = [i for i, (_, lvl, name) in enumerate(found) if lvl == level and name == title]
    if not starts:
        raise LookupError(f"no heading {heading!r} in {page_path(page)}")
    start = found[starts[0]][0]
    end = next((line for line, lvl, _ in found[starts[0] + 1:] if lvl <= level), len(lines))
    return "".join(lines[start:end])


def block_commands(text: str, language: str = "bash") -> list[str]:
    """The commands of the first ``language`` block in ``text``: one a line, a line ending in
    a backslash joined with the next, blank lines left out (comments are kept)."""
    block = re.search(rf"```{language}\n(.*?)```", text, re.S)
    if block is None:
        raise LookupError(f"no ```{language} block in the text given")
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def block_after(page: str, marker: str) -> list[str]:
    """The commands of the first bash block after the text ``marker`` in ``page``."""
    text = read_page(page)
    return block_commands(text[text.index(marker):])


def command_line(page: str, prefix: str) -> str:
    """The first line of ``page`` that starts with ``prefix`` (a one-line command)."""
    return next(line for line in read_page(page).splitlines() if line.startswith(prefix))
