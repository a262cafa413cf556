"""The third ranker: multilingual-e5 vectors of the non-English records (optional extra).

Why: an English question over a Japanese, Chinese or Korean answer (or the
reverse) shares no word with it and MiniLM, trained on English, cannot bridge
the languages (ingest/multilingual.py). The records written in another script
have a multilingual-e5-small vector (`ml_vectors`, about a fifth of a
history); the question is embedded with the same model and compared by exact
cosine with all of them (ml_index.py: int8 in memory, block by block). The
best ML_CANDIDATES, after the request's filters, are fused as a third
reciprocal-rank list (fusion.py).

The server passes its `MlIndex`, refreshed in the background: a search then
reads the snapshot and only the rows stored since (a seek), never the whole
table. The CLI, without one, loads the vectors for its one search.
Only hybrid search uses it; without the extra, or with DEJA_MULTILINGUAL=0,
no `MlEmbedder` is passed and nothing here runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from .filters import SearchFilters
from .ml_index import MlIndex, snapshot_ranks, tail_ranks

if TYPE_CHECKING:
    from ingest.multilingual import MlEmbedder

__all__ = ["ML_CANDIDATES", "MlIndex", "ml_ranks", "load_ml_embedder", "ml_status"]

ML_CANDIDATES = 100
# How long a search waits for the model while the background pass embeds a batch (seconds
# at first ingest): past it, this search goes without the third list and says so.
QUERY_WAIT = 0.3

Ml = list[tuple[int, float]]  # (record id, cosine), best first
BUSY = "the multilingual model is busy embedding new records"


async def ml_ranks(conn: aiosqlite.Connection, query: str, embedder: MlEmbedder,
                   filters: SearchFilters, n: int, index: MlIndex | None = None
                   ) -> tuple[Ml, str]:
    """The multilingual ranker's list and "ok", or [] and why it did not run.

    `index`: the process's MlIndex (loaded here if it is not yet); None reads
    the vectors for this search alone (the CLI), its filters applied in SQL."""
    if filters.project_dirs == []:
        return [], "ok"
    if index is None:
        rows = list(await conn.execute_fetchall(
            "SELECT model_id, dim, 0 FROM ml_state WHERE id = 1"))
        state = (str(rows[0][0]), int(rows[0][1]), 0) if rows else None
        snap = None
    else:
        snap = index.snapshot if index.ready else None
        if snap is None:
            snap = await index.refresh(conn)
        state = snap.state
    if state is None:
        return [], "no multilingual vectors yet (run `deja embed`)"
    if state[:2] != (embedder.model_id, embedder.dim):
        return [], (f"the multilingual vectors are of {state[0]}, not {embedder.model_id}; "
                    "run `deja reembed`")
    qvec = None
    if snap is not None and len(snap):
        # The question's vector first: the read below is usually empty, the model is not.
        qvec = await anyio.to_thread.run_sync(embedder.query, query, QUERY_WAIT)
        if qvec is None:
            return [], BUSY
    # The snapshot's rows (none for the CLI) are in memory; the others come from SQL, with
    # the filters: those stored since the snapshot (a seek, usually none) or, for the CLI,
    # all of them.
    rows = await _rows(conn, filters, snap.last if snap is not None else None)
    if qvec is None:
        if not rows:
            return [], "ok"
        qvec = await anyio.to_thread.run_sync(embedder.query, query, QUERY_WAIT)
        if qvec is None:
            return [], BUSY

    def rank() -> Ml:
        found = tail_ranks(rows, qvec, n)
        if snap is not None:
            found += snapshot_ranks(snap, qvec, filters, n)
        return sorted(found, key=lambda hit: (-hit[1], hit[0]))[:n]

    return await anyio.to_thread.run_sync(rank), "ok"


async def _rows(conn: aiosqlite.Connection, filters: SearchFilters, after: int | None
                ) -> list[Any]:
    """(record id, vec) of the vectors passing `filters`, above `after` (None: all)."""
    where, params = filters.sql()
    bound: list[Any] = []
    clause = ""
    if after is not None:
        clause, bound = " AND m.record_id > ?", [after]
    if not where:
        sql = f"SELECT m.record_id, m.vec FROM ml_vectors m WHERE 1{clause}"
    else:
        # CROSS JOIN keeps ml_vectors outermost: driven from `records`, the seek above
        # `after` would walk every record since the last non-English one.
        sql = ("SELECT m.record_id, m.vec FROM ml_vectors m CROSS JOIN records r "
               "ON r.id = m.record_id LEFT JOIN sources src ON src.id = r.source_id "
               f"WHERE 1{clause}{where}")
    return list(await conn.execute_fetchall(sql, (*bound, *params)))


async def load_ml_embedder(conn: aiosqlite.Connection, environ: dict[str, str] | None = None
                           ) -> MlEmbedder | None:
    """The multilingual model for a search process, or None: extra off or missing, or no
    multilingual vector in the database (loading it would cost for nothing)."""
    import os

    from ingest.multilingual import MlOnce

    once = MlOnce(os.environ if environ is None else environ)
    if not once.enabled:
        return None
    if not await conn.execute_fetchall("SELECT 1 FROM ml_vectors LIMIT 1"):
        return None
    return await once.get()


async def ml_status(conn: aiosqlite.Connection, embedder: MlEmbedder | None,
                    error: str | None, index: MlIndex | None = None) -> dict[str, object]:
    """What memory_status says of the multilingual side: vectors, their model, whether
    search uses them (a database of another multilingual model is named, never mixed) and
    how many the process holds in memory (None: not loaded)."""
    from ingest.multilingual import ML_DIM, ML_MODEL_ID

    state = list(await conn.execute_fetchall("SELECT model_id, dim FROM ml_state"))
    count = list(await conn.execute_fetchall("SELECT COUNT(*) FROM ml_vectors"))
    out: dict[str, object] = {"vectors": int(count[0][0]),
                              "model_id": state[0][0] if state else None,
                              "loaded": embedder is not None, "error": error,
                              "index_vectors": len(index) if index is not None and index.ready
                              else None}
    if state and (state[0][0], int(state[0][1])) != (ML_MODEL_ID, ML_DIM):
        out["error"] = (f"the multilingual vectors are of {state[0][0]}, not {ML_MODEL_ID}: "
                        "not used; run `deja reembed`")
    return out
