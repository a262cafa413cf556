"""Where a session stood: the briefing `load_checkpoint` gives an agent.

Assembled from what was ingested, in priority order within a token budget
(~4 characters a token): explicit checkpoints of the session, its latest
compaction summary, what happened after that summary, the user's last
requests, files edited, open todos, last errors, and memories of the project.
Each section is cut to its share rather than dropped, so a small budget still
shows every kind of fact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from ingest.errors import InvalidQuery, NotFound

from .history import memory_meta, trim

__all__ = ["load_checkpoint"]

_EDIT_TOOLS = ("Edit", "Write", "MultiEdit", "NotebookEdit", "str_replace_based_edit_tool")


def _tool_input(text: str) -> Any:
    """The JSON input of a tool_call record ('Name {json}')."""
    _, _, raw = text.partition(" ")
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _rows(conn: aiosqlite.Connection, sql: str,
                params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
    """All rows of a query, as a list (aiosqlite types them as a mere Iterable)."""
    return list(await conn.execute_fetchall(sql, params))


async def _pick_session(conn: aiosqlite.Connection, session_id: str | None,
                        project_dirs: list[str] | None) -> str:
    if session_id:
        rows = await _rows(conn, "SELECT session_id FROM sessions WHERE session_id = ?",
                           (session_id,))
        if not rows:
            raise NotFound(f"no session {session_id!r}; list_sessions shows the known ones")
        return session_id
    clauses = ["last_ts IS NOT NULL",
               "EXISTS (SELECT 1 FROM records r WHERE r.session_id = sessions.session_id "
               "AND r.kind = 'prompt')"]
    params: list[Any] = []
    if project_dirs is not None:
        clauses.append(f"project_dir IN ({', '.join('?' for _ in project_dirs)})")
        params.extend(project_dirs)
    rows = await _rows(
        conn, f"SELECT session_id FROM sessions WHERE {' AND '.join(clauses)} "
        f"ORDER BY last_ts DESC LIMIT 1", params)
    if not rows:
        raise NotFound("no session found for this project yet; pass session_id or project='all'")
    return str(rows[0][0])


async def load_checkpoint(conn: aiosqlite.Connection, *, session_id: str | None = None,
                          project_dirs: list[str] | None = None,
                          checkpoint_id: str | None = None,
                          max_tokens: int = 4000) -> dict[str, Any]:
    """The briefing for a session (see the module docstring). Raises NotFound, InvalidQuery."""
    if max_tokens < 200:
        raise InvalidQuery("max_tokens must be at least 200")
    budget = max_tokens * 4
    checkpoint: dict[str, Any] | None = None
    if checkpoint_id:
        checkpoint, cp_session, cp_project = await _checkpoint(conn, checkpoint_id, budget)
        session_id = session_id or cp_session
        if project_dirs is None and cp_project:
            project_dirs = [cp_project]
    sid = await _pick_session(conn, session_id, project_dirs) if (session_id or checkpoint is None) \
        else None
    out: dict[str, Any] = {"checkpoint": checkpoint}
    if sid is None:
        out["memories"] = await _memories(conn, None, project_dirs, budget // 3)
        return out
    out.update(await _session_turns(conn, sid, budget))
    project_dir = out["session"]["project_dir"]
    out["files_edited"] = await _files_edited(conn, sid)
    out["open_todos"] = await _open_todos(conn, sid)
    out["last_errors"] = await _last_errors(conn, sid)
    out["memories"] = await _memories(conn, sid, [project_dir] if project_dir else project_dirs,
                                      int(budget * 0.15))
    return out


async def _checkpoint(conn: aiosqlite.Connection, checkpoint_id: str,
                      budget: int) -> tuple[dict[str, Any], str | None, str | None]:
    """The memory `checkpoint_id` as the briefing shows it, its session and its project."""
    rows = await _rows(
        conn, "SELECT r.text, r.ts, r.session_id, r.meta, src.project_dir FROM records r "
        "LEFT JOIN sources src ON src.id = r.source_id WHERE r.uuid = ? AND r.kind = 'memory'",
        (checkpoint_id,))
    if not rows:
        raise NotFound(f"no checkpoint or memory with id {checkpoint_id!r}: pass the id "
                       "write_memory returned, or omit checkpoint_id")
    text, ts, cp_session, meta, cp_project = rows[0]
    checkpoint = {"id": checkpoint_id, "timestamp": ts, "text": trim(text, budget // 3),
                  **{k: v for k, v in memory_meta(meta).items() if v}}
    return checkpoint, cp_session, cp_project


async def _session_turns(conn: aiosqlite.Connection, sid: str, budget: int) -> dict[str, Any]:
    """The session, its latest summary, the turns after it (or the recent turns when it
    has none) and the user's last requests."""
    out: dict[str, Any] = {}
    meta_rows = await _rows(
        conn, "SELECT session_id, title, cwd, git_branch, first_ts, last_ts, project_dir "
        "FROM sessions WHERE session_id = ?", (sid,))
    keys = ("session_id", "title", "cwd", "git_branch", "first_ts", "last_ts", "project_dir")
    out["session"] = dict(zip(keys, meta_rows[0]))

    summary = await _rows(
        conn, "SELECT text, ts FROM records WHERE session_id = ? AND kind IN ('compact_summary', "
        "'summary') AND agent_id IS NULL ORDER BY ts DESC, id DESC LIMIT 1", (sid,))
    since_ts = summary[0][1] if summary else None
    out["latest_summary"] = (
        {"timestamp": summary[0][1], "text": trim(summary[0][0], int(budget * 0.35))}
        if summary else None
    )
    after = await _rows(
        conn, "SELECT kind, ts, text, tool_name FROM records WHERE session_id = ? AND "
        "agent_id IS NULL AND kind IN ('prompt', 'assistant') AND (? IS NULL OR ts > ?) "
        "ORDER BY ts DESC, id DESC LIMIT 12", (sid, since_ts, since_ts))
    each = max(150, int(budget * 0.25) // max(len(after), 1))
    out["since_summary" if summary else "recent_turns"] = [
        {"kind": k, "timestamp": ts, "text": trim(t, each)} for k, ts, t, _ in reversed(after)
    ]
    prompts = await _rows(
        conn, "SELECT ts, text FROM records WHERE session_id = ? AND kind = 'prompt' AND "
        "agent_id IS NULL ORDER BY ts DESC, id DESC LIMIT 5", (sid,))
    out["last_requests"] = [{"timestamp": ts, "text": trim(t, 400)} for ts, t in reversed(prompts)]
    return out


async def _files_edited(conn: aiosqlite.Connection, sid: str) -> list[str]:
    """The files the session's edit tools touched, latest first (at most 30)."""
    edits = await _rows(
        conn, f"SELECT text FROM records WHERE session_id = ? AND kind = 'tool_call' AND "
        f"tool_name IN ({', '.join('?' for _ in _EDIT_TOOLS)}) ORDER BY ts DESC, id DESC "
        f"LIMIT 200", (sid, *_EDIT_TOOLS))
    files: list[str] = []
    for (text,) in edits:
        data = _tool_input(text)
        path = data.get("file_path") or data.get("notebook_path") or data.get("path") \
            if isinstance(data, dict) else None
        if isinstance(path, str) and path not in files:
            files.append(path)
    return files[:30]


async def _open_todos(conn: aiosqlite.Connection, sid: str) -> list[dict[str, Any]]:
    """The items of the session's last TodoWrite that are not completed."""
    todo_rows = await _rows(
        conn, "SELECT text FROM records WHERE session_id = ? AND kind = 'tool_call' AND "
        "tool_name = 'TodoWrite' ORDER BY ts DESC, id DESC LIMIT 1", (sid,))
    todos: list[dict[str, Any]] = []
    if todo_rows:
        data = _tool_input(todo_rows[0][0])
        for item in (data or {}).get("todos", []) if isinstance(data, dict) else []:
            if isinstance(item, dict) and item.get("status") != "completed":
                todos.append({"content": str(item.get("content", ""))[:300],
                              "status": item.get("status")})
    return todos


async def _last_errors(conn: aiosqlite.Connection, sid: str) -> list[dict[str, Any]]:
    """The session's last three errors and failed tool results, latest first."""
    errors = await _rows(
        conn, "SELECT ts, kind, tool_name, text FROM records WHERE session_id = ? AND "
        "(kind = 'error' OR (kind = 'tool_result' AND is_error = 1)) "
        "ORDER BY ts DESC, id DESC LIMIT 3", (sid,))
    return [{"timestamp": ts, "kind": k, "tool_name": tn, "text": trim(t, 500)}
            for ts, k, tn, t in errors]


async def _memories(conn: aiosqlite.Connection, sid: str | None, project_dirs: list[str] | None,
                    budget: int) -> list[dict[str, Any]]:
    clauses = ["r.kind = 'memory'"]
    params: list[Any] = []
    scope = []
    if sid:
        scope.append("r.session_id = ?")
        params.append(sid)
    if project_dirs:
        scope.append(f"src.project_dir IN ({', '.join('?' for _ in project_dirs)})")
        params.extend(project_dirs)
    if scope:
        clauses.append("(" + " OR ".join(scope) + ")")
    rows = await _rows(
        conn, "SELECT r.uuid, r.ts, r.text, r.meta, r.session_id FROM records r "
        "LEFT JOIN sources src ON src.id = r.source_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY r.ts DESC LIMIT 8", params)
    each = max(200, budget // max(len(rows), 1))
    return [{"id": u, "timestamp": ts, "text": trim(t, each), "session_id": s,
             **{k: v for k, v in memory_meta(m).items() if v}} for u, ts, t, m, s in rows]
