"""The keyword ranker on PostgreSQL: BM25 over `search_tsv` and the passages, as SQLite ranks.

The index (schema v4, ingest/pg/search_schema.py) holds what SQLite's FTS5
tables hold: each record's stemmed words (weight A) and its context's
(weight B), and the passages of long records. This ranker then takes
SQLite's steps (../keyword.py):

- Terms: the query is cut into terms by ../terms.py `build_fts_terms`, as on
  SQLite (quoted phrases, `prefix*`, CJK character pairs; any other
  character only separates words), and each term becomes a tsquery through
  `phraseto_tsquery('deja', ...)`, which reads any text without an error.
  The tsquery text is composed here from PostgreSQL's own output, never from
  the user's characters.
- Matching: every term first (AND); when that finds fewer than the
  candidates asked for, an OR of the content terms (stopwords out) fills
  the list, pruned on a large corpus to the rarest terms exactly as SQLite
  prunes it (OR_PRUNE_FROM, OR_MAX_DOC_SHARE, OR_MAX_TERMS, OR_MAX_POSTINGS).
  In keyword mode (`context` 0) a term must be in the record's own words.
- Ranking: BM25 (k1 1.2, b 0.75, FTS5's constants) computed in SQL: each
  term's weighted frequency in the record (own words 1, context words
  `context`, FTS5's column weights), the record's length against the mean,
  and the term's inverse document frequency (`doc_counts`).
- Passages: the best PASSAGE_POOL x n records are rescored by their best
  passage (a long record scores as its best ~500 characters would) and the
  passage's start goes to the snippet. A passage's BM25 takes the passages'
  own statistics (their count, mean length and the passages holding each
  term), as FTS5's bm25() over `passages_fts` does.

Measured with bench/pg_vs_sqlite.py (bench/recall.py's v1+dev questions over
the shared corpus, hit@10 / MRR@10): keyword .485 / .241 before this
ranker (`simple` words, idf x ts_rank), .583 / .285 now (SQLite .592 / .310);
hybrid .670 / .326 before, .718 / .357 then (SQLite .728 / .385). Computing
each candidate's BM25 from its exact term counts (unnest of the tsvector)
instead of ts_rank's gave the same keyword figures at twice the time.
Scoring the passages with the records' inverse document frequencies (as this
ranker first did) instead of the passages' own: keyword .583 / .279, hybrid
.718 / .357; with the passages' own, keyword .573 / .302, hybrid .728 / .387
(2026-12-02, the same database).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingest.db import fts_text
from ingest.pg.text import clean

from ..filters import SearchFilters
from ..keyword import OR_PRUNE_FROM, PASSAGE_POOL, rarest_terms
from ..terms import build_fts_terms

if TYPE_CHECKING:
    import psycopg

__all__ = ["keyword_ranks_pg", "K1", "B", "EXACT_COUNTS_BELOW", "DF_CAP", "OR_MAX_POSTINGS_PG"]

# BM25's constants, as FTS5's bm25() has them.
K1 = 1.2
B = 0.75
# Below this many records, counts are exact (COUNT(*) through the indexes: cheap); above,
# the planner's statistics give the total, the mean length and the common words' share.
EXACT_COUNTS_BELOW = 50_000
# A word absent from the statistics' common words is counted through the GIN index up
# to this many records (rarer than the common words by construction, so rarely reached).
DF_CAP = 20_000
# The OR query's budget of postings (records holding its terms, summed): SQLite's
# OR_MAX_POSTINGS is 75,000 at 0.6 us a posting; here a posting costs ~6 us (its row
# read and ts_rank, _OR_SQL), so 20,000. It applies from OR_PRUNE_FROM records on, as
# on SQLite; the rarest terms are kept first.
OR_MAX_POSTINGS_PG = 20_000
# How long a process reuses the statistics of a large database, and of a small one
# (seconds): they move BM25's weights a little, never what matches.
STATS_TTL = 300.0
SMALL_TTL = 10.0


@dataclass(frozen=True)
class _Term:
    query: str     # tsquery text (PostgreSQL's output)
    lexemes: tuple[str, ...]
    prefix: bool
    stop: bool


@dataclass
class _Stats:
    total: int
    avg_len: float
    passage_avg_len: float
    common: dict[str, float]  # lexeme -> share of the records holding it (pg_stats)
    at: float
    passages: int = 0
    passage_common: dict[str, float] | None = None  # as `common`, of the passages


_STATS: dict[str, _Stats] = {}

# ts_rank (normalization 0) of a term in a document is, for a term found tf times at
# weight 1, (1 + 1/4 + ... + 1/tf^2) / (pi^2 / 6) (PostgreSQL's calc_rank_or). Its
# inverse, 1 / (pi^2/6 - rank x pi^2/6) - 1/2, gives tf back within 5% (exact from
# tf 2 on), and a context word (weight `context`) counts about that much: the
# term frequency BM25 needs, at the cost of ts_rank (a binary search in the
# tsvector, in C) rather than an unnest of the document's lexemes in SQL.
_ZETA2 = math.pi ** 2 / 6
_TF = (f"(CASE WHEN {{rank}} = 0 THEN 0.0 ELSE "
       f"1.0 / GREATEST({_ZETA2!r} * (1.0 - {{rank}}), 1e-4) - 0.5 END)")
_RANK = "ts_rank(%s::float4[], {tsv}, %s::tsquery, 0)"

_RANK_SQL = """
SELECT r.id, {score}
FROM records r LEFT JOIN sources src ON src.id = r.source_id
CROSS JOIN LATERAL (SELECT {ranks} OFFSET 0) AS g
CROSS JOIN LATERAL (SELECT {tfs} OFFSET 0) AS f
WHERE r.search_tsv @@ %s::tsquery {own} {filters}
ORDER BY 2 DESC, r.id DESC
LIMIT %s
"""
# The OR query, term by term: each term's records through the GIN index, scored by that
# term alone, summed per record. A record is read once per term it holds (its
# postings) rather than scored for every term once per record holding any. A phrase
# (foo-bar, a.b.c) scores in every record holding all its words, as in _RANK_SQL (where
# that measured better than phrase hits only: hybrid hit@10 .718 against .699), but a
# record must match one term as written (`hit`). At 100k
# records (bench/pg_scale.py) 70-80 ms against 120-235 ms for an 8-term question.
_OR_SQL = """
SELECT t.id, SUM(t.s) AS score FROM (
    SELECT r.id, q.idf * f.tf * {k1p1} / (f.tf + {k1} * ({one_b} + {b} * r.search_len
                                                    / %s::float8)) AS s,
           r.search_tsv @@ q.t::tsquery AS hit
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS q(t, loose, parts, idf)
    JOIN records r ON r.search_tsv @@ q.loose::tsquery {own}
    LEFT JOIN sources src ON src.id = r.source_id
    CROSS JOIN LATERAL (
        SELECT MIN({tf}) AS tf FROM (
            SELECT ts_rank(%s::float4[], r.search_tsv, p::tsquery, 0) AS rk
            FROM unnest(string_to_array(q.parts, chr(31))) AS p) AS x) AS f
    WHERE TRUE {filters}
) AS t
GROUP BY t.id
HAVING bool_or(t.hit)
ORDER BY 2 DESC, t.id DESC
LIMIT %s
"""

_PASSAGE_SQL = """
SELECT p.record_id, p.start, {score}
FROM passages p CROSS JOIN LATERAL (SELECT {ranks} OFFSET 0) AS g
CROSS JOIN LATERAL (SELECT {tfs} OFFSET 0) AS f
WHERE p.record_id = ANY(%s) AND p.tsv @@ %s::tsquery
"""


def _idf(df: int, total: int) -> float:
    """FTS5's inverse document frequency: log((N - n + 0.5) / (n + 0.5)), at least 1e-6.

    N is at least n: the total comes from `_stats`, cached for a while, and records
    ingested since then may hold the term (a total of 0 from an empty database was a
    math domain error)."""
    return max(1e-6, math.log((max(total, df) - df + 0.5) / (df + 0.5)))


async def _fetch(conn: psycopg.AsyncConnection, sql: str, params: Any = ()) -> list[Any]:
    cur = await conn.execute(sql, params)
    return list(await cur.fetchall())


async def _terms(conn: psycopg.AsyncConnection, query: str) -> list[_Term]:
    """The query's terms as tsqueries (see the module docstring), in order, deduplicated."""
    parsed = build_fts_terms(clean(query) or "")
    if not parsed:
        return []
    rows = await _fetch(
        conn, "SELECT q::text, ARRAY(SELECT unnest(tsvector_to_array(to_tsvector('deja', "
              "deja_words(t))))) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i), "
              "LATERAL phraseto_tsquery('deja', deja_words(t)) AS q ORDER BY i",
        ([fts_text(" ".join(t.words)) for t in parsed],))
    out: dict[str, _Term] = {}
    for t, (text, lexemes) in zip(parsed, rows):
        if not text:
            continue  # punctuation only: nothing the index holds
        prefix = t.fts.endswith("*") and len(lexemes) == 1
        if prefix:
            text = f"{text}:*"
        out.setdefault(text, _Term(text, tuple(lexemes), prefix, t.stop))
    return list(out.values())


