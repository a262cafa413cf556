"""The keyword ranker: FTS5 BM25 over records and passages, all terms first, then the rarest.

All terms of the query are required first (AND); if that finds too few, an OR
of the non-stopwords fills the list, still ranked by BM25. The OR query is
pruned to its rarest terms on a large corpus (`or_query`), so a few common
words do not make it score much of the database. Query terms come from
terms.py; filters from filters.py.

A long record is also indexed as overlapping passages (`passages_fts`,
migration m007): one sentence of a 10,000-character summary scores as a short
record would instead of being buried by BM25's length normalisation. A record
scores by the better of its own bm25 and its best passage's, and the start of
that passage goes to the snippet.
"""

from __future__ import annotations

import itertools

import aiosqlite

from ingest.db import fts_text
from ingest.indexing import PASSAGE_ROWID

from .filters import SearchFilters
from .terms import FtsTerm, build_fts_terms

__all__ = [
    "OR_MAX_DOC_SHARE", "OR_MAX_POSTINGS", "OR_MAX_TERMS", "OR_PRUNE_FROM", "PASSAGE_OR_POSTINGS",
    "PASSAGE_ROWS", "PASSAGE_WEIGHT", "doc_counts", "keyword_ranks", "or_query",
]

# bm25 weighs a record's own words 1 and those of the record before it
# (the `context` column, migration m005) Fusion.context. Without filters
# the ranking stays inside the FTS table (_KEYWORD_FTS_SQL): joining records
# first looked up every matching row before the sort, 2.5-3x the time.
_KEYWORD_FTS_SQL = """
SELECT rowid, bm25(records_fts, 1.0, {context})
FROM records_fts
WHERE records_fts MATCH ?
ORDER BY bm25(records_fts, 1.0, {context})
LIMIT ?
"""
_KEYWORD_SQL = """
SELECT r.id, bm25(records_fts, 1.0, {context})
FROM records_fts
JOIN records r ON r.id = records_fts.rowid
LEFT JOIN sources src ON src.id = r.source_id
WHERE records_fts MATCH ? {filters}
ORDER BY bm25(records_fts, 1.0, {context})
LIMIT ?
"""

# Passages of long records (migration m007): rowid = record id * PASSAGE_ROWID
# + the passage's start. They have no context column: a column filter
# `text : (...)` means the same in both tables.
_PASSAGE_FTS_SQL = """
SELECT rowid, bm25(passages_fts)
FROM passages_fts
WHERE passages_fts MATCH ?
ORDER BY bm25(passages_fts)
LIMIT ?
"""
_PASSAGE_SQL = """
SELECT passages_fts.rowid, bm25(passages_fts)
FROM passages_fts
JOIN records r ON r.id = passages_fts.rowid / {rowid}
LEFT JOIN sources src ON src.id = r.source_id
WHERE passages_fts MATCH ? {filters}
ORDER BY bm25(passages_fts)
LIMIT ?
"""
# A record scores max(its bm25, PASSAGE_WEIGHT x its best passage's bm25);
# PASSAGE_ROWS x n passages are read (a record has several). On a large
# corpus (OR_PRUNE_FROM) the passages' OR query keeps the rarest of the OR
# query's terms while their records (doc_counts) sum to at most
# PASSAGE_OR_POSTINGS (always the rarest one). Passages hold 1.4x the
# postings of records, spread over 2.3x the documents: the whole OR query over
# them doubled the keyword ranker's time at 100k records (p50 37 -> 77 ms,
# bench/search_scale.py's corpus); the passages' OR query alone takes 13 ms
# with a budget of 10,000 (20,000: 24 ms, 40,000: 38 ms). A share of records per term or
# a cap on terms instead cost the v1 questions all of the passages' gain; the
# budget scaled to their 3k records (315) kept hit@10 (80.0) and lost MRR
# (.467 against .506 unpruned, .473 without passages).
PASSAGE_WEIGHT = 1.0
PASSAGE_ROWS = 3
PASSAGE_OR_POSTINGS = 10_000

