"""What deja adds to Claude Code's settings, and how it is added and taken out again.

Pure functions over parsed JSON (no files, no environment), so every rule is
testable on a dict:
- the hooks: which events, which matcher, which timeout and why (`HOOKS`);
- the command lines Claude Code runs (`Invocation`): the absolute path of the
  installed `deja`, quoted for the shell Claude Code runs hooks with (sh on
  Linux and macOS, Git Bash on Windows), plus `--db` when the user gave one;
- recognition by command, never by position: a hook is deja's when its
  command runs a program named `deja` (or `deja.exe`) with `hook EVENT` at the
  end, whatever its path and options, and the MCP server is the entry named
  `deja` whose command is deja's;
- `with_*` adds what is missing and replaces a stale deja entry (another path,
  another `--db`) where it stands; `without_*` removes deja's entries and only
  the containers that removal emptied. Everything else stays where it is:
  other tools' hooks, other servers, every other key, in their order.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InstallError

__all__ = ["HookSpec", "HOOKS", "SERVER_NAME", "Invocation", "hook_slug_of", "is_deja_server",
           "with_hooks", "without_hooks", "with_server", "without_server", "has_deja",
           "enabled_deja_plugins"]

SERVER_NAME = "deja"


@dataclass(frozen=True)
class HookSpec:
    """One hook deja installs: the Claude Code event, `deja hook SLUG`, matcher, timeout (s)."""

    event: str
    slug: str
    matcher: str | None
    timeout: int


# Timeouts are Claude Code's kill switch, not deja's budget: each hook answers in well under
# a second and fails open. They bound the damage when something is wrong (a cold start on a
# slow disk, antivirus scanning a fresh venv).
HOOKS: tuple[HookSpec, ...] = (
    # The session waits for its context: 10 s covers a cold interpreter start anywhere.
    HookSpec("SessionStart", "session-start", "startup|resume|clear|compact", 10),
    # Ingests the whole transcript before it is compacted; compaction itself takes far longer.
    HookSpec("PreCompact", "pre-compact", None, 10),
    # Stores one summary: little work.
    HookSpec("PostCompact", "post-compact", None, 5),
    # All SessionEnd hooks share 1.5 s unless a settings file raises it; 2 s gives a cold
    # start its margin without holding the user's exit longer.
    HookSpec("SessionEnd", "session-end", None, 2),
    # Runs after every answer and ingests only the new lines.
    HookSpec("Stop", "stop", None, 5),
)
_SLUGS = frozenset(spec.slug for spec in HOOKS)
_DEJA_NAMES = frozenset({"deja", "deja.exe"})
_PATH_SEPARATORS = re.compile(r"[\\/]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Invocation:
    """How Claude Code runs this deja: the executable's absolute path and global options.

    executable: the native path (C:\\...\\deja.exe on Windows); db: the database
    to pass as `--db`, or None for deja's default; windows: quote for Git Bash;
    db_url: a PostgreSQL URL, given as DEJA_DB in the server's `env` and before each
    hook command (`DEJA_DB=URL deja hook ...`), never as an argument: a process's
    arguments are visible to every user of the machine (ps), its environment is not.
    """

    executable: str
    db: str | None = None
    windows: bool = False
    db_url: str | None = None

    def argv(self, *command: str) -> list[str]:
        return [self.executable, *(("--db", self.db) if self.db else ()), *command]

    def env(self) -> dict[str, str]:
        """The environment the server and hooks need: DEJA_DB for a PostgreSQL URL."""
        return {"DEJA_DB": self.db_url} if self.db_url else {}

    def server_entry(self) -> dict[str, Any]:
        """The `mcpServers` entry, as `claude mcp add` writes it (no shell: argv as is)."""
        argv = self.argv("serve")
        return {"type": "stdio", "command": argv[0], "args": argv[1:], "env": self.env()}

    def hook_command(self, slug: str) -> str:
        """The shell command line of `deja hook SLUG`.

        Claude Code runs hook commands through a shell (sh -c; Git Bash on Windows), so
        each word is quoted for a POSIX shell. Git Bash reads backslashes as escapes:
        Windows paths are written with forward slashes, which it and deja.exe accept.
        """
        words = self.argv("hook", slug)
        if self.windows:
            words = [w.replace("\\", "/") for w in words]
        assignments = [f"{k}={shlex.quote(v)}" for k, v in self.env().items()]
        return " ".join([*assignments, *(shlex.quote(w) for w in words)])

    def hook_group(self, spec: HookSpec) -> dict[str, Any]:
        group: dict[str, Any] = {}
        if spec.matcher is not None:
            group["matcher"] = spec.matcher
        group["hooks"] = [{"type": "command", "command": self.hook_command(spec.slug),
                           "timeout": spec.timeout}]
        return group


def _program_names(command: str) -> list[str]:
    """The program's file name in `command`, read as a shell would and as plain words
    (after any leading `NAME=value` assignments, as `DEJA_DB=URL deja hook ...` has)."""
    words: list[Sequence[str]] = [command.split()]
    try:
        words.append(shlex.split(command))
    except ValueError:
        pass
    programs = [[w for w in ws if not _ASSIGNMENT.match(w)] for ws in words]
    return [_PATH_SEPARATORS.split(w[0].strip("'\""))[-1].lower() for w in programs if w]


def hook_slug_of(hook: Any) -> str | None:
    """The event slug when `hook` (a settings hook entry) runs `deja hook SLUG`, else None."""
    if not isinstance(hook, dict) or not isinstance(hook.get("command"), str):
        return None
    command: str = hook["command"]
    tail = command.split()[-2:]
    if len(tail) != 2 or tail[0] != "hook":
        return None
    slug = tail[1].strip("'\"")
    if slug not in _SLUGS or not _DEJA_NAMES & set(_program_names(command)):
        return None
    return slug


def is_deja_server(entry: Any) -> bool:
    """True when an `mcpServers` entry runs deja's server (`deja ... serve`, `python -m mcp_server`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return False
    args = entry.get("args") or []
    if not isinstance(args, list):
        return False
    program = _PATH_SEPARATORS.split(entry["command"])[-1].lower()
    if program in _DEJA_NAMES:
        return bool(args) and args[-1] == "serve"
    return program.startswith("python") and args[:2] == ["-m", "mcp_server"]