async def _stats(conn: psycopg.AsyncConnection) -> _Stats:
    """The records in all, their mean length, the passages' mean length, the common words."""
    key = f"{conn.info.host}/{conn.info.port}/{conn.info.dbname}"
    cached = _STATS.get(key)
    ttl = STATS_TTL if cached is not None and cached.total >= EXACT_COUNTS_BELOW else SMALL_TTL
    if cached is not None and time.monotonic() - cached.at < ttl:
        return cached
    est = await _fetch(conn, "SELECT reltuples FROM pg_class WHERE oid = 'records'::regclass")
    estimate = int(est[0][0]) if est and est[0][0] is not None else -1
    if estimate < EXACT_COUNTS_BELOW:
        row = (await _fetch(conn, "SELECT COUNT(*), AVG(search_len) FROM records"))[0]
        prow = (await _fetch(conn, "SELECT COUNT(*), AVG(len) FROM passages"))[0]
        stats = _Stats(int(row[0]), float(row[1] or 1.0), float(prow[1] or 1.0), {},
                       time.monotonic(), int(prow[0]), {})
    else:
        row = (await _fetch(conn, "SELECT AVG(search_len) FROM records TABLESAMPLE SYSTEM (1)"))[0]
        prow = (await _fetch(conn, "SELECT AVG(len) FROM passages TABLESAMPLE SYSTEM (1)"))[0]
        pest = await _fetch(conn, "SELECT reltuples FROM pg_class WHERE oid = 'passages'::regclass")
        stats = _Stats(estimate, float(row[0] or 1.0), float(prow[0] or 1.0),
                       await _common(conn, "records", "search_tsv"), time.monotonic(),
                       max(int(pest[0][0]) if pest and pest[0][0] is not None else 0, 0),
                       await _common(conn, "passages", "tsv"))
    _STATS[key] = stats
    return stats


