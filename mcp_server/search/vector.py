"""The vector ranker: a sign-bit scan for candidates, then exact cosine over int8 vectors.

Why two stages: an exact scan of float32 vectors (sqlite-vec's vec0) took 0.6 s
per million chunks here. Each chunk now carries its vector's sign bits (48
bytes for MiniLM) and an int8 copy of the vector in `chunk_vectors`
(ingest/quantize.py, migration m006):
1. coarse: SQLite orders the chunks that pass the filters by Hamming distance
   between sign bits (sqlite-vec's `vec_distance_hamming`) and keeps the
   nearest `k` (about 30 ms per 300k chunks);
2. exact: those candidates' int8 vectors, looked up by primary key, are
   scored by cosine with the query (quantized the same way) inside SQLite; a
   record scores as its best chunk.

Filters are part of the coarse scan's WHERE, before the LIMIT, so a filter that
excludes most of the corpus still yields every match there is: when fewer than
`k` chunks pass, all of them are scored exactly. When the best `k` chunks hold
fewer than `n` distinct records, `k` grows and the scan runs again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from .filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np

    from .index import VectorIndex

__all__ = ["vector_ranks", "COARSE_K", "MAX_K"]

# Chunks re-ranked exactly per query (bench/search_scale.py, real question
# vectors over generated chunks): share of the exact top 10 records kept with
# 750 / 1,500 / 3,000 candidates: 100k .962/.976/.982, 1M .900/.930/.956.
COARSE_K = 2000
MAX_K = 24_000


def _coarse_sql(filters: SearchFilters, after_id: int | None = None) -> tuple[str, list[Any]]:
    """The SQL scan: chunks passing the filters (and with an id above after_id),
    nearest sign bits first; the query bits and k are bound after the params."""
    where, params = filters.sql()
    after = " AND c.id > ?" if after_id is not None else ""
    if after_id is not None:
        params = [after_id, *params]
    if not where:
        return ("SELECT c.id FROM chunks c "
                f"WHERE 1 {after} "
                "ORDER BY vec_distance_hamming(vec_bit(c.bits), vec_bit(?)) LIMIT ?"), params
    return ("SELECT c.id FROM chunks c JOIN records r ON r.id = c.record_id "
            "LEFT JOIN sources src ON src.id = r.source_id "
            f"WHERE 1 {after} {where} "
            "ORDER BY vec_distance_hamming(vec_bit(c.bits), vec_bit(?)) LIMIT ?"), params


async def vector_ranks(conn: aiosqlite.Connection, qvec: np.ndarray, filters: SearchFilters,
                       n: int, coarse_k: int = COARSE_K, index: VectorIndex | None = None
                       ) -> list[tuple[int, float, int]]:
    """(record id, cosine similarity, best chunk id) of the n nearest records, best first.

    With a loaded `index` the coarse step runs in memory for the chunks it
    holds and in SQL for those added since (ids above its `max_id`).
    """
    import numpy as np

    from ingest.quantize import to_bits

    if filters.project_dirs == []:
        return []
    query = np.asarray(qvec, dtype=np.float32).ravel()
    query = query / (float(np.linalg.norm(query)) or 1.0)
    qbits = to_bits(query)[0].tobytes()
    k = max(coarse_k, n)
    while True:
        if index is not None and index.ready:
            covered = index.max_id  # read first: the snapshot searched holds at least these
            ids, passed = await anyio.to_thread.run_sync(index.candidates, qbits, filters, k)
            sql, params = _coarse_sql(filters, after_id=covered)
            tail = [r[0] for r in await conn.execute_fetchall(sql, (*params, qbits, k))]
            ids = list(dict.fromkeys(ids + tail))
            exhausted = passed <= k and len(tail) < k
        else:
            sql, params = _coarse_sql(filters)
            ids = [r[0] for r in await conn.execute_fetchall(sql, (*params, qbits, k))]
            exhausted = len(ids) < k
        if not ids:
            return []
        best = await _exact(conn, ids, query)
        if len(best) >= n or exhausted or k >= MAX_K:
            break
        k = min(MAX_K, k * 4)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n]
    return [(rid, sim, cid) for rid, (sim, cid) in ranked]


async def _exact(conn: aiosqlite.Connection, chunk_ids: list[int],
                 query: np.ndarray) -> dict[int, tuple[float, int]]:
    """Cosine of the query with each chunk's int8 vector; the best chunk per record.

    Computed inside SQLite by sqlite-vec (`vec_distance_cosine` over int8, the
    query quantized like the chunks): only ids and distances cross into
    Python, a third less time than fetching the vectors (6.3 vs 9.5 ms for
    2,000 candidates at 100k), and the top 10 agrees 99% with float queries.
    """
    from ingest.quantize import to_int8

    qvec = to_int8(query)[0].tobytes()
    best: dict[int, tuple[float, int]] = {}
    # SQLite binds at most 32,766 parameters; stay well below.
    for start in range(0, len(chunk_ids), 8000):
        part = chunk_ids[start:start + 8000]
        rows = await conn.execute_fetchall(
            "SELECT c.id, c.record_id, vec_distance_cosine(vec_int8(v.vec), vec_int8(?)) "
            "FROM chunks c JOIN chunk_vectors v ON v.chunk_id = c.id "
            f"WHERE c.id IN ({', '.join('?' for _ in part)})", (qvec, *part))
        for cid, rid, distance in rows:
            sim = 1.0 - float(distance)
            if rid not in best or sim > best[rid][0]:
                best[rid] = (sim, cid)
    return best
