"""The tagged code blocks of a Markdown page, so that a test runs what the page shows.

A fenced block's info string is ``LANG`` followed by words: ``key=value``
attributes and bare flags, e.g. ```` ```python recipe=django file=/x/settings.py append ````.
Renderers show only ``LANG``; the rest tells the test what to do with the block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, tags, text and where it starts."""

    lang: str
    tags: dict[str, str]  # key=value; a bare flag maps to ""
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def recipes(self) -> frozenset[str]:
        """Names in ``recipe=a,b``: the tests that use this block."""
        value = self.tags.get("recipe", "")
        return frozenset(name for name in value.split(",") if name)

    @property
    def file(self) -> str | None:
        """``file=PATH``: the block is that file's content (or a part of it)."""
        return self.tags.get("file")

    def has(self, flag: str) -> bool:
        return flag in self.tags

    def __str__(self) -> str:
        return "the ```%s block at line %d" % (" ".join([self.lang, *self._words()]), self.line)

    def _words(self) -> list[str]:
        return [k if not v else "%s=%s" % (k, v) for k, v in self.tags.items()]


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order; an unclosed fence is an error."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, words = match["fence"], match["info"].split()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].startswith(fence[0] * len(fence)) and not lines[i].strip(fence[0]).strip()
        ):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError("%s:%d: code block never closed" % (path, start + 1))
        tags = dict(word.partition("=")[::2] for word in words[1:])
        blocks.append(Block(words[0] if words else "", tags, "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def select(blocks: list[Block], recipe: str | None = None, file: str | None = None) -> list[Block]:
    """The blocks of ``recipe`` and/or for ``file``, in document order."""
    return [
        b
        for b in blocks
        if (recipe is None or recipe in b.recipes) and (file is None or b.file == file)
    ]


def only(blocks: list[Block], what: str) -> Block:
    """The single block in ``blocks``; AssertionError naming ``what`` otherwise."""
    assert len(blocks) == 1, "expected one block for %s, found %d: %s" % (
        what,
        len(blocks),
        ", ".join(map(str, blocks)),
    )
    return blocks[0]
