"""Where a session stood: the briefing `load_checkpoint` gives an agent.

The briefing starts from the session's best checkpoint, the latest of:
- a checkpoint the agent wrote (`write_memory(kind="checkpoint")`);
- a compaction summary, from the transcript or from a PostCompact hook
  (`deja hook post-compact`, origin `compact_summary`).
A summary is given by its sections in the order that matters for resuming
(pending tasks, current work, next step, errors and fixes, decisions, the
request; ingest/summary.py), each whole while the budget allows, the rest
named under `omitted`, rather than its first N characters. Then what happened
after it: the turns since, the user's last requests, files edited, commands
that failed, tests run, open todos (TodoWrite and Task* tools), last errors
(ingest/checkpoints.py `session_facts`), and the explicit memories of the
project. The checkpoints deja builds from the transcript at PreCompact and
SessionEnd hold the same facts as of then; the briefing computes them now.

Budget: `max_tokens` at ~4 characters a token, shared out by section; the
JSON answer stays within it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from ingest.checkpoints import session_facts
from ingest.errors import InvalidQuery, NotFound
from ingest.summary import by_priority, sections

from .history import memory_meta, session_machine, trim
from .search.filters import in_list

__all__ = ["load_checkpoint"]

# Memories deja writes itself: shown as the checkpoint or computed afresh, never as "memories".
_OWN_ORIGINS = ("transcript", "compact_summary")


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
        clauses.append(in_list("project_dir", project_dirs))
        params.extend(project_dirs)
    rows = await _rows(
        conn, f"SELECT session_id FROM sessions WHERE {' AND '.join(clauses)} "
        f"ORDER BY last_ts DESC NULLS LAST LIMIT 1", params)
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
        checkpoint, cp_session, cp_project = await _memory_checkpoint(conn, checkpoint_id)
        session_id = session_id or cp_session
        if project_dirs is None and cp_project:
            project_dirs = [cp_project]
    sid = await _pick_session(conn, session_id, project_dirs) if (session_id or checkpoint is None) \
        else None
    out: dict[str, Any] = {}
    if sid is None:
        out["checkpoint"] = _shaped(checkpoint, int(budget * 0.6)) if checkpoint else None
        out["memories"] = await _memories(conn, None, project_dirs, budget // 3)
        return _fit(out, budget)
    if checkpoint is None:
        checkpoint = await _best_checkpoint(conn, sid)
    out["checkpoint"] = _shaped(checkpoint, int(budget * 0.45)) if checkpoint else None
    since = checkpoint["timestamp"] if checkpoint else None
    out.update(await _session_turns(conn, sid, since, int(budget * 0.2)))
    facts = await session_facts(conn, sid, since)
    # Files touched: the whole session's (a summary lists the earlier ones in prose only).
    out["files_edited"] = (await session_facts(conn, sid)).files_edited if since else \
        facts.files_edited
    out["open_todos"] = facts.open_todos
    out["failed_commands"] = facts.failed_commands
    out["tests_run"] = facts.tests_run
    out["last_errors"] = facts.last_errors
    project_dir = out["session"]["project_dir"]
    out["memories"] = await _memories(conn, sid, [project_dir] if project_dir else project_dirs,
                                      int(budget * 0.15))
    return _fit(out, budget)


async def _memory_checkpoint(conn: aiosqlite.Connection, checkpoint_id: str
                             ) -> tuple[dict[str, Any], str | None, str | None]:
    """The memory `checkpoint_id` as a checkpoint, its session and its project."""
    rows = await _rows(
        conn, "SELECT r.text, r.ts, r.session_id, r.meta, src.project_dir FROM records r "
        "LEFT JOIN sources src ON src.id = r.source_id WHERE r.uuid = ? AND r.kind = 'memory'",
        (checkpoint_id,))
    if not rows:
        raise NotFound(f"no checkpoint or memory with id {checkpoint_id!r}: pass the id "
                       "write_memory returned, or omit checkpoint_id")
    text, ts, cp_session, meta, cp_project = rows[0]
    return _memory_as_checkpoint(checkpoint_id, text, ts, meta), cp_session, cp_project


def _memory_as_checkpoint(uuid: str, text: str, ts: str, meta: str | None) -> dict[str, Any]:
    fields = {k: v for k, v in memory_meta(meta).items() if v and k != "checkpoint"}
    source = "compaction summary (PostCompact)" if fields.get("origin") == "compact_summary" \
        else "memory"
    return {"id": uuid, "source": source, "timestamp": ts, "text": text, **fields}


async def _best_checkpoint(conn: aiosqlite.Connection, sid: str) -> dict[str, Any] | None:
    """The session's latest agent-written checkpoint or compaction summary (module docstring)."""
    rows = await _rows(
        conn, "SELECT id, uuid, ts, text, meta, kind FROM records WHERE session_id = ? AND ("
        "(kind = 'compact_summary' AND agent_id IS NULL) OR (kind = 'memory' AND "
        "json_extract(meta, '$.memory_kind') = 'checkpoint' AND "
        "COALESCE(json_extract(meta, '$.origin'), '') != 'transcript')) "
        "ORDER BY ts DESC NULLS LAST, id DESC LIMIT 1", (sid,))
    if not rows:
        return None
    record_id, uuid, ts, text, meta, kind = rows[0]
    if kind == "memory":
        return _memory_as_checkpoint(uuid, text, ts, meta)
    return {"id": uuid, "source": "compaction summary", "handle": f"rec:{record_id}",
            "timestamp": ts, "text": text}


