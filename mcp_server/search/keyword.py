"""The keyword ranker: FTS5 BM25 over records and passages, all terms first, then the rarest.

All terms of the query are required first (AND); if that finds too few, an OR
of the non-stopwords fills the list, still ranked by BM25. The OR query is
pruned to its rarest terms on a large corpus (`or_query`), so a few common
words do not make it score much of the database. Query terms come from
terms.py; filters from filters.py.

A long record is also indexed as overlapping passages (`passages_fts`,
migration m007): BM25 over its whole text buries one sentence under its
length, a passage scores it as a short record would. Each query takes
PASSAGE_POOL times the candidates it returns from the records' ranking,
rescores the long ones by their best passage, and keeps the best; the start
of that passage goes to the snippet.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import TypeVar

import aiosqlite

from ingest.db import fts_text
from ingest.indexing import PASSAGE_ROWID

from .filters import SearchFilters
from .terms import FtsTerm, build_fts_terms

T = TypeVar("T")

__all__ = [
    "OR_MAX_DOC_SHARE", "OR_MAX_POSTINGS", "OR_MAX_TERMS", "OR_PRUNE_FROM", "PASSAGE_POOL",
    "rarest_terms",
    "PASSAGE_WEIGHT", "doc_counts", "keyword_ranks", "or_query",
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

# The passages of the candidates (a JSON list of ids) that match: rowid =
# record id * PASSAGE_ROWID + the passage's start (ingest/indexing.py).
# FTS5 walks the terms' doclists, but bm25 is computed only for the
# candidates' passages (a correlated lookup per record recomputed bm25's
# statistics each time: 150 ms a query at 100k records). Passages have no
# context column: a column filter `text : (...)` means the same in both tables.
_PASSAGE_SQL = f"""
SELECT rowid, bm25(passages_fts)
FROM passages_fts
WHERE passages_fts MATCH ? AND rowid / {PASSAGE_ROWID} IN (SELECT value FROM json_each(?))
"""
# A record scores max(its bm25, PASSAGE_WEIGHT x its best passage's bm25).
# Rescoring the records' top PASSAGE_POOL x n gave the v1 questions all that
# a search of every passage gave (pool 1: hybrid hit@10 78.3, MRR .496; 3:
# 80.0, .505; 10: the same), at a fraction of its cost. At 100k records
# (bench/search_scale.py's corpus) the keyword ranker took CPU p50/p95
# 23/35 ms alone, 29/47 ms rescoring, 55/89 ms scoring every passage.
PASSAGE_WEIGHT = 1.0
PASSAGE_POOL = 3

# The OR query scores every record holding any of its terms, about 0.6 us per
# posting: a few common words would make it score much of the corpus (0.6 s at
# 1M records). It keeps the rarest terms, at most OR_MAX_TERMS, none found in
# more than OR_MAX_DOC_SHARE of the records, and stops adding terms before
# their documents sum past OR_MAX_POSTINGS (bench/keyword_scale.py: a share
# threshold alone lets the work grow with the corpus; a posting budget only
# trims the worst queries, and never below 100k records). Counts are of the
# text column; the context column adds about 0.7x as many postings.
# The share was 0.2 until issue 12's passages made the keyword ranker the
# slowest stage: at 100k records (bench/search_scale.py's corpus, 50
# questions) the ranker took p50/p95 30-40/49-65 ms at 0.2, 33-37/61-64 at
# 0.15 and 22/39-41 at 0.1, because terms in 10-20% of the records carry the
# longest doclists. With pruning forced on the 10k-record recall database
# (bench/recall.py, v1+dev hybrid hit@10 / MRR) 0.2 gave 71.8 / .393, 0.15
# 71.8 / .408 and 0.1 70.9 / .393: one question of 103 for a third of the time.
OR_MAX_DOC_SHARE = 0.1
OR_MAX_TERMS = 12
# The posting budget was 150k until issue 12's second round: at 1M records
# (bench/search_scale.py's corpus, 30 questions, load ~3.5) the keyword ranker
# took p50/p95 140-149/194-238 ms with it and 85-94/135-141 ms with 75k; with
# pruning forced on the recall database at the same share of its records
# (1,545 and 773 postings) hybrid hit@10 / MRR was 69.9 / .387 and 70.9 / .374.
OR_MAX_POSTINGS = 75_000
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
    content = [t for t in terms if not t.stop] or terms
    if len(terms) < 2:
        return None
    total = next(iter(await conn.execute_fetchall(
        "SELECT COALESCE(MAX(id), 0) FROM records")))[0]
    if total < OR_PRUNE_FROM:
        return " OR ".join(t.fts for t in content)
    df = await doc_counts(conn, content)
    kept = rarest_terms(content, [df[t.fts] for t in content], total, OR_MAX_POSTINGS)
    return " OR ".join(t.fts for t in kept)


def rarest_terms(terms: Sequence[T], counts: Sequence[int], total: int,
                 max_postings: int) -> list[T]:
    """The OR query's terms on a large corpus (both engines' rule): the rarest first, at
    most OR_MAX_TERMS, none in more than OR_MAX_DOC_SHARE of the `total` records, until
    their documents (`counts`, one per term) would sum past `max_postings`; at least one."""
    ranked = sorted(zip(terms, counts), key=lambda pair: pair[1])
    kept: list[T] = []
    postings = 0
    for term, n in ranked:
        if n > OR_MAX_DOC_SHARE * total or len(kept) == OR_MAX_TERMS:
            break
        if kept and postings + n > max_postings:
            break
        kept.append(term)
        postings += n
    return kept or [term for term, _ in ranked[:1]]


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
    and_q = " ".join(t.fts for t in terms)
    own_words = context <= 0
    where, params = filters.sql()
    sql = (_KEYWORD_SQL.format(filters=where, context=float(context)) if where
           else _KEYWORD_FTS_SQL.format(context=float(context)))
    weight = PASSAGE_WEIGHT if passages is None else passages
    out: list[tuple[int, float]] = []
    seen: set[int] = set()

    async def add(match: str) -> None:
        if own_words:
            match = f"text : ({match})"
        pool = n * PASSAGE_POOL if weight > 0 else n
        best = {rid: -float(score) for rid, score in
                await conn.execute_fetchall(sql, (match, *params, pool)) if rid not in seen}
        if weight > 0 and best:
            await _rescore(conn, match, best, weight, starts)
        for rid, score in sorted(best.items(), key=lambda kv: -kv[1])[:n - len(out)]:
            seen.add(rid)
            out.append((rid, score))

    await add(and_q)
    if len(out) < n:
        or_q = await or_query(conn, terms)
        if or_q is not None:
            await add(or_q)
    return out


async def _rescore(conn: aiosqlite.Connection, match: str, best: dict[int, float],
                   weight: float, starts: dict[int, int] | None) -> None:
    """Lift each long record in `best` to its best passage's score, if higher."""
    top: dict[int, tuple[float, int]] = {}
    for rowid, score in await conn.execute_fetchall(_PASSAGE_SQL, (match, json.dumps(list(best)))):
        rid, start = divmod(int(rowid), PASSAGE_ROWID)
        passage = -weight * float(score)
        if rid not in top or passage > top[rid][0]:
            top[rid] = (passage, start)
    for rid, (passage, start) in top.items():
        best[rid] = max(best[rid], passage)
        if starts is not None:
            starts.setdefault(rid, start)
