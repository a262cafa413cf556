"""The third ranker on PostgreSQL: the multilingual-e5 vectors of the non-English records.

The same list as SQLite's (../multilingual.py): the question embedded with
the extra's model ("query: "), compared by exact cosine with every stored
multilingual vector that passes the request's filters, the best
ML_CANDIDATES kept; the engine fuses it with fusion.py's weight
(`Fusion.multilingual`), as on SQLite. The comparison runs in SQL: pgvector's
`<=>` over `ml_vectors` (ingest/pg/ml_schema.py), the filters in the WHERE
before the LIMIT, so a filter never leaves fewer hits than exist; `+ 0` keeps
the planner off any approximate index an operator may add. SQLite keeps the
vectors in memory instead because it has no vector scan of its own; here the
scan is the database's, and about a fifth of the records have a vector.

The question's vector costs ~12-40 ms: `ml_query_vector` starts it while the
other rankers run, `ml_ranks_pg` takes it from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ..filters import SearchFilters
from ..multilingual import BUSY, QUERY_WAIT

if TYPE_CHECKING:
    import numpy as np
    import psycopg

    from ingest.multilingual import MlEmbedder

__all__ = ["ml_ranks_pg", "ml_query_vector", "load_ml_embedder_pg", "ml_status_pg"]

Ml = list[tuple[int, float]]  # (record id, cosine), best first

_SCAN_SQL = """
SELECT m.record_id, (m.vec <=> %s::vector) + 0 AS d
FROM ml_vectors m {join}
WHERE TRUE {filters}
ORDER BY d, m.record_id
LIMIT %s
"""


async def _rows(conn: psycopg.AsyncConnection, sql: str, params: Any = ()) -> list[Any]:
    cur = await conn.execute(sql, params)
    return list(await cur.fetchall())


async def _problem(conn: psycopg.AsyncConnection, embedder: MlEmbedder) -> str | None:
    """Why the database's multilingual vectors cannot serve this model, None if they can."""
    model = await _rows(conn, "SELECT model_id, dim FROM ml_model WHERE id = 1")
    if not model:
        return "no multilingual vectors yet (run `deja embed`)"
    if (model[0][0], int(model[0][1])) != (embedder.model_id, embedder.dim):
        return (f"the multilingual vectors are of {model[0][0]}, not {embedder.model_id}; "
                "run `deja reembed`")
    return None


async def ml_query_vector(embedder: MlEmbedder, query: str) -> np.ndarray | None:
    """The question's vector (worker thread); None when the model stayed busy QUERY_WAIT s."""
    return await anyio.to_thread.run_sync(embedder.query, query, QUERY_WAIT)


async def ml_ranks_pg(conn: psycopg.AsyncConnection, embedder: MlEmbedder,
                      filters: SearchFilters, n: int, qvec: np.ndarray | None
                      ) -> tuple[Ml, str]:
    """The multilingual ranker's list and "ok", or [] and why it did not run; `qvec` from
    `ml_query_vector` (None: the model was busy)."""
    from ingest.pg.vector_text import vector_literal

    if filters.project_dirs == []:
        return [], "ok"
    problem = await _problem(conn, embedder)
    if problem is not None:
        return [], problem
    if qvec is None:
        return [], BUSY
    where, params = filters.sql("%s")
    join = ("JOIN records r ON r.id = m.record_id LEFT JOIN sources src ON src.id = r.source_id"
            if where else "")
    rows = await _rows(conn, _SCAN_SQL.format(join=join, filters=where),
                       (vector_literal(qvec), *params, n))
    return [(int(rid), 1.0 - float(d)) for rid, d in rows], "ok"


async def load_ml_embedder_pg(conn: psycopg.AsyncConnection,
                              environ: dict[str, str] | None = None) -> MlEmbedder | None:
    """The multilingual model for one search (the CLI), or None: extra off or missing, or
    no multilingual vector in the database (loading it would cost for nothing)."""
    import os

    from ingest.multilingual import MlOnce

    once = MlOnce(os.environ if environ is None else environ)
    if not once.enabled or not await _rows(conn, "SELECT 1 FROM ml_vectors LIMIT 1"):
        return None
    return await once.get()


async def ml_status_pg(conn: psycopg.AsyncConnection, embedder: MlEmbedder | None,
                       error: str | None) -> dict[str, object]:
    """memory_status's `multilingual` on PostgreSQL: ../multilingual.py `ml_status`'s
    fields (no in-memory index here: `index_vectors` is None), and `pending`, the records
    the pass has still to look at."""
    from ingest.multilingual import ML_DIM, ML_MODEL_ID
    from ingest.pg.ml_schema import PENDING_WHERE

    model = await _rows(conn, "SELECT model_id, dim FROM ml_model WHERE id = 1")
    count = await _rows(conn, "SELECT COUNT(*) FROM ml_vectors")
    pending = await _rows(conn, f"SELECT COUNT(*) FROM records WHERE {PENDING_WHERE}")
    out: dict[str, object] = {"vectors": int(count[0][0]),
                              "model_id": model[0][0] if model else None,
                              "loaded": embedder is not None, "error": error,
                              "index_vectors": None, "pending": int(pending[0][0])}
    if model and (model[0][0], int(model[0][1])) != (ML_MODEL_ID, ML_DIM):
        out["error"] = (f"the multilingual vectors are of {model[0][0]}, not {ML_MODEL_ID}: "
                        "not used; run `deja reembed`")
    return out
