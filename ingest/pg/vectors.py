"""Embedding on PostgreSQL: the records waiting with `embed_state = 0` get their chunks.

The same model, the same windows (ingest/vectors.py `windows_for`) and the
same order (newest first) as on SQLite; only the storage differs: a chunk
keeps its float vector in pgvector's `vector(384)` column (schema v2), not
the int8 copy and sign bits SQLite's own scan needs. One transaction per
batch writes the chunks and the records' new `embed_state`: a crash loses at
most the batch in flight, which stays pending.

Several machines may embed the same database at once (each after its own
ingest): a batch re-reads its records `FOR UPDATE` inside its transaction
and writes only those still waiting, so a record gets its chunks once.

One model per database, as on SQLite: its identity is recorded on first use
and another model is refused (ModelMismatch) until `reembed` rebuilds the
vectors. With the multilingual extra, `run_embed_pg` then runs the
multilingual pass (ingest/pg/multilingual.py), as `run_embed` does on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ModelMismatch
from ..vectors import EmbedSummary, windows_for
from .schema import VECTOR_DIM
from .vector_text import vector_literal

if TYPE_CHECKING:

    from ..embed import Embedder
    from ..multilingual import MlOnce
    from .store import PgStore

__all__ = ["run_embed_pg", "embed_pending_pg", "reembed_pg", "ensure_model_pg", "stored_model_pg"]

# The records of a batch, newest first; a tool result with the start of its call
# (ingest/vectors.py `embedding_text`), as the SQLite driver reads them.
_PENDING_SQL = """
SELECT r.id, r.kind, r.text,
    CASE WHEN r.kind = 'tool_result' AND r.tool_use_id IS NOT NULL THEN
        (SELECT substr(c.text, 1, 400) FROM records c WHERE c.tool_use_id = r.tool_use_id
         AND c.kind = 'tool_call' LIMIT 1) END
