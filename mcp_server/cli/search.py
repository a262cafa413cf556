"""`deja search`: hybrid search from the command line (read-only; creates nothing).

Calls the same `search()` the memory_search tool calls. The model is loaded
only when it can help: not in keyword mode, not before any vector exists.
On a PostgreSQL URL, `search_pg()` (mcp_server/search/pg/): the same request
and result, each hit naming the machine it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from ingest.config import PostgresUrl
from ingest.db import connect
from ingest.errors import DejaError
from ingest.store import Store

from ..projects import expand_project_arg
from ..search import MODES, Resources, SearchRequest, SearchResult, search
from .common import Subparsers, require_database

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="search everything ingested",
                       description="Hybrid search (FTS5 BM25 + vectors, fused) over prompts, "
                                   "answers, thinking, tool calls and results, summaries. "
                                   "Any text works as a query.")
    p.add_argument("query", help="words or a question; \"quoted phrases\" and prefix* work")
    p.add_argument("--json", action="store_true", help="print {\"hits\": [...]} as JSON")
    p.add_argument("--limit", "-n", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--mode", choices=MODES, default="hybrid",
                   help="hybrid (default), keyword (BM25 only, no model) or vector")
    p.add_argument("--kind", action="append", dest="kinds", metavar="KIND",
                   help="only records of this kind (repeatable): prompt, assistant, thinking, "
                        "tool_call, tool_result, summary, compact_summary, memory, ...")
    p.add_argument("--tool", help="only calls and results of this tool (e.g. Bash)")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="from this time: 2026-05-01, 7d, 2w, yesterday ...")
    p.add_argument("--until", help="before this time (same forms as --since)")
    p.add_argument("--max-tokens", type=int, help="bound the total size of the hits")
    p.add_argument("--format", choices=("terminal", "plain"), default=None,
                   help="terminal: the coloured view, highlighted words (default on a terminal); "
                        "plain: one hit per two lines (default when piped)")
    p.set_defaults(handler=run, postgres_handler=run_postgres)


def _request(args: argparse.Namespace) -> SearchRequest:
    """The request of the command line; checked before any model loads (InvalidQuery)."""
    # `--project .` from inside a project (or one of its worktrees).
    args.project = expand_project_arg(args.project)
    return SearchRequest(args.query, mode=args.mode, limit=args.limit, kinds=args.kinds,
                         session_id=args.session, project=args.project, tool=args.tool,
                         since=args.since, until=args.until, max_tokens=args.max_tokens)


async def _search(db_path: Path, args: argparse.Namespace) -> SearchResult:
    require_database(db_path)
    embedder: Any = None
    embedder_error = None
    request = _request(args)
    store = await Store.open(db_path)
    vector_conn: aiosqlite.Connection | None = None
    try:
        has_vectors = await store.conn.execute_fetchall("SELECT 1 FROM chunks LIMIT 1")
        if args.mode != "keyword" and not has_vectors:
            # Loading the model costs seconds; without vectors it cannot help.
            embedder_error = "no vectors yet (run `deja embed`)"
        elif args.mode != "keyword":
            try:
                from ingest.embed import load_configured_embedder  # the model code only when used

                embedder = await anyio.to_thread.run_sync(load_configured_embedder, os.environ)
            except DejaError as exc:
                embedder_error = str(exc)
        if embedder is not None and args.mode == "hybrid":
            # The vector ranker on its own connection, beside the keyword ranker.
            vector_conn = await connect(db_path, readonly=True)
        ml_embedder = None
        if args.mode == "hybrid":
            from ..search.multilingual import load_ml_embedder

            ml_embedder = await load_ml_embedder(store.conn)
        return await search(store.conn, request, Resources(
            embedder=embedder, embedder_error=embedder_error, vector_conn=vector_conn,
            ml_embedder=ml_embedder))
    finally:
        await store.close()
        if vector_conn is not None:
            await vector_conn.close()


async def _search_postgres(target: PostgresUrl, args: argparse.Namespace) -> SearchResult:
    """Raises DatabaseError (unreachable, no deja tables, a failed statement), InvalidQuery."""
    from ingest.config import machine_from
    from ingest.pg.connect import describe, require_psycopg
    from ingest.pg.store import PgStore

    from ..search.pg import search_pg

    request = _request(args)
    require_psycopg()
    import psycopg

    store = await PgStore.open(target, machine_from(os.environ), os.environ, create=False)
    try:
        embedder: Any = None
        embedder_error = None
        if args.mode != "keyword":
            cur = await store.conn.execute("SELECT 1 FROM chunks LIMIT 1")
            if await cur.fetchone() is None:
                embedder_error = "no vectors yet (run `deja embed`)"
            else:
                try:
                    from ingest.embed import load_configured_embedder

                    embedder = await anyio.to_thread.run_sync(load_configured_embedder,
                                                              os.environ)
                except DejaError as exc:
                    embedder_error = str(exc)
        ml_embedder = None
        if args.mode == "hybrid":
            from ..search.pg.multilingual import load_ml_embedder_pg

            ml_embedder = await load_ml_embedder_pg(store.conn)
        return await search_pg(store.conn, request, embedder=embedder,
                               embedder_error=embedder_error, ml_embedder=ml_embedder)
    except psycopg.Error as exc:
        raise DejaError(f"PostgreSQL at {target}: {describe(exc, target, os.environ)}") from exc
    finally:
        await store.close()


def run_postgres(target: PostgresUrl, args: argparse.Namespace) -> int:
    return _print(anyio.run(_search_postgres, target, args), args)


def run(db_path: Path, args: argparse.Namespace) -> int:
    return _print(anyio.run(_search, db_path, args), args)


def _print(result: SearchResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for note in result.notes:
        sys.stderr.write(f"note: {note}\n")
    if not result.hits:
        print("no hits")
        return 0
    if sys.stdout.isatty() or args.format == "terminal":
        from rich.console import Console

        from ..render.terminal import hits_view

        Console().print(hits_view(result.hits, args.query))
        return 0
    for h in result.hits:
        machine = f"  on {h.machine}" if h.machine is not None else ""
        print(f"{h.timestamp or '?'}  {h.kind}{' ' + h.tool_name if h.tool_name else ''}  "
              f"{h.project or ''}  session {h.session_id}  {h.handle}{machine}")
        print("    " + h.snippet)
    return 0
