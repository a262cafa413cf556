"""Searching what was ingested.

Keyword search runs on FTS5 with BM25. User text is never passed to MATCH as
is: it is split into words and phrases, each quoted (an embedded `"` doubled),
so `foo-bar`, `a.b()`, `"`, `*`, `NEAR`, `AND` or parentheses are searched as
text and never raise a syntax error. A trailing `*` on a word is kept as a
prefix query, since people type it on purpose. All words are required first
(AND); if that finds fewer hits than asked for, the rest are filled from an OR
of the non-stopwords, still ranked by BM25.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import aiosqlite

from ingest.db import fts_text
from ingest.errors import InvalidQuery

__all__ = ["Hit", "SearchResult", "build_fts_queries", "keyword_search"]

logger = logging.getLogger(__name__)

# A quoted phrase, or a run of word characters joined by . - _ / : (foo-bar,
# a.b, path/to/x), optionally followed by * (prefix).
_TOKEN = re.compile(r'"([^"]*)"?|([\w][\w.\-/:@#+]*\w|\w)(\*?)', re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)

_STOPWORDS = frozenset(
    """a an and are as at be but by did do does for from had has have how i if in into is it
    its me my of on or our so that the their them then there these they this to was we were
    what when where which who why will with would you your can could should about after
    before did does done get got""".split()
)


def _quote(words: list[str]) -> str:
    text = fts_text(" ".join(words)).strip()
    return '"' + text.replace('"', '""') + '"'


def build_fts_queries(query: str) -> tuple[str | None, str | None]:
    """(AND query, OR query) for FTS5 MATCH from free text; None when nothing searchable."""
    terms: list[tuple[str, bool]] = []  # (fts term, is_stopword)
    for m in _TOKEN.finditer(query):
        phrase, word, star = m.group(1), m.group(2), m.group(3)
        source = phrase if phrase is not None else word
        words = _WORD.findall(source or "")
        if not words:
            continue
        term = _quote(words)
        if star and phrase is None:
            term += " *"
        stop = len(words) == 1 and words[0].lower() in _STOPWORDS
        terms.append((term, stop))
    if not terms:
        return None, None
    unique = list(dict.fromkeys(t for t, _ in terms))
    and_query = " ".join(unique)
    content = list(dict.fromkeys(t for t, stop in terms if not stop)) or unique
    or_query = " OR ".join(content) if len(content) > 1 or len(unique) > 1 else None
    return and_query, or_query


@dataclass
class Hit:
    id: int
    uuid: str | None
    session_id: str | None
    project: str | None
    kind: str
    timestamp: str | None
    snippet: str
    tool_name: str | None
    agent_id: str | None
    score: float
    ranker: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    hits: list[Hit]
    query: str
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "mode": self.mode, "hits": [h.to_dict() for h in self.hits]}


_SELECT = """
SELECT r.id, r.uuid, r.session_id, COALESCE(s.cwd, r.cwd, s.project_dir), r.kind, r.ts,
       snippet(records_fts, 0, '[', ']', '…', 24), r.tool_name, r.agent_id,
       bm25(records_fts), r.line_key, r.part
FROM records_fts
JOIN records r ON r.id = records_fts.rowid
LEFT JOIN sessions s ON s.session_id = r.session_id
WHERE records_fts MATCH ? {filters}
ORDER BY bm25(records_fts)
LIMIT ?
"""


async def keyword_search(
    conn: aiosqlite.Connection,
    query: str,
    *,
    limit: int = 10,
    kinds: list[str] | None = None,
    session_id: str | None = None,
    project: str | None = None,
) -> SearchResult:
    """BM25 keyword search; see the module docstring. Raises InvalidQuery."""
    if limit < 1 or limit > 1000:
        raise InvalidQuery("limit must be between 1 and 1000")
    and_q, or_q = build_fts_queries(query)
    if and_q is None:
        return SearchResult(hits=[], query=query, mode="keyword")
    filters, params = _filters(kinds, session_id, project)
    sql = _SELECT.format(filters=filters)
    hits: list[Hit] = []
    seen: set[tuple[Any, ...]] = set()
    for fts_query in (and_q, or_q):
        if fts_query is None or len(hits) >= limit:
            continue
        # Over-fetch: the same line replayed in two files (a /btw side
        # question) is shown once.
        rows = await conn.execute_fetchall(sql, (fts_query, *params, limit * 2 + 10))
        for row in rows:
            key = (row[1] or row[0], row[11], row[6])
            if row[0] in {h.id for h in hits} or key in seen:
                continue
            seen.add(key)
            hits.append(Hit(
                id=row[0], uuid=row[1], session_id=row[2], project=row[3], kind=row[4],
                timestamp=row[5], snippet=row[6], tool_name=row[7], agent_id=row[8],
                score=round(-float(row[9]), 4), ranker="bm25",
            ))
            if len(hits) >= limit:
                break
    return SearchResult(hits=hits, query=query, mode="keyword")


def _filters(kinds: list[str] | None, session_id: str | None,
             project: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if kinds:
        clauses.append(f"r.kind IN ({', '.join('?' for _ in kinds)})")
        params.extend(kinds)
    if session_id:
        clauses.append("r.session_id = ?")
        params.append(session_id)
    if project and project != "all":
        clauses.append("(s.project_dir = ? OR s.cwd = ? OR r.cwd = ? OR s.cwd LIKE ? ESCAPE '\\')")
        like = project.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        params.extend([project, project.rstrip("/"), project.rstrip("/"), like])
    return "".join(" AND " + c for c in clauses), params
