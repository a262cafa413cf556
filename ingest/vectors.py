"""Filling the vector side of the database: chunks and their embeddings.

Records wait with `embed_state = 0` (set at insert for the kinds worth a
vector). `embed_pending()` takes them newest first, splits each into windows
the model can read (MiniLM stops at 256 word pieces), embeds the windows in a
worker thread so the event loop never blocks, and writes chunks, vectors and
the records' new state in ONE transaction per batch: a crash mid-embedding
loses at most the batch in flight, which stays pending.

What deserves a vector: prompts, answers, thinking, summaries, memories get up
to MAX_WINDOWS windows; a tool call or result only its first window (a long
log rarely matches a question by meaning, and FTS still covers every word).

One model per database: its identity and dimension are recorded on first use;
another model is refused (ModelMismatch) until `reembed()` rebuilds the vectors.

`run_embed()` is the driver the commands and the watch loop call: it takes an
embedder already loaded (loading costs seconds; a long-running caller loads it
once and passes it to every call) and returns the summary a command prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .db import clean_text
from .errors import ModelMismatch
from .quantize import bits_rows, int8_rows
from .store import Store

if TYPE_CHECKING:
    from .embed import Embedder
    from .multilingual import MlOnce

__all__ = ["EmbedSummary", "run_embed", "embed_pending", "pending_count", "ensure_model", "reembed",
           "stored_model", "windows_for"]

logger = logging.getLogger(__name__)

MAX_WINDOWS = 12
FIRST_WINDOW_ONLY = {"tool_call", "tool_result", "attachment"}
# Characters handed to the tokenizer: enough for MAX_WINDOWS windows of ~1,000.
MAX_CHARS = 14_000
FIRST_WINDOW_CHARS = 2_000
CALL_PREFIX_CHARS = 300


@dataclass
class EmbedSummary:
    embedded_records: int = 0
    chunks: int = 0
    pending: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"embedded": self.embedded_records, "chunks": self.chunks,
                "pending_embeddings": self.pending, "embed_seconds": round(self.seconds, 2)}


async def run_embed(store: Store, embedder: Embedder, *,
                    progress: Callable[[int, int], None] | None = None,
                    reembed_all: bool = False,
                    multilingual: MlOnce | None = None) -> dict[str, Any]:
    """Embed what awaits a vector (with `reembed_all`, every vector again) with `embedder`.

    Then, with `multilingual` (the optional extra, ingest/multilingual.py), the
    foreign records' second vectors (`reembed_all` rebuilds those too).
    Returns the summary fields (`EmbedSummary.to_dict()`) plus `embedding_model`
    and `embedding_backend` (and `ml_embedded`, `ml_seconds`, `ml_error` with
    the extra). Raises ModelMismatch if the database belongs to another model
    (never with `reembed_all`, which adopts the embedder's).
    """
    from .multilingual import embed_multilingual, ml_reset

    if reembed_all:
        summary = await reembed(store, embedder, progress=progress)
    else:
        summary = await embed_pending(store, embedder, progress=progress)
    out = summary.to_dict()
    out["embedding_model"] = embedder.model_id
    out["embedding_backend"] = embedder.backend
    if multilingual is not None and multilingual.enabled:
        if reembed_all:
            async with store.transaction():
                await ml_reset(store)
        out.update((await embed_multilingual(store, multilingual)).to_dict())
    return out


async def pending_count(store: Store) -> int:
    rows = list(await store.conn.execute_fetchall(
        "SELECT COUNT(*) FROM records WHERE embed_state = 0"
    ))
    return int(rows[0][0])


async def stored_model(store: Store) -> tuple[str, int] | None:
    rows = list(await store.conn.execute_fetchall("SELECT model_id, dim FROM embedding_model"))
    return (rows[0][0], int(rows[0][1])) if rows else None


async def ensure_model(store: Store, model_id: str, dim: int) -> None:
    """Record the model on first use; refuse another one.

    Raises ModelMismatch naming both models and the way out (`deja reembed`).
    """
    current = await stored_model(store)
    if current is not None:
        if current != (model_id, dim):
            raise ModelMismatch(
                f"the database holds vectors of {current[0]} ({current[1]} dims), not of the "
                f"configured model {model_id} ({dim} dims); run `deja reembed` to rebuild them "
                f"with the new model, or set DEJA_EMBED_MODEL back"
            )
        return
    async with store.transaction():
        rows = list(await store.conn.execute_fetchall("SELECT model_id, dim FROM embedding_model"))
        if rows:
            if (rows[0][0], int(rows[0][1])) != (model_id, dim):
                raise ModelMismatch(f"another process registered model {rows[0][0]} meanwhile")
            return
        await _drop_vectors(store)
        await store.conn.execute(
            "INSERT INTO embedding_model (id, model_id, dim, created_at) "
            "VALUES (1, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (model_id, dim),
        )


async def _drop_vectors(store: Store) -> None:
    """Inside a transaction: no chunks, hence no vectors (they cascade)."""
    await store.conn.execute("DELETE FROM chunks")


async def reembed(store: Store, embedder: Embedder,
                  progress: Callable[[int, int], None] | None = None) -> EmbedSummary:
    """Drop every vector, record the embedder's model, and embed everything again."""
    async with store.transaction():
        await _drop_vectors(store)
        await store.conn.execute("DELETE FROM embedding_model")
        await store.conn.execute(
            "INSERT INTO embedding_model (id, model_id, dim, created_at) "
            "VALUES (1, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (embedder.model_id, embedder.dim),
        )
        await store.conn.execute("UPDATE records SET embed_state = 0 WHERE embed_state = 1")
    return await embed_pending(store, embedder, progress=progress)


def embedding_text(kind: str, text: str, call: str | None) -> tuple[str, int]:
    """The text a record is embedded as, and where the record's own text starts in it.

    A tool result alone ("8 passed in 1.92s") says little; prefixed with the
    call that produced it ("Bash pytest tests/test_cart.py") its vector can
    match a question about running the cart tests. Terminal escape codes
    become spaces (offsets into the text stay right).
    """
    text = clean_text(text, keep_length=True)
    if kind == "tool_result" and call:
        prefix = call[:CALL_PREFIX_CHARS] + "\n"
        return prefix + text, len(prefix)
    return text, 0


def windows_for(embedder: Embedder, kind: str, text: str,
                call: str | None = None) -> list[tuple[int, int, str]]:
    """(char_start, char_end, window text) for the parts of a record that get vectors.

    Offsets are into the record's own text (a prefix added for context maps to 0).
    """
    first_only = kind in FIRST_WINDOW_ONLY
    text, shift = embedding_text(kind, text, call)
    head = text[: FIRST_WINDOW_CHARS if first_only else MAX_CHARS]
    spans = embedder.window_spans(head)
    spans = spans[:1] if first_only else spans[:MAX_WINDOWS]
    out: list[tuple[int, int, str]] = []
    for start, end in spans:
        piece = head[start:end]
        if not piece.strip():
            continue
        out.append((max(start - shift, 0), max(end - shift, 0), piece))
    return out


def _embed_batch(embedder: Embedder, rows: list[Any]
                 ) -> tuple[list[tuple[int, int, int, int]], list[Any], list[tuple[bytes, bytes]]]:
    """Blocking (worker thread): windows and (int8 vector, sign bits) for a batch of records."""
    chunks: list[tuple[int, int, int, int]] = []  # (row index, seq, start, end)
    texts: list[str] = []
    for i, row in enumerate(rows):
        for seq, (start, end, piece) in enumerate(windows_for(embedder, row[1], row[2], row[3])):
            chunks.append((i, seq, start, end))
            texts.append(piece)
    if not texts:
        return chunks, rows, []
    vectors = embedder.embed(texts)
    return chunks, rows, list(zip(int8_rows(vectors), bits_rows(vectors)))


async def embed_pending(
    store: Store,
    embedder: Embedder,
    *,
    batch_records: int = 64,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbedSummary:
    """Embed every waiting record, newest first; see the module docstring.

    Raises ModelMismatch if the database belongs to another model.
    """
    await ensure_model(store, embedder.model_id, embedder.dim)
    summary = EmbedSummary()
    started = time.perf_counter()
    total = await pending_count(store)
    done = 0
    if progress:
        progress(0, total)
    conn = store.conn
    while not (should_stop and should_stop()):
        rows = list(await conn.execute_fetchall(
            "SELECT r.id, r.kind, r.text, "
            "CASE WHEN r.kind = 'tool_result' AND r.tool_use_id IS NOT NULL THEN "
            "(SELECT substr(c.text, 1, 400) FROM records c WHERE c.tool_use_id = r.tool_use_id "
            "AND c.kind = 'tool_call' LIMIT 1) END "
            "FROM records r WHERE r.embed_state = 0 ORDER BY r.ts DESC LIMIT ?",
            (batch_records,),
        ))
        if not rows:
            break
        chunks, rows, blobs = await anyio.to_thread.run_sync(_embed_batch, embedder, rows)
        async with store.transaction():
            # Re-check under the write lock: another process may have embedded
            # some of these meanwhile (a reembed, or a second embedder).
            ids = [row[0] for row in rows]
            still = {r[0] for r in await conn.execute_fetchall(
                f"SELECT id FROM records WHERE embed_state = 0 AND id IN "
                f"({', '.join('?' for _ in ids)})", ids)}
            last_chunk = await conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM chunks")
            first = int(next(iter(last_chunk))[0])
            chunk_rows = []
            vec_rows = []
            for n, ((i, seq, start, end), (vec, bits)) in enumerate(zip(chunks, blobs)):
                row = rows[i]
                if row[0] not in still:
                    continue
                chunk_id = first + n + 1
                chunk_rows.append((chunk_id, row[0], seq, start, end, bits))
                vec_rows.append((chunk_id, vec))
            await conn.executemany(
                "INSERT INTO chunks (id, record_id, seq, char_start, char_end, bits) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                chunk_rows,
            )
            await conn.executemany("INSERT INTO chunk_vectors (chunk_id, vec) VALUES (?, ?)",
                                   vec_rows)
            await conn.executemany(
                "UPDATE records SET embed_state = 1 WHERE id = ?", [(i,) for i in still]
            )
        summary.embedded_records += len(still)
        summary.chunks += len(chunk_rows)
        done += len(rows)
        if progress:
            progress(min(done, total), total)
    summary.pending = await pending_count(store)
    summary.seconds = time.perf_counter() - started
    return summary
