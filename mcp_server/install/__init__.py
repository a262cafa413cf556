"""`deja install` / `deja uninstall`: deja's MCP server and hooks merged into Claude Code's files.

A library of small modules, importing nothing heavy (no mcp, no model), so the
commands start fast:
- `entries.py`: what deja adds (hooks, server entry), recognised by command;
- `jsonstyle.py`: JSON files read and written back in their own layout;
- `locate.py`: the installed `deja`, the `claude` command, the files of a scope;
- `files.py`: backups, atomic writes, install's record;
- `plan.py`: the changes computed, shown as a diff, applied.
"""

from __future__ import annotations

from .entries import HOOKS, SERVER_NAME, HookSpec, Invocation
from .errors import InstallError
from .locate import Target, claude_command, deja_executable, project_target, user_target
from .plan import Change, Plan, apply, plan_install, plan_uninstall

__all__ = ["HOOKS", "SERVER_NAME", "HookSpec", "Invocation", "InstallError", "Target",
           "claude_command", "deja_executable", "project_target", "user_target", "Change",
           "Plan", "apply", "plan_install", "plan_uninstall"]
