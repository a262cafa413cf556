"""`deja install`, `deja uninstall`: register deja with Claude Code, or take it out again.

The command finds things (the installed deja, the `claude` command, the
scope's files), asks the library for a plan, shows it as a diff and applies it
once the user agrees: `--yes` agrees beforehand; without a terminal to ask on,
the plan is shown and nothing is written. The work is in mcp_server/install/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from ingest.config import PostgresUrl, default_data_dir
from ingest.errors import DejaError

from ..install import (
    HOOKS,
    Invocation,
    Plan,
    Target,
    apply,
    claude_command,
    deja_executable,
    plan_install,
    plan_uninstall,
    project_target,
    user_target,
)
from ..install.files import InstallState
from ..install.plan import STATE_FILE
from .common import Subparsers

__all__ = ["register", "run_install", "run_uninstall"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", action="store_true",
                   help="this git repository's .mcp.json and .claude/settings.json instead of "
                        "your user settings")
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    p.add_argument("--dry-run", action="store_true", help="show the change; write nothing")
    p.add_argument("--no-claude-cli", action="store_true",
                   help="edit ~/.claude.json directly even where the claude command exists")


def register(sub: Subparsers) -> None:
    events = ", ".join(spec.event for spec in HOOKS)
    p = sub.add_parser(
        "install", help="register deja's MCP server and hooks with Claude Code",
        description="Register deja's MCP server with Claude Code (`claude mcp add --scope user`, "
                    f"else ~/.claude.json) and add its hooks ({events}) to "
                    "~/.claude/settings.json, merged with what is there. Every file is backed up "
                    "before it changes and the change is shown first. Running it again changes "
                    "nothing. With the global --db, the server and hooks use that database.")
    _add_common(p)
    p.set_defaults(handler=run_install, postgres_handler=run_install)
    p = sub.add_parser(
        "uninstall", help="remove what `deja install` added",
        description="Remove deja's MCP server and hooks from Claude Code's files, recognised by "
                    "their command; everything else stays. A file nothing else changed since "
                    "install gets its original bytes back.")
    _add_common(p)
    p.set_defaults(handler=run_uninstall, postgres_handler=run_uninstall)


def _target(args: argparse.Namespace) -> Target:
    if args.project:
        return project_target(Path.cwd())
    claude = None if args.no_claude_cli else claude_command(os.environ)
    return user_target(Path.home(), os.environ, claude)


def _color(diff: str) -> str:
    if not sys.stdout.isatty():
        return diff
    paint = {"+": "\x1b[32m", "-": "\x1b[31m", "@": "\x1b[36m"}
    return "".join(f"{paint[line[0]]}{line}\x1b[0m" if line[:1] in paint
                   and not line.startswith(("+++", "---")) else line
                   for line in diff.splitlines(keepends=True))


def _show(plan: Plan) -> None:
    print(f"deja {plan.action} ({plan.target.scope} scope):")
    for change in plan.changes:
        how = "".join(f"\n    runs: {' '.join(argv)}" for argv in change.commands)
        source = f" (the original content, from {change.restores_backup})" \
            if change.restores_backup else ""
        gone = " (deja created it; it is removed)" if change.after is None else ""
        print(f"  {change.what}: {change.path}{source}{gone}{how}")
    if any(change.commands for change in plan.changes):
        print("  (Claude Code writes ~/.claude.json in its own layout; the diff shows deja's entry)")
    for note in plan.notes:
        print(f"  note: {note}")
    print()
    for change in plan.changes:
        sys.stdout.write(_color(change.diff()))
    sys.stdout.flush()


def _confirmed(args: argparse.Namespace, action: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        sys.stderr.write(f"deja: nothing written: no terminal to confirm on; "
                         f"run `deja {action} --yes` to apply the change above\n")
        return False
    try:
        answer = input(f"Apply this {action}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    sys.stderr.write("deja: nothing written\n")
    return False


class _Masked(io.TextIOBase):
    """stdout with a secret (a PostgreSQL password, as is and URL-quoted) written as ***."""

    def __init__(self, out: TextIO, secret: str) -> None:
        self._out, self._forms = out, sorted({secret, quote(secret, safe="")}, key=len,
                                             reverse=True)

    def write(self, text: str) -> int:
        for form in self._forms:
            text = text.replace(form, "***")
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return self._out.isatty()


def _execute(plan: Plan, args: argparse.Namespace, secret: str | None = None) -> int:
    """Show, confirm and apply `plan`; with a `secret`, nothing printed or raised holds it."""
    if not secret:
        return _apply_plan(plan, args)
    masked = _Masked(sys.stdout, secret)
    try:
        with contextlib.redirect_stdout(masked):
            return _apply_plan(plan, args)
    except DejaError as exc:
        raise type(exc)(str(exc).replace(secret, "***").replace(quote(secret, safe=""), "***")
                        ) from None


def _apply_plan(plan: Plan, args: argparse.Namespace) -> int:
    if not plan.changes:
        where = f"{plan.target.mcp_config} and {plan.target.settings}"
        print(f"deja is already installed in {where}: nothing to change"
              if plan.action == "install" else f"nothing of deja's in {where}: nothing to change")
        for note in plan.notes:
            print(f"note: {note}")
        return 0
    _show(plan)
    if args.dry_run:
        return 0
    if not _confirmed(args, plan.action):
        return 1
    for line in apply(plan, default_data_dir(os.environ)):
        print(line)
    if plan.action == "install":
        print("Start a new Claude Code session to use it (`claude mcp list` shows the server).")
    return 0


def run_install(db: Path | PostgresUrl, args: argparse.Namespace) -> int:
    """Plan deja's registration and hooks, show the diff, apply it once agreed.

    A PostgreSQL URL (--db or DEJA_DB) is written as DEJA_DB in the server's environment
    and before each hook command, never as an argument (entries.py `Invocation`). A
    password in it is written too (Claude Code's files are the user's own), with a note
    that ~/.pgpass is the better place; every line printed here masks it.
    """
    windows = sys.platform == "win32"
    executable = deja_executable(sys.executable, windows, os.environ)
    if isinstance(db, PostgresUrl):
        invocation = Invocation(executable, None, windows, db_url=db.url)
    else:
        invocation = Invocation(executable, os.path.abspath(db) if args.db else None, windows)
    plan = plan_install(_target(args), invocation)
    if isinstance(db, PostgresUrl) and db.password and plan.changes:
        plan.notes.append(f"{db.origin} holds a password: it is written in plain text into "
                          f"{plan.target.mcp_config} and {plan.target.settings} (shown here as "
                          "***); keep it in ~/.pgpass (or PGPASSFILE) and install with the URL "
                          "without it")
    return _execute(plan, args, secret=db.password if isinstance(db, PostgresUrl) else None)


def run_uninstall(db: Path | PostgresUrl, args: argparse.Namespace) -> int:
    """Plan the removal of deja's entries, show the diff, apply it once agreed."""
    state = InstallState.load(default_data_dir(os.environ) / STATE_FILE)
    return _execute(plan_uninstall(_target(args), state), args)