# The OR query scores every record holding any of its terms, about 0.6 us per
# posting: a few common words would make it score much of the corpus (0.6 s at
# 1M records). It keeps the rarest terms, at most OR_MAX_TERMS, none found in
# more than OR_MAX_DOC_SHARE of the records, and stops adding terms before
# their documents sum past OR_MAX_POSTINGS (bench/keyword_scale.py: a share
# threshold alone lets the work grow with the corpus; a posting budget only
# trims the worst queries, and never below 100k records). Counts are of the
# text column; the context column adds about 0.7x as many postings.
OR_MAX_DOC_SHARE = 0.2
OR_MAX_TERMS = 12
OR_MAX_POSTINGS = 150_000
OR_PRUNE_FROM = 20_000  # records; below this the OR query is cheap as it is

_STEM_BATCH = itertools.count(1)


async def doc_counts(conn: aiosqlite.Connection, terms: list[FtsTerm]) -> dict[str, int]:
    """Records whose text holds each term (its rarest word), keyed by the term's MATCH text.

    The words are run through the index's own tokenizer (a temp FTS5 table
    and its vocabulary) to get the exact stems the index holds: guessing a
    stem as a prefix fails for use/us, only/onli, key/kei, library/librari.
    Rows are numbered per call so concurrent searches on one connection do
    not read each other's.
    """
    await conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.deja_stems USING fts5(t, "
        "tokenize='porter unicode61 remove_diacritics 2')")
    await conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.deja_stems_vocab "
                       "USING fts5vocab(temp, deja_stems, 'instance')")
    base = next(_STEM_BATCH) * 1_000_000  # a query has far fewer terms
    await conn.executemany("INSERT INTO temp.deja_stems (rowid, t) VALUES (?, ?)",
                           [(base + i, fts_text(" ".join(t.words))) for i, t in enumerate(terms)])
    try:
        rows = await conn.execute_fetchall(
            "SELECT doc, term FROM temp.deja_stems_vocab WHERE doc >= ? AND doc < ?",
            (base, base + len(terms)))
    finally:
        await conn.execute("DELETE FROM temp.deja_stems WHERE rowid >= ? AND rowid < ?",
                           (base, base + len(terms)))
    stems: dict[int, list[str]] = {}
    for doc, term in rows:
        stems.setdefault(doc - base, []).append(term)
    wanted = sorted({stem for group in stems.values() for stem in group})
    found: dict[str, int] = {}
    if wanted:
        found = {term: doc for term, doc in await conn.execute_fetchall(
            f"SELECT term, doc FROM records_fts_vocab WHERE col = 'text' AND "
            f"term IN ({', '.join('?' for _ in wanted)})", wanted)}
    return {t.fts: min((found.get(stem, 0) for stem in stems.get(i, [])), default=0)
            for i, t in enumerate(terms)}


async def or_query(conn: aiosqlite.Connection, terms: list[FtsTerm]) -> str | None:
    """The OR fallback of a query of several terms, pruned to its rarest on a large corpus."""
    pruned = await _or_terms(conn, terms)
    return None if pruned is None else " OR ".join(t.fts for t in pruned[0])


