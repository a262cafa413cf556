"""`search_pg`: one search on PostgreSQL, the SQLite engine's steps with PostgreSQL's SQL.

The same order as ../engine.py: resolve the filters, run the keyword and
vector rankers (keyword.py, vector.py) and, in hybrid mode with the
multilingual extra, the third one (multilingual.py), fuse and smooth
(../assemble.py, ../fusion.py), read the hits' rows and build them
(../assemble.py). What the SQLite engine does and this one does not: the
on-the-spot vectors of records still waiting for theirs (here they are found
by keyword only, and a note says how many wait).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import anyio

from ingest.pg.text import clean

from ..assemble import HIT_COLUMNS, Keyword, Ml, Vector, build_hits, fused_order, rows_wanted
from ..filters import SearchFilters
from ..fusion import FUSION, Fusion, smooth_by_source
from ..request import SearchRequest
from ..results import SearchResult
from ..times import parse_time
from .keyword import keyword_ranks_pg
from .multilingual import ml_query_vector, ml_ranks_pg
from .vector import vector_ranks_pg

if TYPE_CHECKING:
    import psycopg

    from ingest.embed import Embedder
    from ingest.multilingual import MlEmbedder

__all__ = ["search_pg", "resolve_project_pg"]


async def _rows(conn: psycopg.AsyncConnection, sql: str, params: Any = ()) -> list[Any]:
    cur = await conn.execute(sql, params)
    return list(await cur.fetchall())


async def resolve_project_pg(conn: psycopg.AsyncConnection, project: str | None
                             ) -> list[str] | None:
    """The project folders a `project` argument means (None: all): mcp_server/projects.py's
    `resolve_project`, the same SQL, run through PgConn (path rules, then the folders that
    share a git remote, every machine's)."""
    from ingest.pg.sqlconn import PgConn

    from ...projects import resolve_project

    # PgConn offers the aiosqlite calls resolve_project makes (ingest/pg/sqlconn.py).
    return await resolve_project(cast(Any, PgConn(conn)), project)


async def search_pg(conn: psycopg.AsyncConnection, request: SearchRequest, *,
                    embedder: Embedder | None = None, embedder_error: str | None = None,
                    ml_embedder: MlEmbedder | None = None, fusion: Fusion = FUSION,
                    now: datetime | None = None) -> SearchResult:
    """Search the shared history; see the module docstring. `ml_embedder`: the
    multilingual extra's model (None: two rankers). Raises InvalidQuery for a time it
    cannot read, psycopg errors for a failed statement (the CLI words them)."""
    started = time.perf_counter()
    filters = SearchFilters(
        kinds=list(request.kinds) if request.kinds else None,
        session_id=request.session_id or None,
        project_dirs=await resolve_project_pg(conn, request.project),
        tool=request.tool or None,
        since=parse_time(request.since, now) if request.since else None,
        until=parse_time(request.until, now) if request.until else None,
    )
    result = SearchResult(hits=[], query=request.query, mode=request.mode)
    result.pending_embeddings = int((await _rows(
        conn, "SELECT COUNT(*) FROM records WHERE embed_state = 0"))[0][0])
    n = max(fusion.candidates, request.limit * 2)
    query = clean(request.query) or ""  # no NUL, no lone surrogate: SQL and model refuse them
    passages: dict[int, int] = {}
    ml: Ml = []
    if ml_embedder is not None and request.mode == "hybrid" and fusion.multilingual:
        qvec: list[Any] = []
        async with anyio.create_task_group() as tg:
            # The question's multilingual vector in a thread while the other rankers run.
            tg.start_soon(_append, qvec, ml_query_vector(ml_embedder, query))
            keyword, vector = await _two_rankers(conn, request, query, embedder,
                                                 embedder_error, filters, n, fusion, result,
                                                 passages)
        ml, ml_status = await ml_ranks_pg(conn, ml_embedder, filters, n, qvec[0])
        if ml_status != "ok":
            result.notes.append(f"multilingual search unavailable ({ml_status})")
    else:
        keyword, vector = await _two_rankers(conn, request, query, embedder, embedder_error,
                                             filters, n, fusion, result, passages)
    order, fused = fused_order(request, keyword, vector, fusion, ml)
    if fused and len(order) > 1:
        ids = [rid for rid, _ in order]
        source = {rid: src for rid, src in await _rows(
            conn, "SELECT id, source_id FROM records WHERE id = ANY(%s) AND kind != 'memory'",
            (ids,))}
        order = smooth_by_source(order, source, fusion.neighbors, fusion.radius)
    kw_rank = {rid: (i + 1, s) for i, (rid, s) in enumerate(keyword)}
    vec_rank = {rid: (i + 1, s, c) for i, (rid, s, c) in enumerate(vector)}
    ml_rank = {rid: (i + 1, s) for i, (rid, s) in enumerate(ml)}
    if order:
        wanted = rows_wanted(order, request.limit)
        by_id = {row[0]: row for row in await _rows(
            conn, f"SELECT {HIT_COLUMNS}, r.machine FROM records r "
                  "LEFT JOIN sessions s ON s.session_id = r.session_id WHERE r.id = ANY(%s)",
            (wanted,))}
        chunk_ids = [vec_rank[rid][2] for rid in wanted if rid in vec_rank]
        spans = {cid: start for cid, start in await _rows(
            conn, "SELECT id, char_start FROM chunks WHERE id = ANY(%s)", (chunk_ids,))
        } if chunk_ids else {}
        result.hits = build_hits(request, order, by_id, spans, kw_rank, vec_rank, result,
                                 passages, ml_rank)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


async def _append(into: list[Any], value: Awaitable[Any]) -> None:
    into.append(await value)


async def _two_rankers(conn: psycopg.AsyncConnection, request: SearchRequest, query: str,
                       embedder: Embedder | None, embedder_error: str | None,
                       filters: SearchFilters, n: int, fusion: Fusion, result: SearchResult,
                       passages: dict[int, int]) -> tuple[Keyword, Vector]:
    """The keyword and vector lists (each empty when its ranker does not run), their notes
    on `result`; where a long keyword hit's best passage starts goes into `passages`."""
    keyword: Keyword = []
    vector: Vector = []
    if request.mode in ("hybrid", "keyword"):
        keyword = await keyword_ranks_pg(conn, query, filters, n,
                                         fusion.context if request.mode == "hybrid" else 0.0,
                                         starts=passages)
    if request.mode in ("hybrid", "vector"):
        vector, status = await _vector_side(conn, query, embedder, embedder_error,
                                            filters, n)
        result.vector_status = status
        if status != "ok":
            result.notes.append(f"vector search unavailable ({status}): keyword results only")
            if request.mode == "vector":
                keyword = await keyword_ranks_pg(conn, query, filters, n, starts=passages)
        elif result.pending_embeddings:
            result.notes.append(
                f"{result.pending_embeddings} records still await embedding; they are found "
                "by keyword only for now")
    return keyword, vector


async def _vector_side(conn: psycopg.AsyncConnection, query: str, embedder: Embedder | None,
                       embedder_error: str | None, filters: SearchFilters, n: int
                       ) -> tuple[Vector, str]:
    """The vector ranker's list and "ok", or [] and why it could not run."""
    if embedder is None:
        return [], embedder_error or "no embedding model loaded"
    model = await _rows(conn, "SELECT model_id, dim FROM embedding_model WHERE id = 1")
    if not model:
        return [], "no vectors yet (run `deja embed`)"
    if (model[0][0], int(model[0][1])) != (embedder.model_id, embedder.dim):
        return [], (f"the database holds vectors of {model[0][0]}, not {embedder.model_id}; "
                    "run `deja reembed`")
    qvec = await anyio.to_thread.run_sync(lambda: embedder.embed([query])[0])
    return await vector_ranks_pg(conn, qvec, filters, n), "ok"
