"""`deja install`, `deja uninstall`: register deja with Claude Code, or take it out again.

The command finds things (the installed deja, the `claude` command, the
scope's files), asks the library for a plan, shows it as a diff and applies it
once the user agrees: `--yes` agrees beforehand; without a terminal to ask on,
the plan is shown and nothing is written. The work is in mcp_server/install/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ingest.config import default_data_dir

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
    p.set_defaults(handler=run_install)
    p = sub.add_parser(
        "uninstall", help="remove what `deja install` added",
        description="Remove deja's MCP server and hooks from Claude Code's files, recognised by "
                    "their command; everything else stays. A file nothing else changed since "
                    "install gets its original bytes back.")
    _add_common(p)
    p.set_defaults(handler=run_uninstall)


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


def _execute(plan: Plan, args: argparse.Namespace) -> int:
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


def run_install(db_path: Path, args: argparse.Namespace) -> int:
    """Plan deja's registration and hooks, show the diff, apply it once agreed."""
    windows = sys.platform == "win32"
    invocation = Invocation(deja_executable(sys.executable, windows, os.environ),
                            os.path.abspath(db_path) if args.db else None, windows)
    return _execute(plan_install(_target(args), invocation), args)


def run_uninstall(db_path: Path, args: argparse.Namespace) -> int:
    """Plan the removal of deja's entries, show the diff, apply it once agreed."""
    state = InstallState.load(default_data_dir(os.environ) / STATE_FILE)
    return _execute(plan_uninstall(_target(args), state), args)
