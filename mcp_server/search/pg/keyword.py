"""The keyword ranker on PostgreSQL: the `text_tsv` tsvector, all words first, then any.

Matching: the query goes to `websearch_to_tsquery('simple', ...)`, which reads
any text a person types without an error: "quoted phrases", `or`, `-word`,
and stray quotes, colons, `&|!` or parentheses, which are only separators to
it (a NUL or a lone surrogate, which PostgreSQL's text refuses, becomes
U+FFFD). The `simple` configuration (no stemming, no stopwords) is the one
the column is built with (ingest/pg/schema.py).

Ranking: PostgreSQL's `ts_rank` knows no word's rarity, so a question's
common words ("database", "error") outweighed its rare one; BM25 on SQLite
weighs each word by its inverse document frequency. Here each content word
of the query (the stopwords of ../terms.py left out) counts its records once
through the GIN index, and a record scores the sum over the words of
idf(word) x ts_rank(record, word) (ts_rank saturates with the word's count;
normalization 1 divides by 1 + log(length)): BM25's shape with PostgreSQL's
term weights. On bench/recall.py's v1+dev questions (103, the full shared
corpus) keyword hit@10 / MRR went from .194 / .075 (plain ts_rank_cd) to
.485 / .241; ts_rank_cd per word gave .252, normalization 0 .456, 2 .175, 32
.456, the `english` configuration (stemmed) .515 / .250 but hybrid .670 /
.316 against .670 / .326 here (SQLite: keyword .592 / .310, hybrid .728 / .385).
In hybrid mode a record also earns Fusion.context (0.25) of the score of the
record before it in its file, as SQLite's `context` column gives it (hybrid
.660 / .340 without).

As on SQLite (../keyword.py), when every word together finds fewer than the
candidates asked for, an OR of the content words fills the list, pruned as
SQLite prunes it from OR_PRUNE_FROM records on: no word in more than
OR_MAX_DOC_SHARE of the records, at most OR_MAX_TERMS, the rarest first. What SQLite does and this ranker does
not (yet): stemming (porter), `prefix*`, the passages of long records.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ingest.pg.text import clean

from ..filters import SearchFilters
from ..keyword import OR_MAX_DOC_SHARE, OR_MAX_TERMS, OR_PRUNE_FROM
from ..terms import STOPWORDS

if TYPE_CHECKING:
    import psycopg

__all__ = ["keyword_ranks_pg", "RANK_NORMALIZATION"]

# ts_rank's normalization: 1 divides the rank by 1 + log(the document's length).
RANK_NORMALIZATION = 1
# The text search configuration and the column built with it.
CONFIG = "simple"
COLUMN = "text_tsv"

_RANK_SQL = """
SELECT r.id, {score}
FROM records r LEFT JOIN sources src ON src.id = r.source_id
WHERE r.{column} @@ {match} {filters} {exclude}
ORDER BY 2 DESC, r.id DESC
LIMIT %s
"""

# The query's words as the column holds them (the same parser and configuration).
_LEXEMES_SQL = "SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('{config}', %s)))"
# Records holding each word (through the GIN index), and the records in all.
_DF_SQL = ("SELECT w, (SELECT COUNT(*) FROM records WHERE {column} @@ plainto_tsquery('{config}', w)) "
           "FROM unnest(%s::text[]) AS w")
_WORD = "plainto_tsquery('{config}', %s)"


def _idf(df: int, total: int) -> float:
    """BM25's inverse document frequency (never negative)."""
    return math.log((total - df + 0.5) / (df + 0.5) + 1.0)