async def _or_terms(conn: aiosqlite.Connection, terms: list[FtsTerm]
                    ) -> tuple[list[FtsTerm], list[FtsTerm]] | None:
    """The OR query's terms (see or_query) and the passages' share of them (see
    PASSAGE_OR_TERMS), or None for a query of one term."""
    content = [t for t in terms if not t.stop] or terms
    if len(terms) < 2:
        return None
    total = next(iter(await conn.execute_fetchall(
        "SELECT COALESCE(MAX(id), 0) FROM records")))[0]
    if total < OR_PRUNE_FROM:
        return content, content
    df = await doc_counts(conn, content)
    ranked = sorted(content, key=lambda t: df[t.fts])
    kept: list[FtsTerm] = []
    postings = 0
    for t in ranked:
        if df[t.fts] > OR_MAX_DOC_SHARE * total or len(kept) == OR_MAX_TERMS:
            break
        if kept and postings + df[t.fts] > OR_MAX_POSTINGS:
            break
        kept.append(t)
        postings += df[t.fts]
    kept = kept or ranked[:1]
    rare: list[FtsTerm] = []
    postings = 0
    for t in kept:
        if rare and postings + df[t.fts] > PASSAGE_OR_POSTINGS:
            break
        rare.append(t)
        postings += df[t.fts]
    return kept, rare


async def keyword_ranks(conn: aiosqlite.Connection, query: str, filters: SearchFilters,
                        n: int, context: float = 0.25, *, passages: float | None = None,
                        starts: dict[int, int] | None = None) -> list[tuple[int, float]]:
    """(record id, bm25 score, higher is better), best first.

    `context` is the bm25 weight of the previous record's words; 0 searches
    the records' own words only (keyword mode: what an exact search expects).
    A long record also scores by its best passage (`passages` times its bm25,
    default PASSAGE_WEIGHT; 0: records only); `starts`, when given, receives
    where that passage starts in the record's text, for the snippet."""
    terms = build_fts_terms(query)
    if not terms:
        return []
    own_words = context <= 0
    where, params = filters.sql()
    ranker = _Ranker(
        conn, params, n, PASSAGE_WEIGHT if passages is None else passages, starts,
        (_KEYWORD_SQL.format(filters=where, context=float(context)) if where
         else _KEYWORD_FTS_SQL.format(context=float(context))),
        _PASSAGE_SQL.format(filters=where, rowid=PASSAGE_ROWID) if where else _PASSAGE_FTS_SQL)
    and_q = " ".join(t.fts for t in terms)
    await ranker.add(f"text : ({and_q})" if own_words else and_q)
    if len(ranker.out) < n:
        pruned = await _or_terms(conn, terms)
        if pruned is not None:
            or_q, rare_q = (" OR ".join(t.fts for t in group) for group in pruned)
            await ranker.add(f"text : ({or_q})" if own_words else or_q,
                             (f"text : ({rare_q})" if own_words else rare_q) if rare_q else None)
    return ranker.out[:n]


class _Ranker:
    """One keyword list filled query by query (AND, then OR): records not yet
    listed, each scored by the better of its own bm25 and its best passage's."""

    def __init__(self, conn: aiosqlite.Connection, params: list[object], n: int, weight: float,
                 starts: dict[int, int] | None, sql: str, passage_sql: str) -> None:
        self.conn, self.params, self.n, self.weight = conn, params, n, weight
        self.starts, self.sql, self.passage_sql = starts, sql, passage_sql
        self.out: list[tuple[int, float]] = []
        self.seen: set[int] = set()

    async def add(self, match: str, passage_match: str | None = "") -> None:
        """Records matching `match`, and passages matching `passage_match` (the
        same when "", none when None)."""
        best = {rid: -float(score) for rid, score in await self.conn.execute_fetchall(
            self.sql, (match, *self.params, self.n)) if rid not in self.seen}
        if self.weight > 0 and passage_match is not None:
            # A record's first passage in bm25 order is its best one.
            for rowid, score in await self.conn.execute_fetchall(
                    self.passage_sql, (passage_match or match, *self.params,
                                       self.n * PASSAGE_ROWS)):
                rid, start = divmod(int(rowid), PASSAGE_ROWID)
                if rid in self.seen:
                    continue
                if self.starts is not None and rid not in self.starts:
                    self.starts[rid] = start
                best[rid] = max(best.get(rid, float("-inf")), -self.weight * float(score))
        for rid, score in sorted(best.items(), key=lambda kv: -kv[1]):
            self.seen.add(rid)
            self.out.append((rid, score))