def _shaped(checkpoint: dict[str, Any], budget: int) -> dict[str, Any]:
    """`checkpoint` with its text as the sections that matter first, within `budget`."""
    text = checkpoint.pop("text", "") or ""
    found = sections(text)
    if len(found) <= 1:
        return {**checkpoint, "text": trim(text, budget)}
    kept: list[dict[str, str]] = []
    omitted: list[str] = []
    left = budget
    for section in by_priority(found):
        heading = section.heading or "(preamble)"
        if section.key == "other" and len(found) > 1:
            omitted.append(heading)  # "This session is being continued..." says nothing
            continue
        size = len(section.text) + len(heading) + 30
        if size <= left:
            kept.append({"heading": heading, "text": section.text})
            left -= size
        elif (left > 300 and not kept) or left > 600:
            kept.append({"heading": heading, "text": trim(section.text, left - len(heading) - 60)})
            left = 0
        else:
            omitted.append(heading)
    out = {**checkpoint, "sections": kept}
    if omitted:
        out["omitted_sections"] = omitted
    return out


async def _session_turns(conn: aiosqlite.Connection, sid: str, since: str | None,
                         budget: int) -> dict[str, Any]:
    """The session, the turns after the checkpoint (or the recent turns when it has
    none) and the user's last requests."""
    out: dict[str, Any] = {}
    meta_rows = await _rows(
        conn, "SELECT session_id, title, cwd, git_branch, first_ts, last_ts, project_dir "
        "FROM sessions WHERE session_id = ?", (sid,))
    keys = ("session_id", "title", "cwd", "git_branch", "first_ts", "last_ts", "project_dir")
    out["session"] = dict(zip(keys, meta_rows[0])) | await session_machine(conn, sid)
    after = await _rows(
        conn, "SELECT kind, ts, text FROM records WHERE session_id = ? AND "
        "agent_id IS NULL AND kind IN ('prompt', 'assistant') AND (? IS NULL OR ts > ?) "
        "ORDER BY ts DESC NULLS LAST, id DESC LIMIT 12", (sid, since, since))
    each = max(150, budget // max(len(after), 1))
    out["since_checkpoint" if since else "recent_turns"] = [
        {"kind": k, "timestamp": ts, "text": trim(t, each)} for k, ts, t in reversed(after)
    ]
    prompts = await _rows(
        conn, "SELECT ts, text FROM records WHERE session_id = ? AND kind = 'prompt' AND "
        "agent_id IS NULL ORDER BY ts DESC NULLS LAST, id DESC LIMIT 5", (sid,))
    out["last_requests"] = [{"timestamp": ts, "text": trim(t, 400)} for ts, t in reversed(prompts)]
    return out


async def _memories(conn: aiosqlite.Connection, sid: str | None, project_dirs: list[str] | None,
                    budget: int) -> list[dict[str, Any]]:
    """The session's and the project's explicit memories, latest first (deja's own
    checkpoints left out)."""
    clauses = ["r.kind = 'memory'",
               f"COALESCE(json_extract(r.meta, '$.origin'), '') NOT IN "
               f"({', '.join('?' for _ in _OWN_ORIGINS)})"]
    params: list[Any] = list(_OWN_ORIGINS)
    scope = []
    if sid:
        scope.append("r.session_id = ?")
        params.append(sid)
    if project_dirs:
        scope.append(in_list("src.project_dir", project_dirs))
        params.extend(project_dirs)
    if scope:
        clauses.append("(" + " OR ".join(scope) + ")")
    rows = await _rows(
        conn, "SELECT r.uuid, r.ts, r.text, r.meta, r.session_id FROM records r "
        "LEFT JOIN sources src ON src.id = r.source_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY r.ts DESC NULLS LAST LIMIT 8", params)
    each = max(200, budget // max(len(rows), 1))
    return [{"id": u, "timestamp": ts, "text": trim(t, each), "session_id": s,
             **{k: v for k, v in memory_meta(m).items() if v}} for u, ts, t, m, s in rows]


def _size(out: dict[str, Any]) -> int:
    return len(json.dumps(out, ensure_ascii=False))


def _fit(out: dict[str, Any], budget: int) -> dict[str, Any]:
    """`out` cut until its JSON is within `budget` characters: the oldest turns first,
    then the checkpoint's last sections, then the memories."""
    for key in ("since_checkpoint", "recent_turns", "memories", "last_requests"):
        while _size(out) > budget and out.get(key):
            out[key].pop(0 if key != "memories" else -1)
        checkpoint = out.get("checkpoint") or {}
        while _size(out) > budget and len(checkpoint.get("sections") or []) > 1:
            dropped = checkpoint["sections"].pop()
            checkpoint.setdefault("omitted_sections", []).insert(0, dropped["heading"])
    return out
