"""The vector ranker on PostgreSQL: pgvector's cosine distance, an exact scan, best window wins.

Each chunk keeps its float vector (`vector(384)`, ingest/pg/vectors.py).
The scan orders the chunks that pass the filters by `vec <=> query` (cosine
distance) and keeps the nearest `k`; a record scores as its best chunk.
Filters are in the scan's WHERE, before the LIMIT, so a filter that leaves
few records still gets every one of them. When the best `k` chunks hold
fewer than `n` records (long records have many windows), `k` grows and the
scan runs again.

Exact by default; an HNSW index when the database has one
(`CREATE INDEX ... USING hnsw (vec vector_cosine_ops)`, which deja does not
create: the operator decides) serves the unfiltered queries, at hnsw.ef_search
EF_SEARCH. pgvector 0.6 filters after its HNSW scan (with a filter one row in
ten passes it returned 9-11 of 100 hits that exist, bench/pg_vectors.py), so
a filtered query always takes the exact scan, its filter before the LIMIT,
and is never short (the `+ 0` keeps the planner off the index).

bench/pg_scale.py, hybrid p50 / p95 ms (this 2-core machine, shared): at
100k chunks the vector side is not what costs (exact and HNSW within a few
ms: the keyword ranker is); at 1M exact 732 / 2416, HNSW 373 / 2605 (built in
299 s, +2.0 GB per million chunks), its top-10 agreeing with the exact scan's
on 0.85 of the records. HNSW halves the median at a million chunks for some
vector recall; below a few hundred thousand chunks it is not worth its size.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import anyio

from ..filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np
    import psycopg

__all__ = ["vector_ranks_pg", "FIRST_K", "MAX_K", "EF_SEARCH", "HNSW_MAX"]

# One HNSW transaction at a time per connection: the server's searches share its read
# connection, and two concurrent `SET LOCAL` transactions on it would nest (the second a
# savepoint of the first, closed out of order).
_hnsw_locks: weakref.WeakKeyDictionary[Any, anyio.Lock] = weakref.WeakKeyDictionary()

# Chunks fetched per record wanted at first, and the most ever fetched.
FIRST_K = 3
MAX_K = 20_000
# HNSW: the candidate list it searches (hnsw.ef_search; at least the chunks asked for),
# and the most it can give (pgvector's ef_search limit): past it, the exact scan.
EF_SEARCH = 400
HNSW_MAX = 1000

# `+ 0` keeps the planner off an HNSW index: this scan is exact, its filters before the LIMIT.
_SCAN_SQL = """
SELECT c.id, c.record_id, (c.vec <=> %s::vector) + 0 AS d
FROM chunks c {join}
WHERE TRUE {filters}
ORDER BY d
LIMIT %s
"""
_HNSW_SQL = """
SELECT c.id, c.record_id, c.vec <=> %s::vector AS d
FROM chunks c
ORDER BY c.vec <=> %s::vector
LIMIT %s
"""
_HAS_HNSW_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
               JOIN pg_am a ON a.oid = x.relam
               WHERE i.indrelid = to_regclass('chunks') AND a.amname = 'hnsw')
"""


async def vector_ranks_pg(conn: psycopg.AsyncConnection, qvec: np.ndarray,
                          filters: SearchFilters, n: int, *, use_hnsw: bool | None = None
                          ) -> list[tuple[int, float, int]]:
    """(record id, cosine, best chunk id), best first, at most `n` records.

    `use_hnsw`: None uses an HNSW index on the chunks when there is one and the query has
    no filter (a filtered query always scans exactly: never fewer hits than exist)."""
    from ingest.pg.vector_text import vector_literal

    where, params = filters.sql("%s")
    query = vector_literal(qvec)
    if use_hnsw is None:
        use_hnsw = False
        if not where:
            cur = await conn.execute(_HAS_HNSW_SQL)
            row = await cur.fetchone()
            use_hnsw = bool(row and row[0])
    k = n * FIRST_K
    if use_hnsw and not where:
        lock = _hnsw_locks.setdefault(conn, anyio.Lock())
        while k <= HNSW_MAX:
            async with lock, conn.transaction():
                await conn.execute(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, k)}")
                cur = await conn.execute(_HNSW_SQL, (query, query, k))
                rows = await cur.fetchall()
            best = _best(rows)
            if len(best) >= n or len(rows) < k:
                return _top(best, n)
            k *= 4
    join = ("JOIN records r ON r.id = c.record_id LEFT JOIN sources src ON src.id = r.source_id"
            if where else "")
    sql = _SCAN_SQL.format(join=join, filters=where)
    while True:
        cur = await conn.execute(sql, (query, *params, k))
        rows = await cur.fetchall()
        best = _best(rows)
        if len(best) >= n or len(rows) < k or k >= MAX_K:
            break
        k = min(MAX_K, k * 4)
    return _top(best, n)


def _best(rows: list[Any]) -> dict[int, tuple[float, int]]:
    """Each record's nearest chunk: (cosine, chunk id); rows come nearest first."""
    best: dict[int, tuple[float, int]] = {}
    for cid, rid, distance in rows:
        if rid not in best:
            best[rid] = (1.0 - float(distance), int(cid))
    return best


def _top(best: dict[int, tuple[float, int]], n: int) -> list[tuple[int, float, int]]:
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n]
    return [(int(rid), sim, cid) for rid, (sim, cid) in ranked]
