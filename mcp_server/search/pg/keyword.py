"""The keyword ranker on PostgreSQL: the `text_tsv` tsvector, all words first, then any.

The query goes to `websearch_to_tsquery('simple', ...)`, which reads any text
a person types without an error: "quoted phrases", `or`, `-word`, and
stray quotes, colons, `&|!` or parentheses, which are only separators to it
(a NUL or a lone surrogate, which PostgreSQL's text refuses, becomes U+FFFD).
The `simple` configuration (no stemming, no stopwords) is the one the column
is built with (ingest/pg/schema.py). Records are ranked by `ts_rank_cd`
(cover density) divided by 1 + log(length), so a long tool output does not
outrank a short answer by its size alone.

As on SQLite (../keyword.py), when every word together finds fewer than the
candidates asked for, an OR of the query's words (the stopwords of
../terms.py left out) fills the list, ranked the same way. What SQLite
does and this ranker does not (yet): stemming (porter), `prefix*`, the
weight of the previous record's words (`context`), the passages of long
records, and pruning the OR query to its rarest words on a large corpus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.pg.text import clean

from ..filters import SearchFilters
from ..terms import STOPWORDS

if TYPE_CHECKING:
    import psycopg

__all__ = ["keyword_ranks_pg", "RANK_NORMALIZATION"]

# ts_rank_cd's normalization: 1 divides the rank by 1 + log(the document's length).
RANK_NORMALIZATION = 1

_RANK_SQL = """
SELECT r.id, ts_rank_cd(r.text_tsv, q.q, {norm})
FROM records r LEFT JOIN sources src ON src.id = r.source_id,
     (SELECT {query} AS q) AS q
WHERE r.text_tsv @@ q.q {filters} {exclude}
ORDER BY 2 DESC, r.id DESC
LIMIT %s
"""

# The query's words as the column holds them (the same parser and configuration).
_LEXEMES_SQL = "SELECT unnest(tsvector_to_array(to_tsvector('simple', %s)))"


async def _ranked(conn: psycopg.AsyncConnection, query_sql: str, query_params: list[object],
                  filters: SearchFilters, n: int, exclude: list[int]) -> list[tuple[int, float]]:
    where, params = filters.sql("%s")
    sql = _RANK_SQL.format(norm=RANK_NORMALIZATION, query=query_sql, filters=where,
                           exclude="AND r.id != ALL(%s)" if exclude else "")
    cur = await conn.execute(sql, (*query_params, *params, *([exclude] if exclude else []), n))
    return [(int(rid), float(score)) for rid, score in await cur.fetchall()]


async def keyword_ranks_pg(conn: psycopg.AsyncConnection, query: str, filters: SearchFilters,
                           n: int) -> list[tuple[int, float]]:
    """(record id, rank, higher is better), best first: every word, then any word."""
    query = clean(query) or ""  # PostgreSQL's text takes no NUL, no lone surrogate
    out = await _ranked(conn, "websearch_to_tsquery('simple', %s)", [query], filters, n, [])
    if len(out) >= n:
        return out
    cur = await conn.execute(_LEXEMES_SQL, (query,))
    words = [w for (w,) in await cur.fetchall()]
    content = [w for w in words if w not in STOPWORDS] or words
    if len(content) < 2 and out:
        return out  # the OR of one word is the AND query again
    if not content:
        return out
    # Each word through plainto_tsquery: a lexeme is never read as tsquery syntax.
    or_sql = " || ".join("plainto_tsquery('simple', %s)" for _ in content)
    more = await _ranked(conn, or_sql, list(content), filters, n - len(out),
                         [rid for rid, _ in out])
    return out + more