async def _common(conn: psycopg.AsyncConnection, table: str, column: str) -> dict[str, float]:
    """The planner's common words of a tsvector column, with the share of rows holding each."""
    common = await _fetch(
        conn, "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
              "WHERE tablename = %s AND attname = %s AND schemaname = current_schema()",
        (table, column))
    if common and common[0][0]:
        return {lex: float(f) for lex, f in zip(common[0][0], common[0][1])}
    return {}


async def doc_counts(conn: psycopg.AsyncConnection, terms: list[_Term], stats: _Stats, *,
                     passages: bool = False) -> dict[str, int]:
    """Records (or passages) holding each term, by its tsquery text (see
    EXACT_COUNTS_BELOW, DF_CAP)."""
    out: dict[str, int] = {}
    todo: list[_Term] = []
    common = (stats.passage_common or {}) if passages else stats.common
    total = stats.passages if passages else stats.total
    for t in terms:
        if common and len(t.lexemes) == 1 and not t.prefix and t.lexemes[0] in common:
            out[t.query] = int(common[t.lexemes[0]] * total)
        else:
            todo.append(t)
    if todo:
        cap = "" if not stats.common else f"LIMIT {DF_CAP}"
        where = "passages WHERE tsv" if passages else "records WHERE search_tsv"
        for q, count in await _fetch(
                conn, f"SELECT q, (SELECT COUNT(*) FROM (SELECT 1 FROM {where} "
                      f"@@ q::tsquery {cap}) AS m) "
                      "FROM unnest(%s::text[]) AS q", ([t.query for t in todo],)):
            out[q] = int(count)
    return out


def _lexeme_query(lexeme: str, prefix: bool) -> str:
    """One lexeme as tsquery text: quoted (a quote doubled, a backslash escaped)."""
    quoted = "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
    return quoted + (":*" if prefix else "")


def _parts(t: _Term) -> list[str]:
    """The single-lexeme queries a term's frequency is read from."""
    return [_lexeme_query(x, t.prefix) for x in t.lexemes] or [t.query]


def _scoring(terms: list[_Term], idf: dict[str, float], avg_len: float, context: float,
             tsv: str, length: str) -> tuple[dict[str, str], list[Any], list[Any]]:
    """The SQL of BM25 over `terms` ({tfs} and {score} of _RANK_SQL / _PASSAGE_SQL) and the
    parameters of each: tf per term (_TF), then sum of idf x tf (k1 + 1) / (tf + k1 (1 - b
    + b len / mean len))."""
    weights = [0.0, 0.0, context, 1.0]  # ts_rank's {D, C, B, A}: B is the context
    # Each rank once (the OFFSET 0 fences keep the planner from copying it into every use).
    # A phrase (or a word PostgreSQL splits, foo-bar) counts as often as its rarest word:
    # ts_rank of a phrase is a proximity score, not a frequency.
    ranks = ", ".join(f"{_RANK.format(tsv=tsv)} AS r{i}_{j}"
                      for i, t in enumerate(terms) for j, _ in enumerate(_parts(t)))
    tfs = ", ".join("LEAST(" + ", ".join(_TF.format(rank=f"g.r{i}_{j}")
                                         for j, _ in enumerate(_parts(t))) + f") AS t{i}"
                    for i, t in enumerate(terms))
    tf_params: list[Any] = []
    for t in terms:
        for part in _parts(t):
            tf_params += [weights, part]
    score = " + ".join(
        f"%s * f.t{i} * {K1 + 1} / (f.t{i} + {K1} * ({1 - B} + {B} * {length} / %s::float8))"
        for i in range(len(terms)))
    score_params: list[Any] = []
    for t in terms:
        score_params += [idf[t.query], avg_len]
    return {"ranks": ranks, "tfs": tfs, "score": score}, score_params, tf_params


