"""`deja browse`: the terminal UI over the history (read-only; mcp_server/browse/).

Textual is imported here, when the command runs, never by the other commands.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from ingest.config import PostgresUrl
from ingest.store import Store

from .common import Subparsers, Target, read_postgres, require_database

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("browse", help="a terminal UI over the history",
                       description="Browse sessions, read them, search live, see a session's "
                                   "checkpoint and the command that resumes it, and run the "
                                   "diagnostics. Keys are shown at the bottom; ? lists them all, "
                                   "q quits.")
    p.set_defaults(handler=run, postgres_handler=run)


def run(target: Target, args: argparse.Namespace) -> int:
    """The UI over a SQLite file or a PostgreSQL database (the same screens: every query
    runs on `store.reads`, search on the engine's own rankers: browse/data.py)."""
    if not isinstance(target, PostgresUrl):
        require_database(target)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("deja: browse needs a terminal; `deja sessions` and `deja show` "
                         "print the same history to a pipe\n")
        return 1
    anyio.run(_browse, target)
    return 0


async def _browse(target: Target) -> None:
    from ..browse.app import BrowseApp

    if isinstance(target, PostgresUrl):
        await read_postgres(target, lambda store: BrowseApp(target, store).run_async())
        return
    store = await Store.open(target)
    try:
        await BrowseApp(target, store).run_async()
    finally:
        await store.close()