async def _ranked(conn: psycopg.AsyncConnection, match_sql: str, match_params: list[object],
                  weights: dict[str, float], filters: SearchFilters, n: int,
                  exclude: list[int]) -> list[tuple[int, float]]:
    where, params = filters.sql("%s")
    words = sorted(weights)
    word = _WORD.format(config=CONFIG)
    score = " + ".join(f"%s * ts_rank(r.{COLUMN}, {word}, {RANK_NORMALIZATION})"
                       for _ in words) or "0.0"
    score_params: list[object] = [p for w in words for p in (weights[w], w)]
    sql = _RANK_SQL.format(score=score, match=match_sql, filters=where, column=COLUMN,
                           exclude="AND r.id != ALL(%s)" if exclude else "")
    cur = await conn.execute(sql, (*score_params, *match_params, *params,
                                   *([exclude] if exclude else []), n))
    return [(int(rid), float(s)) for rid, s in await cur.fetchall()]


_NEXT_SQL = """
SELECT p.id, r.id
FROM records p
CROSS JOIN LATERAL (SELECT MIN(x.id) AS id FROM records x
                    WHERE x.source_id = p.source_id AND x.id > p.id) AS nx
JOIN records r ON r.id = nx.id
LEFT JOIN sources src ON src.id = r.source_id
WHERE p.id = ANY(%s) {filters}
"""


async def _with_context(conn: psycopg.AsyncConnection, out: list[tuple[int, float]],
                        filters: SearchFilters, n: int, context: float
                        ) -> list[tuple[int, float]]:
    """Each record also earns `context` times the score of the record before it in its file
    (SQLite's `context` column, migration m005): a short reply after the matching output."""
    where, params = filters.sql("%s")
    cur = await conn.execute(_NEXT_SQL.format(filters=where), ([rid for rid, _ in out], *params))
    scores = dict(out)
    own = dict(out)
    for prev, nxt in await cur.fetchall():
        scores[nxt] = scores.get(nxt, 0.0) + context * own[prev]
    return sorted(scores.items(), key=lambda kv: (-kv[1], -kv[0]))[:n]


async def keyword_ranks_pg(conn: psycopg.AsyncConnection, query: str, filters: SearchFilters,
                           n: int, context: float = 0.0) -> list[tuple[int, float]]:
    """(record id, score, higher is better), best first: every word, then any word.

    `context` > 0 (hybrid) adds that share of the previous record's score (_with_context)."""
    out = await _match(conn, query, filters, n)
    if context > 0 and out:
        out = await _with_context(conn, out, filters, n, context)
    return out


async def _match(conn: psycopg.AsyncConnection, query: str, filters: SearchFilters,
                 n: int) -> list[tuple[int, float]]:
    query = clean(query) or ""  # PostgreSQL's text takes no NUL, no lone surrogate
    cur = await conn.execute(_LEXEMES_SQL.format(config=CONFIG), (query,))
    words = sorted(w for (w,) in await cur.fetchall())
    content = [w for w in words if w not in STOPWORDS] or words
    df: dict[str, int] = {}
    total = 0
    if content:
        cur = await conn.execute(_DF_SQL.format(column=COLUMN, config=CONFIG), (content,))
        df = {w: int(c) for w, c in await cur.fetchall()}
        cur = await conn.execute("SELECT COUNT(*) FROM records")
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
    weights = {w: _idf(df[w], total) for w in content}
    out = await _ranked(conn, f"websearch_to_tsquery('{CONFIG}', %s)", [query], weights,
                        filters, n, [])
    if len(out) >= n or (len(content) < 2 and out):
        return out  # (the OR of one word is the AND query again)
    # The OR query: the rarest content words, none in more than a share of the records.
    found = sorted((w for w in content if df[w]), key=lambda w: df[w])
    kept = found if total < OR_PRUNE_FROM else \
        [w for w in found if df[w] <= OR_MAX_DOC_SHARE * total][:OR_MAX_TERMS]
    kept = kept or found[:1]
    if not kept:
        return out
    # Each word through plainto_tsquery: a lexeme is never read as tsquery syntax.
    or_sql = "(" + " || ".join(_WORD.format(config=CONFIG) for _ in kept) + ")"
    more = await _ranked(conn, or_sql, list(kept), weights, filters, n - len(out),
                         [rid for rid, _ in out])
    return out + more