async def keyword_ranks_pg(conn: psycopg.AsyncConnection, query: str, filters: SearchFilters,
                           n: int, context: float = 0.0, *, starts: dict[int, int] | None = None
                           ) -> list[tuple[int, float]]:
    """(record id, BM25 score, higher is better), best first: every term, then the rarest.

    `context` is the weight of the previous record's words (hybrid: Fusion.context); 0
    matches the records' own words only. `starts`, when given, receives where the best
    passage of a long hit starts, for its snippet."""
    terms = await _terms(conn, query)
    if not terms:
        return []
    stats = await _stats(conn)
    df = await doc_counts(conn, terms, stats)
    idf = {t.query: _idf(df[t.query], stats.total) for t in terms}
    # A passage scores as FTS5 scores it in passages_fts: against the passages' own
    # statistics (their count and the passages holding each term), not the records'.
    pdf = await doc_counts(conn, terms, stats, passages=True) if stats.passages else {}
    pidf = {t.query: _idf(pdf.get(t.query, 0), stats.passages) for t in terms}
    where, fparams = filters.sql("%s")
    own = "AND ts_filter(r.search_tsv, '{a}') @@ %s::tsquery" if context <= 0 else ""
    out: list[tuple[int, float]] = []

    async def add(match: str, scored: list[_Term], by_term: bool = False) -> None:
        seen = {rid for rid, _ in out}
        if by_term:
            or_sql = _OR_SQL.format(
                k1p1=K1 + 1, k1=K1, one_b=1 - B, b=B, tf=_TF.format(rank="x.rk"),
                own="AND ts_filter(r.search_tsv, '{a}') @@ q.t::tsquery" if own else "",
                filters=where)
            rows = await _fetch(conn, or_sql, (
                stats.avg_len, [t.query for t in scored],
                [" & ".join(_parts(t)) for t in scored],
                [chr(31).join(_parts(t)) for t in scored], [idf[t.query] for t in scored],
                [0.0, 0.0, context, 1.0], *fparams, n * PASSAGE_POOL + len(seen)))
        else:
            sql, score_params, tf_params = _scoring(scored, idf, stats.avg_len, context,
                                                    "r.search_tsv", "r.search_len")
            rows = await _fetch(conn, _RANK_SQL.format(own=own, filters=where, **sql),
                                (*score_params, *tf_params, match, *([match] if own else []),
                                 *fparams, n * PASSAGE_POOL + len(seen)))
        best = {int(rid): float(s) for rid, s in rows if rid not in seen}
        if best:
            sql, score_params, tf_params = _scoring(scored, pidf, stats.passage_avg_len,
                                                    context, "p.tsv", "p.len")
            top: dict[int, tuple[float, int]] = {}
            for rid, start, s in await _fetch(conn, _PASSAGE_SQL.format(**sql),
                                              (*score_params, *tf_params, list(best), match)):
                if rid not in top or s > top[rid][0]:
                    top[rid] = (float(s), int(start))
            for rid, (s, start) in top.items():
                best[rid] = max(best[rid], s)
                if starts is not None:
                    starts.setdefault(rid, start)
        out.extend(sorted(best.items(), key=lambda kv: (-kv[1], -kv[0]))[:n - len(out)])

    await add(" & ".join(f"({t.query})" for t in terms), terms)
    if len(out) < n and len(terms) > 1:
        kept = _or_terms(terms, df, stats.total)
        await add(" | ".join(f"({t.query})" for t in kept), kept, by_term=True)
    return out


def _or_terms(terms: list[_Term], df: dict[str, int], total: int) -> list[_Term]:
    """The OR query's terms: the content terms, the rarest only on a large corpus (as
    ../keyword.py `or_query` keeps them)."""
    content = [t for t in terms if not t.stop] or terms
    if total < OR_PRUNE_FROM:
        return content
    return rarest_terms(content, [df[t.query] for t in content], total, OR_MAX_POSTINGS_PG)
