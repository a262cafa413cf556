"""The vector ranker on PostgreSQL: pgvector's cosine distance, an exact scan, best window wins.

Each chunk keeps its float vector (`vector(384)`, ingest/pg/vectors.py).
The scan orders the chunks that pass the filters by `vec <=> query` (cosine
distance) and keeps the nearest `k`; a record scores as its best chunk.
Filters are in the scan's WHERE, before the LIMIT, so a filter that leaves
few records still gets every one of them. When the best `k` chunks hold
fewer than `n` records (long records have many windows), `k` grows and the
scan runs again.

Exact, not HNSW (bench/pg_vectors.py, top-100 by cosine, this 2-core machine
under load ~3): over the shared corpus's 11,578 chunks an exact scan took
p50/p95 5.4/5.8 ms, HNSW (m 16, ef_construction 64) 0.7/1.2 ms at ef_search
100 with recall@100 0.952; over 100k synthetic unit vectors exact 31.9/34.4 ms,
HNSW 2.6/4.1 ms (recall 0.974), built in 23 s. HNSW saves milliseconds a
hybrid search does not miss at these sizes, and pgvector 0.6 filters after
its scan: with a filter that one row in ten passes it returned 9-11 of the
100 hits that exist at ef_search 100 (40-43 at 400). The exact scan with the
filter in its WHERE is never short. Past ~1M chunks (exact ~0.3 s) an HNSW
index for unfiltered queries, keeping this scan for filtered ones, is the
next step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np
    import psycopg

__all__ = ["vector_ranks_pg", "FIRST_K", "MAX_K"]

# Chunks fetched per record wanted at first, and the most ever fetched.
FIRST_K = 3
MAX_K = 20_000

_SCAN_SQL = """
SELECT c.id, c.record_id, c.vec <=> %s::vector AS d
FROM chunks c {join}
WHERE TRUE {filters}
ORDER BY d
LIMIT %s
"""


async def vector_ranks_pg(conn: psycopg.AsyncConnection, qvec: np.ndarray,
                          filters: SearchFilters, n: int) -> list[tuple[int, float, int]]:
    """(record id, cosine, best chunk id), best first, at most `n` records."""
    from ingest.pg.vectors import vector_literal

    where, params = filters.sql("%s")
    join = ("JOIN records r ON r.id = c.record_id LEFT JOIN sources src ON src.id = r.source_id"
            if where else "")
    sql = _SCAN_SQL.format(join=join, filters=where)
    query = vector_literal(qvec)
    k = n * FIRST_K
    while True:
        cur = await conn.execute(sql, (query, *params, k))
        rows = await cur.fetchall()
        best: dict[int, tuple[float, int]] = {}
        for cid, rid, distance in rows:
            if rid not in best:  # rows come nearest first: the first is the record's best
                best[rid] = (1.0 - float(distance), int(cid))
        if len(best) >= n or len(rows) < k or k >= MAX_K:
            break
        k = min(MAX_K, k * 4)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n]
    return [(int(rid), sim, cid) for rid, (sim, cid) in ranked]
