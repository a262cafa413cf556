"""Doctor's checks of what surrounds the database: transcripts, Claude Code's retention,
registration and hooks, and the ingest lock."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .check import Check

__all__ = ["transcripts", "retention", "claude_code", "ingest_lock"]

# Claude Code deletes transcripts older than this many days unless settings.json says otherwise.
_DEFAULT_CLEANUP_DAYS = 30
# A transcript written this long after the last ingest means the index lags behind.
_LAG_SECONDS = 300

# -- transcripts and Claude Code -----------------------------------------------------------


def _jsonl_files(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.endswith(".jsonl"):
                yield entry


def transcripts(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
    from ingest.discover import default_roots

    roots = default_roots(env, home)
    found = [r for r in roots if r.is_dir()]
    if not found:
        return [Check("transcripts", "warn", "no transcript folder: " +
                      ", ".join(str(r) for r in roots),
                      "run Claude Code once, or set CLAUDE_CONFIG_DIR to where it writes")]
    unreadable = [r for r in found if not os.access(r, os.R_OK | os.X_OK)]
    if unreadable:
        return [Check("transcripts", "fail", "cannot read " + ", ".join(map(str, unreadable)),
                      "give your user read access to Claude Code's projects folder")]
    newest = 0.0
    count = 0
    for root in found:
        for entry in _jsonl_files(root):
            count += 1
            try:
                newest = max(newest, entry.stat().st_mtime)
            except OSError:
                pass
    detail = f"{count} transcripts under {', '.join(map(str, found))}"
    checks = [Check("transcripts", "ok", detail)]
    if conn is None:
        return checks
    rows = conn.execute("SELECT value FROM meta WHERE key = 'last_ingest'").fetchall()
    last = _parse_time(rows[0][0]) if rows else None
    if last is None:
        checks.append(Check("last_ingest", "warn", "never ingested", "run `deja ingest`"))
    elif newest and newest - last.timestamp() > _LAG_SECONDS:
        when = datetime.fromtimestamp(newest, timezone.utc).isoformat(timespec="seconds")
        checks.append(Check("last_ingest", "warn", f"last ingest {rows[0][0]}, but a "
                            f"transcript changed at {when}",
                            "run `deja ingest` (or `deja install`: hooks and the server ingest)"))
    else:
        checks.append(Check("last_ingest", "ok", f"last ingest {rows[0][0]}"))
    return checks


def _parse_time(value: str | None) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed object, None) or (None, why not); a missing file is ({}, None)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return None, f"{path} cannot be read as JSON: {exc}"
    return (data, None) if isinstance(data, dict) else (None, f"{path} is not a JSON object")


def _user_files(env: Mapping[str, str], home: Path) -> tuple[Path, Path]:
    """(settings.json, .claude.json) of the user, as `deja install` finds them."""
    from mcp_server.install.errors import InstallError
    from mcp_server.install.locate import user_target

    try:
        target = user_target(home, env, None)
    except InstallError:  # several CLAUDE_CONFIG_DIR folders: the default ones
        return home / ".claude" / "settings.json", home / ".claude.json"
    return target.settings, target.mcp_config


def retention(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
    settings_path, _ = _user_files(env, home)
    settings, error = _read_json(settings_path)
    if settings is None:
        return [Check("retention", "warn", str(error), f"fix the JSON of {settings_path}")]
    days = settings.get("cleanupPeriodDays", _DEFAULT_CLEANUP_DAYS)
    said = "" if "cleanupPeriodDays" in settings else " (the default)"
    detail = f"Claude Code deletes transcripts after {days} days{said}"
    if conn is not None:
        gone_files = gone_records = 0
        for source_id, raw in conn.execute(
                "SELECT id, path FROM sources WHERE layout != 'memory'").fetchall():
            if not os.path.exists(os.fsdecode(bytes(raw))):
                gone_files += 1
                gone_records += conn.execute("SELECT COUNT(*) FROM records WHERE source_id = ?",
                                             (source_id,)).fetchone()[0]
        detail += (f"; deja holds {gone_records} records of {gone_files} transcripts "
                   "Claude Code has already deleted")
    return [Check("retention", "ok", detail)]


def claude_code(env: Mapping[str, str], home: Path) -> list[Check]:
    """MCP registration and hooks, recognised as `deja install` recognises its own entries."""
    from mcp_server.install.entries import HOOKS, enabled_deja_plugins, hook_slug_of, is_deja_server

    settings_path, config_path = _user_files(env, home)
    settings, s_error = _read_json(settings_path)
    config, c_error = _read_json(config_path)
    plugins = enabled_deja_plugins(settings or {})
    checks = []
    if config is None:
        checks.append(Check("mcp", "warn", str(c_error), f"fix the JSON of {config_path}"))
    else:
        servers = [config.get("mcpServers")] + [
            p.get("mcpServers") for p in (config.get("projects") or {}).values()
            if isinstance(p, dict)]
        registered = any(isinstance(s, dict) and any(is_deja_server(e) for e in s.values())
                         for s in servers)
        if registered or plugins:
            how = f"plugin {', '.join(plugins)}" if plugins and not registered else config_path
            checks.append(Check("mcp", "ok", f"deja's MCP server is registered ({how})"))
        else:
            checks.append(Check("mcp", "warn", "deja's MCP server is not registered with "
                                "Claude Code", "run `deja install`"))
    if settings is None:
        checks.append(Check("hooks", "warn", str(s_error), f"fix the JSON of {settings_path}"))
        return checks
    found = set()
    table = settings.get("hooks")
    for groups in (table.values() if isinstance(table, dict) else []):
        for group in groups if isinstance(groups, list) else []:
            for hook in (group.get("hooks") or []) if isinstance(group, dict) else []:
                slug = hook_slug_of(hook)
                if slug:
                    found.add(slug)
    wanted = {spec.slug for spec in HOOKS}
    if found >= wanted or (plugins and not found):
        checks.append(Check("hooks", "ok", "hooks installed: " +
                            (", ".join(sorted(found)) or f"by plugin {', '.join(plugins)}")))
    elif found:
        checks.append(Check("hooks", "warn", "some hooks are missing: " +
                            ", ".join(sorted(wanted - found)), "run `deja install` again"))
    else:
        checks.append(Check("hooks", "warn", f"no deja hooks in {settings_path}: sessions are "
                            "ingested only by the server and by `deja ingest`",
                            "run `deja install`"))
    return checks


def ingest_lock(db_path: Path) -> Check:
    """Whether another process ingests now: the lock is taken and given back at once."""
    from ingest.lease import IngestLock

    lock = IngestLock(db_path)
    exists = lock.path.exists() if lock.method == "flock" else \
        Path(str(lock.path) + ".sqlite").exists()
    if not exists:
        return Check("ingest_lock", "ok", "no process is ingesting")
    try:
        took = lock.acquire()
    except OSError as exc:
        return Check("ingest_lock", "warn", f"cannot probe {lock.path}: {exc}", None)
    if took:
        lock.release()
        return Check("ingest_lock", "ok", "no process is ingesting")
    pid = lock.holder_pid()
    return Check("ingest_lock", "warn", f"pid {pid or '?'} holds the ingest lock (a deja server "
                 "or ingest: others wait for it)",
                 "nothing if it is a running `deja serve`; else wait, or stop that process")

