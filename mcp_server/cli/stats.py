"""`deja stats`: what the database holds, and the analytics of the history (read-only).

The JSON is one object: the database-wide keys `Store.stats` has always given
(database, database_bytes, subagent_runs, files, missing_files, bytes_ingested,
last_ingest, pending_embeddings, chunks, embedding_model) and the analytics of
mcp_server/analytics (sessions, records, by_kind, messages, activity, projects,
models, tools, tokens, cost, sessions_longest, sessions_costliest,
files_edited, top_terms...), which `--project`, `--since` and `--until` narrow.
README.md "deja stats" documents every key.

On PostgreSQL (`--db postgresql://...`) the counts are `PgStore.stats`' (every
machine's records, plus `engine`, `machine`, `records_by_machine`) and the
analytics are the same modules run on the store's PgConn, filters and --html
included; the top terms come from ts_stat (analytics/terms.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from ingest.config import PostgresUrl, config_path_from
from ingest.db import connect
from ingest.store import Store

from ..projects import expand_project_arg
from .common import Subparsers, read_postgres, read_store

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "stats", help="what the database holds, and analytics of the history",
        description="Sessions and messages per day, week and month, per project and model; "
                    "tool use and error rates; tokens and an estimated cost per model; the "
                    "longest and costliest sessions, most-edited files and top terms. Costs use "
                    "the price table shipped with deja ([prices] in the settings file "
                    "overrides it).")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="from this time: 2026-05-01, 7d, 2w, yesterday ...")
    p.add_argument("--until", help="before this time (same forms as --since)")
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="rows in the rankings (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--html", metavar="FILE", type=Path,
                   help="also write a self-contained HTML report with charts to FILE")
    p.set_defaults(handler=run, postgres_handler=run_postgres)


async def _gather(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    from ..analytics import StatsFilters, collect, load_prices

    prices = load_prices(config_path_from(os.environ))
    base = await store.stats()
    filters = StatsFilters(project=expand_project_arg(args.project), since=args.since,
                           until=args.until)
    # A second, read-only connection: the top terms scan in parallel (analytics/collect.py).
    terms_conn = await connect(store.path, readonly=True)
    try:
        figures = await collect(store.conn, filters, prices, top=max(1, args.top),
                                terms_conn=terms_conn)
    finally:
        await terms_conn.close()
    return {**base, **figures}


def run(db_path: Path, args: argparse.Namespace) -> int:
    stats = anyio.run(read_store, db_path, lambda store: _gather(store, args))
    return _output(stats, args)


def _output(stats: dict[str, Any], args: argparse.Namespace) -> int:
    """The figures as JSON, or the terminal report; the HTML report too with --html."""
    if args.html is not None:
        from ..analytics.report import render_html

        # The report names projects, sessions and files: private, like an export (0600).
        fd = os.open(args.html, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render_html(stats))
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    from ..analytics.terminal import render

    render(stats, sys.stdout)
    if args.html is not None:
        print(f"report written to {args.html}")
    return 0


def run_postgres(target: PostgresUrl, args: argparse.Namespace) -> int:
    """`deja stats` on PostgreSQL: `PgStore.stats`' counts (every machine's records, by
    machine too) and the same analytics, run on the store's PgConn. Raises DejaError."""
    from ingest.pg.store import PgStore

    async def gather(store: PgStore) -> dict[str, Any]:
        from ..analytics import StatsFilters, collect, load_prices

        base = await store.stats()
        filters = StatsFilters(project=expand_project_arg(args.project), since=args.since,
                               until=args.until)
        prices = load_prices(config_path_from(os.environ))
        # PgConn runs the analytics' SQL as aiosqlite's connection does (ingest/pg/sqlconn.py).
        figures = await collect(store.reads, filters, prices,  # type: ignore[arg-type]
                                top=max(1, args.top))
        return {**base, **figures}

    stats = anyio.run(read_postgres, target, gather)
    return _output(stats, args)
