"""`deja`: the command line.

This module is the dispatcher: the global options (`--db`, `-v`, `--version`),
logging, and the mapping of failures to exit codes. Each command group lives
in a module of its own that registers its subparsers and holds its handlers
(`set_defaults(handler=...)`); a new command is a new module plus one line in
`_COMMANDS`, whose order is the order `deja --help` lists them in.

Each command opens the database, makes one library call and prints the
result; library errors (`DejaError`) become one-line messages and exit code 1,
bad usage exit code 2. `DEJA_DB` is read here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ingest import __version__
from ingest.config import db_path_from
from ingest.errors import DejaError

from . import history, ingest, install, search, serve, stats
from .common import Subparsers

__all__ = ["main", "build_parser"]

_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    serve.register,
    ingest.register_ingest,
    stats.register,
    search.register,
    history.register_show,
    history.register_sessions,
    ingest.register_embed,  # embed, reembed
    install.register,  # install, uninstall
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deja",
        description="Long-term memory for Claude Code: your transcripts, searchable.",
    )
    parser.add_argument("--db", metavar="PATH",
                        help="database file (default: $DEJA_DB, else ~/.local/share/deja/deja.db)")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log to stderr (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"deja {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _COMMANDS:
        register(sub)
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A command that sets own_logging (serve) sets its stderr level itself.
    _configure_logging(0 if getattr(args, "own_logging", False) else args.verbose)
    try:
        db_path = db_path_from(args.db, os.environ)
        code: int = args.handler(db_path, args)
        return code
    except DejaError as exc:
        sys.stderr.write(f"deja: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `deja search ... | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