# -- hooks ------------------------------------------------------------------------------------


def _hooks_table(settings: dict[str, Any], where: str) -> dict[str, Any] | None:
    table = settings.get("hooks")
    if table is not None and not isinstance(table, dict):
        raise InstallError(f"{where}: 'hooks' is not an object; left unchanged")
    return table


def _groups(table: dict[str, Any], event: str, where: str) -> list[Any]:
    groups = table.get(event, [])
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("hooks", []), list) for g in groups):
        raise InstallError(f"{where}: 'hooks.{event}' is not a list of matcher groups with "
                           "a 'hooks' list; left unchanged")
    return groups


def _matches_all(matcher: Any) -> bool:
    return matcher in (None, "", "*")


def _strip_slug(groups: list[Any], slug: str) -> list[Any]:
    """`groups` without deja's `hook SLUG` entries; a group that held only those goes too."""
    kept = []
    for group in groups:
        hooks = group.get("hooks", [])
        left = [h for h in hooks if hook_slug_of(h) != slug]
        if len(left) == len(hooks):
            kept.append(group)
        elif left:
            kept.append({**group, "hooks": left})
    return kept


def _installed(groups: list[Any], spec: HookSpec, command: str) -> bool:
    """True when deja's hook for `spec` is there once, with this command, under its matcher.

    A timeout the user changed on it is theirs to keep.
    """
    found = [(g, h) for g in groups for h in g.get("hooks", []) if hook_slug_of(h) == spec.slug]
    if len(found) != 1:
        return False
    group, hook = found[0]
    matcher = group.get("matcher")
    same_matcher = matcher == spec.matcher or (spec.matcher is None and _matches_all(matcher))
    return same_matcher and hook.get("type") == "command" and hook.get("command") == command


