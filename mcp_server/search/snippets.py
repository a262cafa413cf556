"""Snippets: the window of a hit's text that shows the most of the query, words in [brackets].

The words come from `terms.query_words`; a long word also matches by a
stem-like prefix, roughly as FTS5's porter tokenizer matched it, so a hit
found through a stem (refuelling ~ refuelled) still shows where.

Which window: the one holding the most DISTINCT query words (a window with
"deploy" and "timeout" beats the first lone "deploy"); among equals, the
earliest, or, when the caller knows where the match is (`around`: a vector
chunk's start, a passage's offset), the nearest to it; with no query word in
the text, the window starts at `around`. (Keeping to the windows within a
chunk's length of `around`, even when one elsewhere has more words, showed
the answer's key words less often on bench/answer_size.py.) The window is
then moved to use its full width (never shorter because the match sits near
the end) and its edges are pulled back to whole words.

Terminal noise never reaches a snippet: ANSI escape sequences (CSI, OSC, the
two-character ones, a stray ESC) and other control characters are removed
before the window is chosen (`clean_text`); the stored text stays raw.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = ["SNIPPET_CHARS", "clean_text", "make_snippet", "word_pattern"]

SNIPPET_CHARS = 450
# At most this many matches of one word are weighed (a huge output full of it).
_MAX_MATCHES = 4000
# An edge word is dropped when cutting it to whole words costs at most this much.
_EDGE = 16

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), other two-character
# escapes, a stray ESC; then C0 controls but tab/newline/CR, DEL, and C1 controls.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
)


def clean_text(text: str) -> str:
    """`text` without ANSI escape sequences and control characters (tab, newline, CR kept)."""
    return _CONTROL.sub("", text)


def _literal(word: str) -> str | None:
    """What a query word is looked for as: its stem-like prefix when long, None when one letter."""
    if len(word) < 2 and word.isascii():
        return None  # the "t" of didn't would match inside every word
    if len(word) >= 6 and word.isascii():
        return word[: max(5, len(word) - 3)]
    return word


@functools.lru_cache(maxsize=64)
def _compiled(words: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for w in sorted(words, key=len, reverse=True):
        lit = _literal(w)
        if lit is not None:
            parts.append(re.escape(lit) + (r"\w*" if lit != w else ""))
    return re.compile("|".join(parts) or "(?!)", re.IGNORECASE)


def word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Matches the query words in text as FTS5 with porter does, roughly: a long
    word also matches by its stem-like prefix (refuelling ~ refuelled); a
    one-letter ASCII word matches nothing."""
    return _compiled(tuple(words))


_TAIL = re.compile(r"\w*")
_SPACE = re.compile(r"\s")
_LAST_SPACE = re.compile(r"\s(?=\S*$)")


def _matches(text: str, words: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, word index) of every query word in `text`, by start, none overlapping.

    `str.find` on the lowercased text: ten times faster than the pattern's
    `finditer` on long tool outputs. A text whose lowercase changes length
    (a rare Unicode case) goes through the pattern, one word at a time.
    """
    low = text.lower()
    same = len(low) == len(text)
    found: list[tuple[int, int, int]] = []
    for i, word in enumerate(words):
        lit = _literal(word)
        if lit is None:
            continue
        lit = lit.lower()
        if not same:
            found.extend((m.start(), m.end(), i) for m in _compiled((word,)).finditer(text))
            continue
        count = 0
        k = low.find(lit)
        while k >= 0 and count < _MAX_MATCHES:
            end = k + len(lit)
            tail = _TAIL.match(text, end) if lit != word else None
            if tail is not None:
                end = tail.end()
            found.append((k, end, i))
            count += 1
            k = low.find(lit, end)
    found.sort(key=lambda m: (m[0], -m[1]))
    out: list[tuple[int, int, int]] = []
    for m in found:
        if not out or m[0] >= out[-1][1]:
            out.append(m)
    return out


def _best_start(matches: list[tuple[int, int, int]], width: int, near: int) -> int | None:
    """Start of the window over the cluster of matches (spanning at most `width`)
    with the most distinct words; among equals, the one nearest to `near`. None
    when there is no match. Two pointers over the matches (by start): O(matches).
    """
    best: tuple[int, int] | None = None  # (distinct words, -distance to near)
    best_start = best_end = 0
    counts: dict[int, int] = {}
    j = 0
    for i, (start, _, word) in enumerate(matches):
        j = max(j, i)
        while j < len(matches) and matches[j][1] - start <= width:
            counts[matches[j][2]] = counts.get(matches[j][2], 0) + 1
            j += 1
        if j > i:
            score = (len(counts), -abs(start - near))
            if best is None or score > best:
                best, best_start, best_end = score, start, matches[j - 1][1]
            counts[word] -= 1
            if not counts[word]:
                del counts[word]
    if best is None:
        return None
    # The cluster sits a third of the spare room from the window's left edge.
    return best_start - (width - (best_end - best_start)) // 3


def _window(text: str, words: Sequence[str], around: int | None, width: int) -> int:
    """Where the snippet window starts in `text` (already clean)."""
    # 4/5 of the width at most for the cluster: room for context around it.
    start = _best_start(_matches(text, words), width * 4 // 5, around or 0)
    if start is None:
        start = 0 if around is None else around - width // 6
    return max(0, min(start, len(text) - width))


def make_snippet(text: str, words: Sequence[str], around: int | None = None,
                 width: int = SNIPPET_CHARS) -> str:
    """The window of `text` with the most distinct query words (near `around`, when
    given), words in [brackets], whitespace collapsed, control characters removed."""
    if around is not None and around > 0 and _CONTROL.search(text, 0, around) is not None:
        around = len(clean_text(text[:around]))
    text = clean_text(text)
    pattern = word_pattern(words) if words else None
    start = _window(text, words, around, width)
    end = min(len(text), start + width)
    if start > 0:
        space = _SPACE.search(text, start, start + _EDGE)
        if space is not None:
            start = space.end()
    if end < len(text):
        space = _LAST_SPACE.search(text, max(start, end - _EDGE), end)
        if space is not None:
            end = space.start()
    piece = text[start:end]
    if pattern is not None:
        piece = pattern.sub(lambda m: f"[{m.group(0)}]", piece)
    piece = " ".join(piece.split())
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")