FROM records r WHERE r.embed_state = 0 ORDER BY r.ts DESC NULLS LAST, r.id DESC LIMIT %s
"""


async def stored_model_pg(store: PgStore) -> tuple[str, int] | None:
    cur = await store.conn.execute("SELECT model_id, dim FROM embedding_model WHERE id = 1")
    row = await cur.fetchone()
    return (row[0], int(row[1])) if row else None


def _check_dim(store: PgStore, model_id: str, dim: int) -> None:
    if dim != VECTOR_DIM:
        raise ModelMismatch(
            f"the PostgreSQL database at {store.target} keeps {VECTOR_DIM}-dimension vectors; "
            f"the configured model {model_id} has {dim}: set DEJA_EMBED_MODEL to a "
            f"{VECTOR_DIM}-dimension model (the default all-MiniLM-L6-v2)")


async def ensure_model_pg(store: PgStore, model_id: str, dim: int) -> None:
    """Record the model on first use; refuse another one (ModelMismatch, as on SQLite)."""
    _check_dim(store, model_id, dim)
    async with store.transaction():
        cur = await store.conn.execute(
            "SELECT model_id, dim FROM embedding_model WHERE id = 1 FOR UPDATE")
        row = await cur.fetchone()
        if row is None:
            await store.conn.execute("DELETE FROM chunks")
            await store.conn.execute(
                "INSERT INTO embedding_model (id, model_id, dim) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO NOTHING", (model_id, dim))
            return
    if (row[0], int(row[1])) != (model_id, dim):
        raise ModelMismatch(
            f"the database holds vectors of {row[0]} ({row[1]} dims), not of the configured "
            f"model {model_id} ({dim} dims); run `deja reembed` to rebuild them with the new "
            "model, or set DEJA_EMBED_MODEL back")


def _embed_batch(embedder: Embedder, rows: list[Any]
                 ) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """Blocking (worker thread): (row index, seq, start, end) of each window, and its vector."""
    chunks: list[tuple[int, int, int, int]] = []
    texts: list[str] = []
    for i, row in enumerate(rows):
        for seq, (start, end, piece) in enumerate(windows_for(embedder, row[1], row[2], row[3])):
            chunks.append((i, seq, start, end))
            texts.append(piece)
    if not texts:
        return chunks, []
    return chunks, [vector_literal(v) for v in embedder.embed(texts)]


async def embed_pending_pg(store: PgStore, embedder: Embedder, *, batch_records: int = 64,
                           progress: Callable[[int, int], None] | None = None) -> EmbedSummary:
    """Embed every waiting record, newest first (the module docstring says how).

    Raises ModelMismatch if the database belongs to another model.
    """
    await ensure_model_pg(store, embedder.model_id, embedder.dim)
    summary = EmbedSummary()
    started = time.perf_counter()
    total = await store.pending_embeddings()
    done = 0
    if progress:
        progress(0, total)
    conn = store.conn
    while True:
        cur = await conn.execute(_PENDING_SQL, (batch_records,))
        rows = list(await cur.fetchall())
        if not rows:
            break
        chunks, vectors = await anyio.to_thread.run_sync(_embed_batch, embedder, rows)
        async with store.transaction():
            cur = await conn.execute(
                "SELECT id FROM records WHERE id = ANY(%s) AND embed_state = 0 ORDER BY id "
                "FOR UPDATE", ([row[0] for row in rows],))
            still = {r[0] for r in await cur.fetchall()}
            chunk_rows = [(rows[i][0], seq, start, end, vec)
                          for (i, seq, start, end), vec in zip(chunks, vectors)
                          if rows[i][0] in still]
            if chunk_rows:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO chunks (record_id, seq, char_start, char_end, vec) "
                        "VALUES (%s, %s, %s, %s, %s::vector)", chunk_rows)
            await conn.execute("UPDATE records SET embed_state = 1 WHERE id = ANY(%s)",
                               (sorted(still),))
        summary.embedded_records += len(still)
        summary.chunks += len(chunk_rows)
        done += len(rows)
        if progress:
            progress(min(done, total), total)
    summary.pending = await store.pending_embeddings()
    summary.seconds = time.perf_counter() - started
    return summary


async def reembed_pg(store: PgStore, embedder: Embedder,
                     progress: Callable[[int, int], None] | None = None) -> EmbedSummary:
    """Drop every vector, record the embedder's model, and embed everything again."""
    _check_dim(store, embedder.model_id, embedder.dim)
    async with store.transaction():
        await store.conn.execute("LOCK TABLE embedding_model IN EXCLUSIVE MODE")
        await store.conn.execute("DELETE FROM chunks")
        await store.conn.execute("DELETE FROM embedding_model")
        await store.conn.execute("INSERT INTO embedding_model (id, model_id, dim) "
                                 "VALUES (1, %s, %s)", (embedder.model_id, embedder.dim))
        await store.conn.execute("UPDATE records SET embed_state = 0 WHERE embed_state = 1")
    return await embed_pending_pg(store, embedder, progress=progress)


async def run_embed_pg(store: PgStore, embedder: Embedder, *,
                       progress: Callable[[int, int], None] | None = None,
                       reembed_all: bool = False,
                       multilingual: MlOnce | None = None) -> dict[str, Any]:
    """The summary fields of ingest/vectors.py `run_embed`, on PostgreSQL (the
    multilingual ones too, with `multilingual`: the extra's model, once per run)."""
    from .multilingual import embed_multilingual_pg, ml_reset_pg

    if reembed_all:
        summary = await reembed_pg(store, embedder, progress=progress)
    else:
        summary = await embed_pending_pg(store, embedder, progress=progress)
    out = summary.to_dict()
    out["embedding_model"] = embedder.model_id
    out["embedding_backend"] = embedder.backend
    if multilingual is not None and multilingual.enabled:
        if reembed_all:
            await ml_reset_pg(store)
        out.update((await embed_multilingual_pg(store, multilingual)).to_dict())
    return out
