"""Install and uninstall as a plan of file changes: computed, shown, then applied.

A plan reads every file it will touch first, so a file that is not valid JSON
stops the whole plan before anything is written. Each change carries the exact
bytes found and the bytes to write, so the diff shown is the change made;
applying re-reads each file and refuses if it moved in the meantime.

Uninstall gives back the original bytes when nothing else changed: the record
(files.py) holds the backup of the file before deja first changed it and the
hash of what deja last wrote. If the file still hashes the same, or its data
minus deja's entries equals the backup's, the backup's bytes are written back
(or the file is removed, if deja created it). Otherwise deja's entries are
removed and the file is written back in its own layout (jsonstyle.py).

Registering the server through `claude mcp add` (user scope, when the `claude`
command exists) is a change like the others: backed up, shown (the diff is of
the entry the command adds; Claude Code writes ~/.claude.json in its own
layout), and checked after the command ran.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entries import (
    SERVER_NAME,
    Invocation,
    enabled_deja_plugins,
    has_deja,
    with_hooks,
    with_server,
    without_hooks,
    without_server,
)
from .errors import InstallError
from .files import InstallState, Record, backup, make_parents, remove_file, write_atomic
from .jsonstyle import DEFAULT_STYLE, JsonFile, dumps, parse, read
from .locate import Target

__all__ = ["Change", "Plan", "plan_install", "plan_uninstall", "apply", "STATE_FILE",
           "BACKUP_DIR"]

STATE_FILE = "install-state.json"
BACKUP_DIR = "install-backups"

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@dataclass
class Change:
    """One file's change: the bytes found, the bytes to leave (None: no file)."""

    path: Path
    what: str
    before: bytes | None
    after: bytes | None
    commands: list[list[str]] = field(default_factory=list)  # run these instead of writing
    restores_backup: str | None = None  # the backup whose bytes `after` are

    def diff(self) -> str:
        """The change as a unified diff."""
        def lines(raw: bytes | None) -> list[str]:
            return [] if raw is None else raw.decode("utf-8", "replace").splitlines(keepends=True)
        name = str(self.path)
        out = []
        for line in difflib.unified_diff(
                lines(self.before), lines(self.after),
                fromfile=name if self.before is not None else "/dev/null",
                tofile=name if self.after is not None else "/dev/null"):
            # As git shows it: a last line without its newline says so.
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        return "".join(out)


@dataclass
class Plan:
    """What install or uninstall will do: the changes, and what the user should know."""

    action: str  # "install" or "uninstall"
    target: Target
    changes: list[Change]
    notes: list[str] = field(default_factory=list)


def _sha(raw: bytes | None) -> str:
    return "" if raw is None else hashlib.sha256(raw).hexdigest()


def _same(a: Any, b: Any) -> bool:
    """Equal data, key order and types included (1, 1.0 and true differ)."""
    return json.dumps(a) == json.dumps(b)


