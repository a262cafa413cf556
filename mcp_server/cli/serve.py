"""`deja serve`: the MCP stdio server Claude Code starts.

Logging is this command's own: stderr shows warnings (more with -v), and a
rotating debug log file in the data folder keeps the full story of a server
that nobody watches.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anyio

from ingest.config import PostgresUrl

from .common import Subparsers

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the MCP stdio server (for Claude Code)",
                       description="Run the MCP server on stdin/stdout. It ingests the "
                                   "transcript roots in the background (one process per "
                                   "database at a time) and serves the memory tools.")
    p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--root", action="append", type=Path, metavar="DIR",
                   help="transcript root to watch (repeatable; default as for ingest)")
    p.add_argument("--no-ingest", action="store_true",
                   help="serve only; leave ingesting to `deja ingest --watch` or another server")
    p.add_argument("--log-file", type=Path,
                   help="debug log file (default: deja-server.log in the data folder)")
    # The dispatcher leaves stderr at its quiet default; _log_to_file sets the levels.
    p.set_defaults(handler=run, postgres_handler=run_postgres, own_logging=True)


def _log_to_file(log_file: Path, verbose: int) -> None:
    """Debug log to `log_file` (private, rotated); stderr at warning, or more with -v."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        from logging.handlers import RotatingFileHandler

        handler = RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=2)
        os.chmod(log_file, 0o600)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        for handler_ in root.handlers:
            if handler_ is not handler and isinstance(handler_, logging.StreamHandler):
                handler_.setLevel(logging.DEBUG if verbose > 1 else
                                  logging.INFO if verbose else logging.WARNING)
        for noisy in ("aiosqlite", "watchfiles", "mcp", "httpx"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    except OSError as exc:
        sys.stderr.write(f"deja: cannot write log file {log_file}: {exc}\n")


def run_postgres(target: PostgresUrl, args: argparse.Namespace) -> int:
    """Run the MCP server on a PostgreSQL database, as this machine (DEJA_MACHINE)."""
    from ingest.config import default_db_path, machine_from

    return run(default_db_path(os.environ), args, pg=target, machine=machine_from(os.environ))


def run(db_path: Path, args: argparse.Namespace, *, pg: PostgresUrl | None = None,
        machine: str = "") -> int:
    """Run the MCP server until stdin closes or SIGTERM."""
    from ingest.config import config_path_from, default_data_dir
    from ingest.discover import default_roots
    from ingest.errors import ConfigError
    from ingest.settings import load_settings

    from ..server import ServerConfig, build_server, run_stdio

    _log_to_file(args.log_file or default_data_dir(os.environ) / "deja-server.log", args.verbose)
    ingest, exclude = not args.no_ingest, None
    try:
        exclude = load_settings(config_path_from(os.environ), os.environ).exclude
    except ConfigError as exc:
        # Ingesting without the user's exclusions could store a project they keep out.
        logging.getLogger("deja").error("%s; serving without ingesting until it is fixed", exc)
        ingest = False
    config = ServerConfig(
        db_path=db_path,
        roots=list(args.root) if args.root else default_roots(os.environ),
        environ=dict(os.environ),
        ingest=ingest,
        exclude=exclude,
        pg=pg,
        machine=machine,
    )
    # SIGTERM ends the server as cleanly as stdin closing (see run_stdio).
    anyio.run(run_stdio, build_server(config))
    return 0
