"""Query terms: user text made safe for FTS5 MATCH, and the words to highlight.

User text is never passed to MATCH as is: it is split into words and phrases,
each quoted (an embedded `"` doubled), so `foo-bar`, `a.b()`, `"`, `*`,
`NEAR`, `AND` or parentheses are searched as text and never raise. A trailing
`*` on a word is kept as a prefix query. The keyword ranker (keyword.py)
requires all terms first (AND), then fills with an OR of the non-stopwords.

Chinese, Japanese and Korean have no spaces: a run of such characters is cut
into overlapping pairs. Which characters count as CJK is the indexer's own
class (`ingest.db.CJK_CHAR`), so a query splits exactly what the index spaced out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.db import CJK_CHAR, fts_text

__all__ = [
    "FtsTerm", "STOPWORDS", "build_fts_terms", "build_fts_queries", "cjk_terms", "has_cjk",
    "query_words",
]

# A quoted phrase, or a run of word characters joined by . - _ / : (foo-bar,
# a.b, path/to/x), optionally followed by * (prefix).
_TOKEN = re.compile(r'"([^"]*)"?|([\w][\w.\-/:@#+]*\w|\w)(\*?)', re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset(
    """a an and are as at be but by did do does for from had has have how i if in into is it
    its me my of on or our so that the their them then there these they this to was we were
    what when where which who whom why will with would you your can could should about after
    before done get got his her he she him any all been being very just also than too
    """.split()
)


def has_cjk(text: str) -> bool:
    """True when `text` holds a character the index spaces out as CJK."""
    return CJK_CHAR.search(text) is not None


def cjk_terms(word: str) -> list[str]:
    """Bigrams of the CJK characters of `word`, other characters kept as words."""
    out: list[str] = []
    run = ""
    for ch in word + " ":
        if CJK_CHAR.match(ch):
            run += ch
            continue
        if run:
            out.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
            run = ""
        if ch.strip():
            if out and not CJK_CHAR.match(out[-1][-1:]) and out[-1].isalnum():
                out[-1] += ch
            else:
                out.append(ch)
    return out


def _quote(words: list[str]) -> str:
    text = fts_text(" ".join(words)).strip()
    return '"' + text.replace('"', '""') + '"'


@dataclass(frozen=True)
class FtsTerm:
    """One term of a user query, quoted for MATCH, with the words it is made of."""

    fts: str
    words: tuple[str, ...]
    stop: bool


def build_fts_terms(query: str) -> list[FtsTerm]:
    """The query's terms, in order, deduplicated; see the module docstring."""
    terms: list[FtsTerm] = []
    for m in _TOKEN.finditer(query):
        phrase, word, star = m.group(1), m.group(2), m.group(3)
        source = phrase if phrase is not None else word
        words = _WORD.findall(source or "")
        if not words:
            continue
        if phrase is None and len(words) == 1 and has_cjk(words[0]):
            # Chinese/Japanese/Korean have no spaces: a run of characters is a
            # sentence, not a word. Overlapping character pairs match the words
            # inside it wherever they appear.
            for gram in cjk_terms(words[0]):
                terms.append(FtsTerm(_quote([gram]), (gram.lower(),), False))
            continue
        fts = _quote(words)
        if star and phrase is None:
            fts += " *"
        stop = len(words) == 1 and words[0].lower() in STOPWORDS
        terms.append(FtsTerm(fts, tuple(w.lower() for w in words), stop))
    unique: dict[str, FtsTerm] = {}
    for t in terms:
        unique.setdefault(t.fts, t)
    return list(unique.values())


def build_fts_queries(query: str) -> tuple[str | None, str | None]:
    """(AND query, OR query) for FTS5 MATCH from free text; None when nothing searchable."""
    terms = build_fts_terms(query)
    if not terms:
        return None, None
    and_query = " ".join(t.fts for t in terms)
    content = [t.fts for t in terms if not t.stop] or [t.fts for t in terms]
    or_query = " OR ".join(content) if len(terms) > 1 else None
    return and_query, or_query


def query_words(query: str) -> list[str]:
    """The non-stopword words of a query, lowercased, for highlighting snippets."""
    words: list[str] = []
    for w in _WORD.findall(query):
        words.extend(cjk_terms(w) if has_cjk(w) else [w])
    return [w for w in dict.fromkeys(w.lower() for w in words) if w not in STOPWORDS]
