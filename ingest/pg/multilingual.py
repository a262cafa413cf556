"""The multilingual pass on PostgreSQL: the foreign records' second vector (optional extra).

What it shares with SQLite's pass (ingest/multilingual.py), by calling it:
which records get a vector (`foreign_records`: five letters of a non-Latin
script near the start, among the kinds MiniLM embeds), the batches
(`batches`, `embed_passages`: BATCH texts, cleaned and cut alike), the model
(`MlOnce`, loaded only when a foreign record is met) and the summary
(`MlSummary`). What differs is the mark: SQLite's is one record id, here each
record's `ml_seen` (ingest/pg/ml_schema.py says why: ids commit out of order
when machines ingest at once).

The pass reads a page of the records still to look at (PENDING_WHERE, a
partial index: English records are not in it), embeds its foreign ones
outside any transaction (seconds), then per batch, in ONE transaction,
re-reads the batch's records `FOR UPDATE`, stores the vectors of those still
unseen and marks them seen (with the page's other records up to the batch's
last id). A crash loses at most the batch in flight; a second machine's pass
over the same page finds them seen and writes nothing; a record deleted
meanwhile gets no vector. The model is recorded with the first vector, and a
database of another model is refused as on SQLite (`mismatch`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..multilingual import (
    FOREIGN_WINDOW,
    ML_DIM,
    ML_MODEL_ID,
    PAGE,
    MlEmbedder,
    MlOnce,
    MlSummary,
    batches,
    embed_passages,
    foreign_records,
    mismatch,
)
from .ml_schema import PENDING_WHERE
from .vector_text import vector_literal

if TYPE_CHECKING:
    from .store import PgStore

__all__ = ["embed_multilingual_pg", "ml_model_pg", "ml_reset_pg"]

_PAGE_SQL = (f"SELECT id, substr(text, 1, {FOREIGN_WINDOW}) FROM records "
             f"WHERE {PENDING_WHERE} ORDER BY id LIMIT %s")


async def ml_model_pg(store: PgStore) -> tuple[str, int] | None:
    """(model id, dim) of the database's multilingual vectors, None before the first."""
    cur = await store.conn.execute("SELECT model_id, dim FROM ml_model WHERE id = 1")
    row = await cur.fetchone()
    return (str(row[0]), int(row[1])) if row else None


async def ml_reset_pg(store: PgStore) -> None:
    """No multilingual vector, no model, every record unseen again (`deja reembed`)."""
    async with store.transaction():
        await store.conn.execute("LOCK TABLE ml_model IN EXCLUSIVE MODE")
        await store.conn.execute("DELETE FROM ml_vectors")
        await store.conn.execute("DELETE FROM ml_model")
        await store.conn.execute("UPDATE records SET ml_seen = false WHERE ml_seen")


async def embed_multilingual_pg(store: PgStore, once: MlOnce | None) -> MlSummary:
    """Give every foreign record not looked at yet its multilingual vector (see the module
    docstring). Never raises for the model: a failure is the summary's `error`."""
    summary = MlSummary()
    if once is None or not once.enabled:
        return summary
    started = time.perf_counter()
    while True:
        model = await ml_model_pg(store)
        if model is not None and model != (ML_MODEL_ID, ML_DIM):
            summary.error = mismatch(model[0])
            break
        cur = await store.conn.execute(_PAGE_SQL, (PAGE,))
        page = [(int(rid), text) for rid, text in await cur.fetchall()]
        if not page:
            break
        foreign = foreign_records(page)
        embedder = await once.get() if foreign else None
        if foreign and embedder is None:
            summary.error = once.error
            break
        written = await _embed_page(store, embedder, page, foreign)
        if written is None:
            summary.error = mismatch((await ml_model_pg(store) or ("another model",))[0])
            break
        summary.embedded += written
    summary.seconds = time.perf_counter() - started
    return summary


async def _embed_page(store: PgStore, embedder: MlEmbedder | None, page: list[tuple[int, str]],
                      foreign: list[tuple[int, str]]) -> int | None:
    """Store a page's foreign vectors batch by batch, marking the page seen as it goes; the
    vectors written, or None when another model's vectors were recorded meanwhile."""
    conn = store.conn
    written = 0
    done = 0  # page[:done] is marked
    for batch, last in batches(foreign):
        vectors: list[str] = []
        if batch and embedder is not None:
            vectors = [vector_literal(v) for v in await embed_passages(embedder, batch)]
        upto = page[-1][0] if last else batch[-1][0]
        marks = []
        while done < len(page) and page[done][0] <= upto:
            marks.append(page[done][0])
            done += 1
        async with store.transaction():
            # The model first, then the records: the order `ml_reset_pg` takes them in.
            if vectors and not await _claim_model(store):
                return None
            cur = await conn.execute(
                "SELECT id FROM records WHERE id = ANY(%s) AND NOT ml_seen ORDER BY id "
                "FOR UPDATE", (marks,))
            still = {int(r[0]) for r in await cur.fetchall()}
            rows = [(rid, vec) for (rid, _), vec in zip(batch, vectors) if rid in still]
            if rows:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO ml_vectors (record_id, vec) VALUES (%s, %s::vector) "
                        "ON CONFLICT (record_id) DO UPDATE SET vec = excluded.vec", rows)
            if still:
                await conn.execute("UPDATE records SET ml_seen = true WHERE id = ANY(%s)",
                                   (sorted(still),))
        written += len(rows)
    return written


async def _claim_model(store: PgStore) -> bool:
    """Inside the batch's transaction: record the model if none is, and whether the
    database's is ours (a `reembed` elsewhere holds the table's lock until it is done)."""
    await store.conn.execute(
        "INSERT INTO ml_model (id, model_id, dim) VALUES (1, %s, %s) ON CONFLICT (id) DO NOTHING",
        (ML_MODEL_ID, ML_DIM))
    cur = await store.conn.execute("SELECT model_id, dim FROM ml_model WHERE id = 1 FOR SHARE")
    row: Any = await cur.fetchone()
    return row is not None and (row[0], int(row[1])) == (ML_MODEL_ID, ML_DIM)
