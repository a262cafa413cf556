"""`deja browse`: the terminal UI over the history (read-only; mcp_server/browse/).

Textual is imported here, when the command runs, never by the other commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from ingest.store import Store

from .common import Subparsers, require_database

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("browse", help="a terminal UI over the history",
                       description="Browse sessions, read them, search live, see a session's "
                                   "checkpoint and the command that resumes it, and run the "
                                   "diagnostics. Keys are shown at the bottom; ? lists them all, "
                                   "q quits.")
    p.set_defaults(handler=run)


def run(db_path: Path, args: argparse.Namespace) -> int:
    require_database(db_path)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("deja: browse needs a terminal; `deja sessions` and `deja show` "
                         "print the same history to a pipe\n")
        return 1
    anyio.run(_browse, db_path)
    return 0


async def _browse(db_path: Path) -> None:
    from ..browse.app import BrowseApp

    store = await Store.open(db_path)
    try:
        await BrowseApp(db_path, store).run_async()
    finally:
        await store.close()
