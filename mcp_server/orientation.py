"""What `deja hook session-start` puts in a new session's context.

Two texts, both short (Settings.context_chars, 2,000 characters by default,
never over 10,000) and wrapped in DEJA_CONTEXT_MARKER so that ingest skips
them when Claude Code writes them back into the transcript:

- `orientation()`, for startup, resume, clear and fork: the project's last
  sessions (title, branch, when), where the latest stood (its checkpoint's
  pending work) and one line naming search_memory and load_checkpoint.
  Nothing at all when the project has no history.
- `after_compaction()`, for source=compact: what the compaction summary
  likely dropped from the session that just compacted, i.e. the exact
  commands, paths, error messages and decisions the user stated between the
  previous summary and this one that the summary's text does not hold.

Read-only, and light: no mcp, no numpy (a hook imports this).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from ingest.checkpoints import build_checkpoint, is_decision, session_facts
from ingest.parse import DEJA_CONTEXT_MARKER

from .projects import resolve_project

__all__ = ["orientation", "after_compaction", "wrap", "CONTEXT_END"]

CONTEXT_END = "</deja-memory-context>"
_TOOLS_LINE = ("deja's MCP tools: search_memory finds past prompts, commands, outputs and "
               "decisions; load_checkpoint tells where a session stood.")


async def _rows(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await conn.execute_fetchall(sql, params))


def _when(ts: str | None) -> str:
    return (ts or "?")[:16].replace("T", " ")


def _line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wrap(body: list[str], limit: int) -> str | None:
    """The lines of `body` (in order, as many as fit) inside the marker, at most `limit`
    characters in all; None when nothing fits."""
    head, tail = DEJA_CONTEXT_MARKER + "\n", "\n" + CONTEXT_END
    room = limit - len(head) - len(tail)
    kept: list[str] = []
    used = 0
    for line in body:
        if used + len(line) + 1 > room:
            if room - used > 80:  # a cut line still says something
                kept.append(line[: room - used - 2] + "…")
            break
        kept.append(line)
        used += len(line) + 1
    return head + "\n".join(kept) + tail if kept else None


async def orientation(conn: aiosqlite.Connection, project: str, *, session_id: str | None,
                      limit: int) -> str | None:
    """The orientation text for a session starting in `project` (a path); None when the
    project has no earlier session."""
    dirs = await resolve_project(conn, project)
    if not dirs:
        return None
    marks = ", ".join("?" for _ in dirs)
    sessions = await _rows(
        conn, f"SELECT session_id, title, git_branch, last_ts FROM sessions WHERE project_dir "
        f"IN ({marks}) AND last_ts IS NOT NULL AND session_id IS DISTINCT FROM ? AND EXISTS (SELECT 1 "
        f"FROM records r WHERE r.session_id = sessions.session_id AND r.kind = 'prompt') "
        f"ORDER BY last_ts DESC NULLS LAST LIMIT 4", (*dirs, session_id))
    if not sessions:
        return None
    lines = [f"deja remembers earlier sessions of this project ({project}); the latest:"]
    for sid, title, branch, last_ts in sessions:
        parts = [_when(last_ts), f'"{_line(title, 80)}"' if title else None,
                 f"branch {branch}" if branch else None, f"session {sid[:8]}"]
        lines.append("- " + ", ".join(p for p in parts if p))
    lines += await _latest_standing(conn, sessions[0][0])
    lines.append(_TOOLS_LINE)
    # The tools line must survive a small limit: it goes right after the session list.
    return wrap([*lines[:1 + len(sessions)], lines[-1], *lines[1 + len(sessions):-1]], limit)


async def _latest_standing(conn: aiosqlite.Connection, sid: str) -> list[str]:
    """Where session `sid` stood: its pending work, from its stored checkpoint or its records."""
    rows = await _rows(
        conn, "SELECT meta FROM records WHERE kind = 'memory' AND session_id = ? AND "
        "json_extract(meta, '$.origin') = 'transcript' ORDER BY ts DESC NULLS LAST LIMIT 1", (sid,))
    cp: dict[str, Any] | None = None
    if rows:
        try:
            cp = json.loads(rows[0][0]).get("checkpoint")
        except (ValueError, AttributeError):
            cp = None
    if not isinstance(cp, dict):
        built = await build_checkpoint(conn, sid)
        cp = built.to_dict() if built else {}
    out: list[str] = []
    pending = [t for t in cp.get("pending") or [] if isinstance(t, dict)]
    summary_pending = cp.get("summary_pending")
    if pending or summary_pending:
        out.append(f"Where session {sid[:8]} stood, pending:")
        out += [f"- [{t.get('status')}] {_line(str(t.get('content')), 200)}" for t in pending[:8]]
        if summary_pending:
            out += [f"- {_line(item, 240)}" for item in _items(summary_pending)[:6]]
    elif cp.get("last_requests"):
        out.append(f"Its last request: {_line(cp['last_requests'][-1], 300)}")
    return out


def _items(section: str) -> list[str]:
    """The list items of a summary section (`- x` lines), or its lines."""
    lines = [line.strip() for line in section.splitlines() if line.strip()]
    items = [line.lstrip("-*• ").strip() for line in lines if line.startswith(("-", "*", "•"))]
    return items or lines


async def after_compaction(conn: aiosqlite.Connection, session_id: str, *,
                           limit: int) -> str | None:
    """What the latest compaction summary of `session_id` likely dropped (see the module
    docstring); None when the session has no summary or nothing is missing from it."""
    summaries = await _rows(
        conn, "SELECT ts, text FROM records WHERE session_id = ? AND agent_id IS NULL AND "
        "(kind = 'compact_summary' OR (kind = 'memory' AND "
        "json_extract(meta, '$.origin') = 'compact_summary')) ORDER BY ts DESC NULLS LAST LIMIT 2",
        (session_id,))
    if not summaries:
        return None
    until, summary = summaries[0]
    since = summaries[1][0] if len(summaries) > 1 else None
    facts = await session_facts(conn, session_id, since, until)
    prompts = await _rows(
        conn, "SELECT text FROM records WHERE session_id = ? AND agent_id IS NULL AND "
        "kind = 'prompt' AND (? IS NULL OR ts > ?) AND ts <= ? ORDER BY ts NULLS FIRST, id",
        (session_id, since, since, until))

    def dropped(text: str) -> bool:
        return bool(text) and text not in summary

    failed = {c["command"] for c in facts.failed_commands}
    body: list[str] = []
    decisions = [p for (p,) in prompts if is_decision(p) and dropped(p.strip()[:120])]
    if decisions:
        body.append("Decisions the user stated:")
        body += [f"- {_line(p, 300)}" for p in decisions[-6:]]
    errors = [c for c in facts.failed_commands if dropped(c["command"])]
    if errors:
        body.append("Commands that failed, exactly, and their errors:")
        body += [f"- `{_line(c['command'], 200)}` -> {_line(c['error'], 200)}" for c in errors[-6:]]
    commands = [c for c in dict.fromkeys(reversed(facts.commands))
                if c not in failed and dropped(c)][:10]
    if commands:
        body.append("Commands run (latest first):")
        body += [f"- `{_line(c, 200)}`" for c in commands]
    paths = [p for p in facts.files_edited if dropped(p)]
    if paths:
        body.append("Files edited: " + ", ".join(paths[:15]))
    if not body:
        return None
    head = ("deja: what the compaction summary may have left out of this session "
            "(exact details from before it):")
    return wrap([head, *body, _TOOLS_LINE], limit)
