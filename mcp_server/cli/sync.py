"""`deja sync --to URL`: the local history (--db / DEJA_DB, else the user's file) copied into a
team PostgreSQL database as this machine (DEJA_MACHINE, else the host name).

The library is ingest/pg/sync.py (what is copied, how it stays exactly once). Running it again
copies nothing; a later `deja ingest --db URL` on this machine goes on from the copied cursors.
Progress goes to stderr on a terminal only; the summary to stdout (`--json`: one object).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from ingest.config import PostgresUrl, database_from, machine_from
from ingest.errors import DatabaseError

from .common import Subparsers, require_database

__all__ = ["register", "run_sync", "refuse_postgres_source"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sync", help="copy the local history into a team PostgreSQL database",
        description="Copy every record, memory, session, subagent run, token usage and read "
                    "cursor of the local database (--db) into the PostgreSQL database at URL, "
                    "as this machine (DEJA_MACHINE, else the host name). Running it again "
                    "adds nothing; `deja ingest --db URL` then goes on where the local one "
                    "stopped. Vectors come along when the database has no model yet or the "
                    "same one; otherwise the records wait for `deja embed --db URL`.")
    p.add_argument("--to", required=True, metavar="URL",
                   help="the team database: postgresql://user@host/db (password from the URL, "
                        "PGPASSFILE or PGPASSWORD)")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for this machine's ingest into URL to finish (default 10)")
    p.add_argument("--batch", type=int, default=1000, metavar="N",
                   help="records per PostgreSQL transaction (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_sync, postgres_handler=refuse_postgres_source)


def refuse_postgres_source(target: PostgresUrl, args: argparse.Namespace) -> int:
    """--db (or DEJA_DB) names a PostgreSQL database: sync reads a local file."""
    raise DatabaseError(f"{target.origin} is a PostgreSQL URL ({target}); `deja sync` copies a "
                        "local SQLite database into --to: pass the local file with --db")


def _target(value: str) -> PostgresUrl:
    """--to as a PostgreSQL URL; raises DatabaseError (one line) for anything else."""
    try:
        target = database_from(value, {})
    except DatabaseError:
        target = None
    if not isinstance(target, PostgresUrl):
        raise DatabaseError("--to must be a PostgreSQL URL (postgresql://user@host/db): "
                            "`deja sync` copies the local database into a team database")
    return PostgresUrl(target.url, "--to")


def run_sync(db_path: Path, args: argparse.Namespace) -> int:
    from ingest.cli import ProgressBar
    from ingest.pg.sync import sync_to_postgres

    target = _target(args.to)
    if args.batch < 1:
        raise DatabaseError("--batch must be at least 1")
    require_database(db_path)
    bar = None if args.quiet or args.json or not sys.stderr.isatty() else \
        ProgressBar(sys.stderr, label="sync ")
    try:
        summary = anyio.run(lambda: sync_to_postgres(
            db_path, target, machine_from(os.environ), os.environ, batch_records=args.batch,
            wait_seconds=args.wait, progress=bar))
    finally:
        if bar:
            bar.finish()
    out = {"database": str(db_path), "to": str(target), **summary.to_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        print(_text(out))
    return 0


def _text(s: dict[str, Any]) -> str:
    """The summary for people: what was copied, what was there, and what to do next."""
    lines = [
        f"synced {s['database']} into {s['to']} as machine {s['machine']!r} "
        f"in {s['seconds']} s",
        f"records: {s['records_copied']} copied, {s['records_already_there']} already there",
        f"memories: {s['memories_copied']} copied, {s['memories_already_there']} already there",
        f"sessions: {s['sessions_copied']} copied, {s['sessions_already_there']} already there",
        f"subagent runs: {s['agent_runs_copied']} copied, "
        f"{s['agent_runs_already_there']} already there",
        f"files: {s['sources_copied']} copied, {s['sources_already_there']} already there "
        f"({s['cursors_copied']} read cursors copied)",
        f"token usage: {s['responses_copied']} responses copied, "
        f"{s['responses_already_there']} already there",
    ]
    if s["vectors"] == "copied":
        lines.append(f"vectors: {s['chunks_copied']} chunks copied ({s['local_model']})")
    elif s["vectors"] == "pending":
        lines.append(f"vectors not copied: the database holds vectors of "
                     f"{s['database_model']}, this one of {s['local_model']}; "
                     f"{s['pending_embeddings']} records wait: run "
                     f"`deja --db '{s['to']}' embed`")
    elif s["pending_embeddings"]:
        lines.append(f"vectors: none here; {s['pending_embeddings']} records wait: run "
                     f"`deja --db '{s['to']}' embed`")
    return "\n".join(lines)