def _normal(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without empty hooks/mcpServers containers: for comparing, never for writing."""
    out = dict(data)
    hooks = out.get("hooks")
    if isinstance(hooks, dict):
        hooks = {k: v for k, v in hooks.items() if v != []}
        out["hooks"] = hooks
        if not hooks:
            del out["hooks"]
    if out.get("mcpServers") == {}:
        del out["mcpServers"]
    return out


def _claude_add(claude: str, invocation: Invocation, env: dict[str, Any]) -> list[str]:
    argv = invocation.argv("serve")
    env_flags = [item for k, v in env.items() for item in ("-e", f"{k}={v}")]
    return [claude, "mcp", "add", "--scope", "user", *env_flags, SERVER_NAME, "--", *argv]


def _claude_remove(claude: str) -> list[str]:
    return [claude, "mcp", "remove", "--scope", "user", SERVER_NAME]


def plan_install(target: Target, invocation: Invocation) -> Plan:
    """The changes that install deja into `target`; empty when it is installed already.

    Raises InstallError when a file is not valid JSON, has a shape Claude Code
    would not read, or holds a server named deja that is not deja.
    """
    mcp_file = read(target.mcp_config)
    settings_file = read(target.settings)
    changes = []
    where = str(target.mcp_config)
    mcp_data = mcp_file.data if mcp_file else {}
    new_mcp = with_server(mcp_data, invocation, where)
    if mcp_file is None or not _same(new_mcp, mcp_data):
        style = mcp_file.style if mcp_file else DEFAULT_STYLE
        change = Change(target.mcp_config, f"register the MCP server {SERVER_NAME!r}",
                        mcp_file.raw if mcp_file else None, dumps(new_mcp, style))
        if target.claude:
            current = (mcp_data.get("mcpServers") or {}).get(SERVER_NAME)
            if current is not None:
                change.commands.append(_claude_remove(target.claude))
            change.commands.append(
                _claude_add(target.claude, invocation, new_mcp["mcpServers"][SERVER_NAME]["env"]))
        changes.append(change)
    where = str(target.settings)
    settings_data = settings_file.data if settings_file else {}
    new_settings = with_hooks(settings_data, invocation, where)
    if settings_file is None or not _same(new_settings, settings_data):
        style = settings_file.style if settings_file else DEFAULT_STYLE
        changes.append(Change(target.settings, "add deja's hooks",
                              settings_file.raw if settings_file else None,
                              dumps(new_settings, style)))
    plan = Plan("install", target, changes)
    for name in enabled_deja_plugins(settings_data):
        plan.notes.append(f"the plugin {name} is enabled in {target.settings} too: its hooks and "
                          f"server would run beside these; keep one (claude plugin disable {name})")
    for change in changes:
        found = parse(change.path, change.before) if change.before is not None else None
        if found is not None and not found.reproducible and not change.commands:
            plan.notes.append(f"{change.path} is not laid out as JSON.stringify would write it: "
                              "lines deja did not change appear in the diff too; uninstall gives "
                              "the original bytes back")
    return plan


def _restoring(file: JsonFile, stripped: dict[str, Any],
               record: Record | None) -> tuple[bytes | None, str] | None:
    """(the original bytes, their backup) when uninstall may give them back, else None."""
    if record is None:
        return None
    unchanged = record.written == _sha(file.raw)
    if record.backup is None:
        return (None, "") if unchanged or _same(_normal(stripped), {}) else None
    try:
        raw = Path(record.backup).read_bytes()
        original = parse(Path(record.backup), raw)
    except (OSError, InstallError):
        return None
    if unchanged or _same(_normal(stripped), _normal(original.data)):
        return raw, record.backup
    return None


def plan_uninstall(target: Target, state: InstallState) -> Plan:
    """The changes that take deja's entries out of `target`; empty when there are none.

    Raises InstallError when a file is not valid JSON or has a shape Claude Code
    would not read.
    """
    changes = []
    for path, strip, what in ((target.mcp_config, without_server,
                               f"unregister the MCP server {SERVER_NAME!r}"),
                              (target.settings, without_hooks, "remove deja's hooks")):
        file = read(path)
        if file is None:
            continue
        stripped = strip(file.data, str(path))
        if _same(stripped, file.data):
            continue
        change = Change(path, what, file.raw, dumps(stripped, file.style))
        restored = _restoring(file, stripped, state.records.get(str(path)))
        if restored is not None:
            change.after, change.restores_backup = restored[0], restored[1] or None
        elif path == target.mcp_config and target.claude:
            change.commands.append(_claude_remove(target.claude))
        changes.append(change)
    return Plan("uninstall", target, changes)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _read_raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None


def _run_commands(change: Change, run: Runner) -> None:
    for argv in change.commands:
        try:
            proc = run(argv)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"`{' '.join(argv)}` failed: {exc}") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise InstallError(f"`{' '.join(argv)}` exited {proc.returncode}"
                               + (f": {said[-1]}" if said else ""))


def _check_after_commands(change: Change, action: str) -> None:
    """The file as the commands left it must hold deja's server (install) or not (uninstall)."""
    left = read(change.path)
    present = left is not None and has_deja(left.data)
    if present != (action == "install"):
        raise InstallError(f"{change.commands[-1][0]} ran, but {change.path} "
                           f"{'lacks' if action == 'install' else 'still holds'} deja's server")


def _remove_dirs(dirs: list[str]) -> None:
    """The folders install created, innermost first, where they are empty again."""
    for folder in sorted(dirs, key=len, reverse=True):
        try:
            Path(folder).rmdir()
        except OSError:
            pass


def apply(plan: Plan, data_dir: Path, run: Runner = _run) -> list[str]:
    """Makes the plan's changes, each file backed up first; returns one line per change.

    `data_dir` holds the backups and the record. Raises InstallError, before
    writing anything, when a file changed since the plan was made; and when a
    file cannot be written or `claude` fails, in which case the changes made
    before stay (a second run finishes the job: install is idempotent).
    """
    def check(change: Change, found: bytes | None) -> None:
        # `claude mcp` merges into the file as it is then (a running Claude Code writes
        # ~/.claude.json all the time); a direct write must find what the diff was made from.
        if found != change.before and not change.commands:
            raise InstallError(f"{change.path} changed while deja was looking at it; nothing "
                               "written: run again to see the new change")

    for change in plan.changes:  # all of them first, so that one moved file stops them all
        check(change, _read_raw(change.path))
    state = InstallState.load(data_dir / STATE_FILE)
    done = []
    for change in plan.changes:
        found = _read_raw(change.path)
        check(change, found)
        saved = backup(change.path, found, data_dir / BACKUP_DIR) if found is not None else None
        created: list[Path] = []
        if change.commands:
            _run_commands(change, run)
            _check_after_commands(change, plan.action)
        elif change.after is None:
            remove_file(change.path)
        else:
            created = make_parents(change.path)
            write_atomic(change.path, change.after)
        key = str(change.path)
        old = state.records.get(key)
        if plan.action == "install":
            # The first backup stays the original while the file holds what deja wrote last.
            keep = old is not None and old.written == _sha(found)
            original = old.backup if keep and old else (str(saved) if saved else None)
            dirs = [*(old.dirs if keep and old else []), *map(str, created)]
            state.records[key] = Record(original, _sha(_read_raw(change.path)), dirs)
        else:
            if change.after is None and old is not None:
                _remove_dirs(old.dirs)
            state.records.pop(key, None)
        how = f" with `{' '.join(change.commands[-1][:3])} ...`" if change.commands else ""
        kept = f" (backup: {saved})" if saved else ""
        verb = "removed" if change.after is None and not change.commands else \
            "created" if found is None else "updated"
        done.append(f"{verb} {change.path}{how}: {change.what}{kept}")
    state.save()
    return done
