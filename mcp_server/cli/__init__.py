"""`deja`: the command line.

This module is the dispatcher: the global options (`--db`, `-v`, `--version`),
logging, and the mapping of failures to exit codes. Each command group lives
in a module of its own that registers its subparsers and holds its handlers
(`set_defaults(handler=...)`); a new command is a new module plus one line in
`_COMMANDS`, whose order is the order `deja --help` lists them in.

Command modules are imported when used: `deja hook` (run by Claude Code on
every session start, compaction, turn and exit) imports its own module and
nothing of search or serve. `deja hook` also fails open: a bad command line or
database path exits 0 there, never 2 (see cli/hook.py).

Each command opens the database, makes one library call and prints the
result; library errors (`DejaError`) become one-line messages and exit code 1,
bad usage exit code 2. `DEJA_DB` is read here and nowhere else.

A PostgreSQL URL (`--db postgresql://...`, ingest/pg/) goes to the command's
`postgres_handler` (set by every command: the PostgreSQL engine serves them all; sync's
is its source refusal); a command without one refuses it with one line and exit code 2 (a
hook: exit 0), never falling back to a local file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
from collections.abc import Sequence

from ingest import __version__
from ingest.config import PostgresUrl, database_from, not_served_message
from ingest.errors import DejaError

__all__ = ["main", "build_parser"]

# (the commands it adds, module in this package, its register function).
_COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("serve",), "serve", "register"),
    (("ingest",), "ingest", "register_ingest"),
    (("stats",), "stats", "register"),
    (("search",), "search", "register"),
    (("show",), "history", "register_show"),
    (("sessions",), "history", "register_sessions"),
    (("browse",), "browse", "register"),
    (("embed", "reembed"), "ingest", "register_embed"),
    (("hook",), "hook", "register"),
    (("install", "uninstall"), "install", "register"),
    (("doctor",), "doctor", "register"),
    (("export", "import"), "exchange", "register"),
    (("sync",), "sync", "register"),
)
# Commands that exit 0 whatever happens (Claude Code's hooks).
_FAIL_OPEN = {"hook"}
_GLOBAL_WITH_VALUE = {"--db"}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of `argv` (after the global options), without parsing it all."""
    args = iter(argv)
    for arg in args:
        if arg in _GLOBAL_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `deja` parser: every command, or only `only` when it names one (a lighter start)."""
    parser = argparse.ArgumentParser(
        prog="deja",
        description="Long-term memory for Claude Code: your transcripts, searchable.",
    )
    parser.add_argument("--db", metavar="PATH",
                        help="database file (default: $DEJA_DB, else ~/.local/share/deja/deja.db), "
                             "or a postgresql:// URL (the PostgreSQL engine)")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log to stderr (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"deja {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = [c for c in _COMMANDS if only in c[0]] or _COMMANDS
    for _, module, register in wanted:
        getattr(importlib.import_module(f".{module}", __name__), register)(sub)
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    if command in _FAIL_OPEN:
        return _fail_open_main(command, argv)
    args = build_parser(command).parse_args(argv)
    # A command that sets own_logging (serve) sets its stderr level itself.
    _configure_logging(0 if getattr(args, "own_logging", False) else args.verbose)
    try:
        target = database_from(args.db, os.environ)
        if isinstance(target, PostgresUrl):
            postgres_handler = getattr(args, "postgres_handler", None)
            if postgres_handler is None:
                sys.stderr.write(f"deja: {not_served_message(target, args.command)}\n")
                return 2
            code: int = postgres_handler(target, args)
            return code
        code = args.handler(target, args)
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


def _fail_open_main(command: str, argv: list[str]) -> int:
    """`main` for a fail-open command: any failure before its handler runs is one line on
    stderr and exit code 0 (the handler itself fails open)."""
    from .hook import fail_open

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # argparse's usage text: one line instead
            args, extra = build_parser(command).parse_known_args(argv)
    except SystemExit as exc:  # --help (0), or a bad command line (2: not for a hook)
        if exc.code in (0, None):
            return 0
        return fail_open("", (said.getvalue().strip().splitlines() or ["bad command line"])[-1],
                         None)
    if extra:
        return fail_open(getattr(args, "event", ""), f"unexpected arguments: {' '.join(extra)}",
                         None)
    _configure_logging(args.verbose)
    try:
        target = database_from(args.db, os.environ)
    except DejaError as exc:
        return fail_open(getattr(args, "event", ""), str(exc), None)
    if isinstance(target, PostgresUrl):
        code: int = args.postgres_handler(target, args)
        return code
    code = args.handler(target, args)
    return code
