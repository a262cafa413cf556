"""Snippets: a window of a hit's text around the match, query words in [brackets].

The words come from `terms.query_words`; a long word also matches by a
stem-like prefix, roughly as FTS5's porter tokenizer matched it, so a hit
found through a stem (refuelling ~ refuelled) still shows where.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["AROUND_CHARS", "SNIPPET_CHARS", "make_snippet", "word_pattern"]

SNIPPET_CHARS = 240
AROUND_CHARS = 1000  # a passage (ingest/indexing.py) or a vector chunk is about this long


def word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Matches the query words in text as FTS5 with porter does, roughly: a long
    word also matches by its stem-like prefix (refuelling ~ refuelled)."""
    parts = []
    for w in sorted(words, key=len, reverse=True):
        if len(w) >= 6 and w.isascii():
            parts.append(re.escape(w[: max(5, len(w) - 3)]) + r"\w*")
        else:
            parts.append(re.escape(w))
    return re.compile("|".join(parts), re.IGNORECASE)


def make_snippet(text: str, words: Sequence[str], around: int | None = None,
                 width: int = SNIPPET_CHARS) -> str:
    """A window of `text` around the first query word, words in [brackets].

    `around` is where the match was found (a keyword passage's or a vector
    chunk's start): the first query word within AROUND_CHARS after it, else
    the first one anywhere, else `around` itself."""
    pattern = word_pattern(words) if words else None
    center = around
    if pattern is not None:
        first = None
        if around is not None:
            first = pattern.search(text, around, around + AROUND_CHARS)
        if first is None:
            first = pattern.search(text)
        if first is not None:
            center = first.start()
    if center is None:
        center = 0
    start = max(0, center - width // 3)
    end = min(len(text), start + width)
    piece = text[start:end]
    if pattern is not None:
        piece = pattern.sub(lambda m: f"[{m.group(0)}]", piece)
    piece = " ".join(piece.split())
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")