def with_hooks(settings: dict[str, Any], invocation: Invocation, where: str) -> dict[str, Any]:
    """A copy of `settings` holding deja's hooks (a stale deja hook is replaced).

    `where` names the file in errors. Raises InstallError when `hooks` has a shape
    Claude Code would not read either.
    """
    new = copy.deepcopy(settings)
    table = _hooks_table(new, where)
    table = {} if table is None else table
    for spec in HOOKS:
        groups = _groups(table, spec.event, where)
        if _installed(groups, spec, invocation.hook_command(spec.slug)):
            continue
        table[spec.event] = [*_strip_slug(groups, spec.slug), invocation.hook_group(spec)]
    new["hooks"] = table
    return new


def without_hooks(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of `settings` without deja's hooks, and without the containers that emptied."""
    new = copy.deepcopy(settings)
    table = _hooks_table(new, where)
    if not table:
        return new
    for spec in HOOKS:
        if spec.event not in table:
            continue
        groups = _groups(table, spec.event, where)
        left = _strip_slug(groups, spec.slug)
        if left == groups:
            continue
        if left:
            table[spec.event] = left
        else:
            del table[spec.event]
        if not table:
            del new["hooks"]
            break
    return new


# -- the MCP server ---------------------------------------------------------------------------


def _servers(config: dict[str, Any], where: str) -> dict[str, Any] | None:
    servers = config.get("mcpServers")
    if servers is not None and not isinstance(servers, dict):
        raise InstallError(f"{where}: 'mcpServers' is not an object; left unchanged")
    return servers


def with_server(config: dict[str, Any], invocation: Invocation, where: str) -> dict[str, Any]:
    """A copy of `config` whose `mcpServers.deja` runs this deja.

    A stale deja entry is replaced in place, keeping its `env` (but for the DEJA_DB of a
    PostgreSQL URL this install gives). Raises InstallError
    when a server named deja is there but runs something else: it is not ours to replace.
    """
    new = copy.deepcopy(config)
    servers = _servers(new, where)
    servers = {} if servers is None else servers
    wanted = invocation.server_entry()
    current = servers.get(SERVER_NAME)
    if current is not None:
        if not is_deja_server(current):
            raise InstallError(
                f"{where}: an MCP server named {SERVER_NAME!r} is already there and does not run "
                f"deja (command {current.get('command') if isinstance(current, dict) else current!r});"
                " rename or remove it, then run again")
        kept = dict(current["env"]) if isinstance(current.get("env"), dict) else {}
        if not wanted["env"] and str(kept.get("DEJA_DB", "")).lower().startswith("postgres"):
            del kept["DEJA_DB"]  # what an install with a URL wrote; this one names SQLite
        if current.get("type", "stdio") == "stdio" and current.get("command") == wanted["command"] \
                and current.get("args", []) == wanted["args"] \
                and all(kept.get(k) == v for k, v in wanted["env"].items()) \
                and kept == (current.get("env") or {}):
            return new
        # The entry's own environment stays; the database this install names wins.
        wanted["env"] = {**kept, **wanted["env"]}
    servers[SERVER_NAME] = wanted
    new["mcpServers"] = servers
    return new


def without_server(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of `config` without deja's `mcpServers` entry (and `mcpServers` if that emptied it)."""
    new = copy.deepcopy(config)
    servers = _servers(new, where)
    if not servers or not is_deja_server(servers.get(SERVER_NAME)):
        return new
    del servers[SERVER_NAME]
    if not servers:
        del new["mcpServers"]
    return new


def has_deja(data: dict[str, Any]) -> bool:
    """True when `data` (a settings or MCP config file) holds any of deja's entries."""
    try:
        return without_hooks(data, "") != data or without_server(data, "") != data
    except InstallError:
        return False


def enabled_deja_plugins(settings: dict[str, Any]) -> list[str]:
    """The deja plugins enabled in `settings` (`enabledPlugins`: "deja@MARKETPLACE": true)."""
    plugins = settings.get("enabledPlugins")
    if not isinstance(plugins, dict):
        return []
    return [name for name, on in plugins.items() if on is True and name.split("@")[0] == "deja"]
