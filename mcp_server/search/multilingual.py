"""The third ranker: multilingual-e5 vectors of the non-English records (optional extra).

Why: an English question over a Japanese, Chinese or Korean answer (or the
reverse) shares no word with it and MiniLM, trained on English, cannot bridge
the languages (ingest/multilingual.py). The records written in another script
have a multilingual-e5-small vector (`ml_vectors`, about a fifth of a
history); the question is embedded with the same model and compared by exact
dot product with all of them, held in memory (a few thousand vectors of 384
bytes: a scan costs well under a millisecond). The best ML_CANDIDATES, after
the request's filters, are fused as a third reciprocal-rank list (fusion.py).

Only hybrid search uses it; without the extra, or with DEJA_MULTILINGUAL=0,
no `MlEmbedder` is passed and nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite
import anyio

from .filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np

    from ingest.multilingual import MlEmbedder

__all__ = ["ML_CANDIDATES", "MlIndex", "ml_ranks", "load_ml_embedder", "ml_status"]

ML_CANDIDATES = 100
# How long a search waits for the model while the background pass embeds a batch (seconds
# at first ingest): past it, this search goes without the third list and says so.
QUERY_WAIT = 0.3

Ml = list[tuple[int, float]]  # (record id, cosine), best first


@dataclass
class _Snapshot:
    ids: np.ndarray   # int64 record ids, ascending
    mat: np.ndarray   # (n, dim) float32, each row of unit length


class MlIndex:
    """Every multilingual vector in memory: loaded once, then only the ids above the last."""

    def __init__(self) -> None:
        self._snap: _Snapshot | None = None
        self._lock = anyio.Lock()

    async def refresh(self, conn: aiosqlite.Connection) -> _Snapshot:
        """The current snapshot; a shrunken table (a `deja reembed`, deletions) reloads it all."""
        import numpy as np

        async with self._lock:
            rows = list(await conn.execute_fetchall(
                "SELECT COUNT(*), COALESCE(MAX(record_id), 0) FROM ml_vectors"))
            count, top = int(rows[0][0]), int(rows[0][1])
            snap = self._snap
            if snap is not None and (count < len(snap.ids) or
                                     (len(snap.ids) and top < int(snap.ids[-1]))):
                snap = None
            last = int(snap.ids[-1]) if snap is not None and len(snap.ids) else 0
            if snap is None or top > last:
                new = list(await conn.execute_fetchall(
                    "SELECT record_id, vec FROM ml_vectors WHERE record_id > ? ORDER BY record_id",
                    (last,)))
                ids = np.array([r[0] for r in new], dtype=np.int64)
                mat = _unit(b"".join(r[1] for r in new), len(new))
                if snap is not None:
                    ids, mat = np.concatenate([snap.ids, ids]), np.concatenate([snap.mat, mat])
                snap = _Snapshot(ids=ids, mat=mat)
            self._snap = snap
            return snap


def _unit(raw: bytes, n: int) -> np.ndarray:
    """int8 blobs -> (n, dim) float32 rows of unit length (the int8 scale cancels)."""
    import numpy as np

    if n == 0:
        return np.zeros((0, 384), dtype=np.float32)
    mat = np.frombuffer(raw, dtype=np.int8).reshape(n, -1).astype(np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return mat / norms


async def ml_ranks(conn: aiosqlite.Connection, query: str, embedder: MlEmbedder,
                   filters: SearchFilters, n: int, index: MlIndex | None = None
                   ) -> tuple[Ml, str]:
    """The multilingual ranker's list and "ok", or [] and why it did not run."""
    import numpy as np

    state = list(await conn.execute_fetchall("SELECT model_id, dim FROM ml_state"))
    if not state:
        return [], "no multilingual vectors yet (run `deja embed`)"
    if (state[0][0], int(state[0][1])) != (embedder.model_id, embedder.dim):
        return [], (f"the multilingual vectors are of {state[0][0]}, not {embedder.model_id}; "
                    "run `deja reembed`")
    snap = await (index or MlIndex()).refresh(conn)
    if not len(snap.ids):
        return [], "ok"
    qvec = await anyio.to_thread.run_sync(embedder.query, query, QUERY_WAIT)
    if qvec is None:
        return [], "the multilingual model is busy embedding new records"
    sims = snap.mat @ qvec
    where, params = filters.sql()
    if where:
        # Filter first: the table is small, and a filtered query is never starved.
        allowed = [r[0] for r in await conn.execute_fetchall(
            "SELECT m.record_id FROM ml_vectors m JOIN records r ON r.id = m.record_id "
            f"LEFT JOIN sources src ON src.id = r.source_id WHERE 1{where}", params)]
        sims = np.where(np.isin(snap.ids, np.array(allowed, dtype=np.int64)), sims, -np.inf)
    top = np.argsort(-sims, kind="stable")[:n]
    return [(int(snap.ids[i]), float(sims[i])) for i in top if np.isfinite(sims[i])], "ok"


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
                    error: str | None) -> dict[str, object]:
    """What memory_status says of the multilingual side: vectors, their model, and whether
    search uses them (a database of another multilingual model is named, never mixed)."""
    from ingest.multilingual import ML_DIM, ML_MODEL_ID

    state = list(await conn.execute_fetchall("SELECT model_id, dim FROM ml_state"))
    count = list(await conn.execute_fetchall("SELECT COUNT(*) FROM ml_vectors"))
    out: dict[str, object] = {"vectors": int(count[0][0]),
                              "model_id": state[0][0] if state else None,
                              "loaded": embedder is not None, "error": error}
    if state and (state[0][0], int(state[0][1])) != (ML_MODEL_ID, ML_DIM):
        out["error"] = (f"the multilingual vectors are of {state[0][0]}, not {ML_MODEL_ID}: "
                        "not used; run `deja reembed`")
    return out
