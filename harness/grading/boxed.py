"""LaTeX boxes and braces: where a ``\\boxed{...}`` / ``\\fbox{...}`` is and what it holds (nested and escaped braces
included)."""

from __future__ import annotations

import re
from collections.abc import Iterator

BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def match_braces(text: str, start: int) -> int | None:
    """Index just past the group opened by ``text[start] == "{"``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are skipped, so ``\\boxed{\\{1,2\\}}`` works.
    """
    for i, ch, depth in walk(text, start):
        if ch == "}" and depth == 0:
            return i + 1
    return None


def walk(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, brace depth after it) from ``start`` on, skipping escaped characters (``\\{``)."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        depth += (ch == "{") - (ch == "}")
        yield i, ch, depth
        i += 1


def box_content(text: str, cmd_end: int) -> str | None:
    """Content of a ``\\boxed`` whose command name ends at ``cmd_end``."""
    i = cmd_end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = match_braces(text, i)
        if end is None:
            return None
        return text[i + 1 : end - 1].strip()
    if i > cmd_end:  # ``\boxed 5`` form: a single token up to whitespace or ``$``
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0).rstrip(".") if m else None
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (None if absent)."""
    for m in reversed(list(BOX_RE.finditer(text))):
        content = box_content(text, m.end())
        if content:
            return content
    return None
