"""A session read back as a conversation: what `deja show SESSION` and `deja browse` display.

Two reads, both bounded so that they cost the same on a million records as on
a thousand (they walk the `records_session_ts` index of one session, never the
whole table):
- `session_overview`: one session's facts: title, project, branch, time span,
  duration, turns (prompts), records, subagent runs, compactions, and tokens
  summed from the assistant lines' `usage` (once per message id and request id,
  keeping the largest, as FORMAT.md says Claude Code repeats a message's usage
  on each of its content lines);
- `session_records`: the main conversation in time order (`ts`, then file
  order), a page at a time or the records around one uuid; each call that
  spawned a subagent carries that run, its records indented under it by the
  views, instead of the run's lines interleaving with the main thread.

`find_session` turns what a person types (a session id or a unique prefix of
one) into the id. Plain dicts, ready for JSON.
"""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from ingest.errors import InvalidQuery, NotFound

from .render.text import seconds_between

__all__ = ["find_session", "session_overview", "session_records", "session_tokens",
           "TOKEN_KEYS"]

# usage's fields, and the names deja gives them.
TOKEN_KEYS = {"input_tokens": "input", "output_tokens": "output",
              "cache_creation_input_tokens": "cache_creation",
              "cache_read_input_tokens": "cache_read"}
_RECORD_COLS = "id, uuid, kind, role, ts, tool_name, tool_use_id, is_error, text, agent_id, meta"
_SESSION_COLS = ("session_id", "title", "project_dir", "cwd", "git_branch", "first_ts",
                 "last_ts", "version")


async def _rows(conn: aiosqlite.Connection, sql: str,
                params: tuple[Any, ...] = ()) -> list[Any]:
    return list(await conn.execute_fetchall(sql, params))


async def find_session(conn: aiosqlite.Connection, ref: str) -> str | None:
    """The session id `ref` names (the id, or a prefix of at least 6 characters naming one
    session), else None. Raises InvalidQuery when a prefix names several."""
    ref = (ref or "").strip()
    if not ref:
        return None
    if await _rows(conn, "SELECT 1 FROM sessions WHERE session_id = ?", (ref,)):
        return ref
    if len(ref) < 6:
        return None
    # A range on the primary key, not LIKE: the index answers it.
    rows = await _rows(conn, "SELECT session_id FROM sessions WHERE session_id >= ? AND "
                       "session_id < ? LIMIT 2", (ref, ref + "\U0010ffff"))
    if len(rows) > 1:
        raise InvalidQuery(f"{ref!r} names more than one session; give more of the id")
    return rows[0][0] if rows else None


def _usage(meta: str | None) -> tuple[str, dict[str, int]] | None:
    """(message id/request id key, usage counts) of an assistant record's meta, or None."""
    if not meta:
        return None
    try:
        data = json.loads(meta)
    except ValueError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {name: int(usage.get(key) or 0) for key, name in TOKEN_KEYS.items()
              if isinstance(usage.get(key) or 0, int)}
    return f"{data.get('message_id')}/{data.get('request_id')}", counts


async def session_tokens(conn: aiosqlite.Connection, session_id: str) -> dict[str, int] | None:
    """Token counts of a session and its subagents, or None when no line has usage."""
    best: dict[str, dict[str, int]] = {}
    async with conn.execute(
            "SELECT meta FROM records WHERE session_id = ? AND kind IN ('assistant', 'thinking', "
            "'tool_call') AND meta IS NOT NULL", (session_id,)) as cur:
        async for (meta,) in cur:
            got = _usage(meta)
            if got is None:
                continue
            key, counts = got
            old = best.get(key)
            if old is None or sum(counts.values()) > sum(old.values()):
                best[key] = counts
    if not best:
        return None
    total = dict.fromkeys(TOKEN_KEYS.values(), 0)
    for counts in best.values():
        for name, n in counts.items():
            total[name] += n
    return total


async def session_overview(conn: aiosqlite.Connection, session_id: str, *,
                           tokens: bool = True) -> dict[str, Any]:
    """The facts of one session (see the module docstring). Raises NotFound."""
    rows = await _rows(conn, f"SELECT {', '.join(_SESSION_COLS)} FROM sessions "
                       "WHERE session_id = ?", (session_id,))
    if not rows:
        raise NotFound(f"no session {session_id!r}; `deja sessions` lists them")
    out: dict[str, Any] = dict(zip(_SESSION_COLS, rows[0]))
    counts = await _rows(
        conn, "SELECT COUNT(*), "
        "COALESCE(SUM(CASE WHEN kind = 'prompt' AND agent_id IS NULL THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN kind = 'compaction' THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN is_error = 1 THEN 1 ELSE 0 END), 0) "
        "FROM records WHERE session_id = ?", (session_id,))
    out["records"], out["turns"], out["compactions"], out["errors"] = (int(x) for x in counts[0])
    runs = await _rows(conn, "SELECT COUNT(*) FROM agent_runs WHERE session_id = ?",
                       (session_id,))
    out["subagent_runs"] = int(runs[0][0])
    out["duration_s"] = seconds_between(out["first_ts"], out["last_ts"])
    out["tokens"] = await session_tokens(conn, session_id) if tokens else None
    out["resume"] = resume_command(out)
    return out


def resume_command(session: dict[str, Any]) -> str:
    """The shell command that resumes the session in Claude Code, in its folder."""
    from shlex import quote

    cmd = f"claude --resume {quote(str(session['session_id']))}"
    cwd = session.get("cwd")
    return f"cd {quote(cwd)} && {cmd}" if cwd else cmd


def _record(row: Any, max_chars: int | None) -> dict[str, Any]:
    text = row[8] if max_chars is None or len(row[8]) <= max_chars else \
        row[8][:max_chars] + f" …[{len(row[8]) - max_chars} more characters]"
    return {"handle": f"rec:{row[0]}", "uuid": row[1], "kind": row[2], "role": row[3],
            "timestamp": row[4], "tool_name": row[5], "tool_use_id": row[6],
            "is_error": bool(row[7]), "text": text, "agent_id": row[9]}


async def session_records(conn: aiosqlite.Connection, session_id: str, *,
                          around: str | None = None, context: int = 10, offset: int = 0,
                          limit: int = 500, max_chars: int | None = None,
                          subagent_limit: int = 50) -> dict[str, Any]:
    """A page of the main conversation of `session_id`, subagent runs under their calls.

    `around`: a uuid or handle (rec:N) of the session; the page is then the
    `context` records before it, it, and `context` after. Otherwise records
    `offset` .. `offset + limit`. `total` is the main thread's record count.
    Raises NotFound (no such record in the session), InvalidQuery.
    """
    if not (1 <= limit <= 100_000 and 0 <= context <= 1000 and offset >= 0):
        raise InvalidQuery("limit must be 1..100000, context 0..1000, offset >= 0")
    main = "session_id = ? AND agent_id IS NULL"
    order = "ORDER BY ts NULLS FIRST, id"
    total = int((await _rows(conn, f"SELECT COUNT(*) FROM records WHERE {main}",
                             (session_id,)))[0][0])
    if around is not None:
        ref = around.strip()
        key = ("id = ?", int(ref[4:])) if ref.startswith("rec:") and ref[4:].isdigit() \
            else ("uuid = ?", ref)
        hit = await _rows(conn, f"SELECT id, ts FROM records WHERE {main} AND {key[0]} "
                          "ORDER BY part LIMIT 1", (session_id, key[1]))
        if not hit:
            raise NotFound(f"no record {ref!r} in the main conversation of session {session_id}")
        hid, hts = hit[0]
        # (ts, id) before the hit: NULL timestamps sort first, as ORDER BY ts puts them.
        before = "((ts IS NOT DISTINCT FROM ? AND id < ?) OR ts < ? OR (ts IS NULL AND ? IS NOT NULL))"
        offset = int((await _rows(conn, f"SELECT COUNT(*) FROM records WHERE {main} AND "
                                  f"{before}", (session_id, hts, hid, hts, hts)))[0][0])
        offset, limit = max(0, offset - context), min(offset, context) + 1 + context
    rows = await _rows(conn, f"SELECT {_RECORD_COLS} FROM records WHERE {main} {order} "
                       "LIMIT ? OFFSET ?", (session_id, limit, offset))
    records = [_record(r, max_chars) for r in rows]
    await _attach_runs(conn, session_id, records, max_chars, subagent_limit)
    if around is not None:
        for r in records:
            r["hit"] = r["uuid"] == around.strip() or r["handle"] == around.strip()
    return {"session_id": session_id, "offset": offset, "total": total, "records": records}


async def _attach_runs(conn: aiosqlite.Connection, session_id: str,
                       records: list[dict[str, Any]], max_chars: int | None,
                       subagent_limit: int) -> None:
    """Put each subagent run under the call that spawned it (`subagent` key)."""
    calls = {r["tool_use_id"]: r for r in records if r["kind"] == "tool_call" and r["tool_use_id"]}
    if not calls:
        return
    marks = ", ".join("?" for _ in calls)
    runs = await _rows(conn, "SELECT agent_id, agent_type, description, tool_use_id FROM "
                       f"agent_runs WHERE session_id = ? AND tool_use_id IN ({marks})",
                       (session_id, *calls))
    for agent_id, agent_type, description, tool_use_id in runs:
        rows = await _rows(conn, f"SELECT {_RECORD_COLS} FROM records WHERE session_id = ? "
                           "AND agent_id = ? ORDER BY ts NULLS FIRST, id LIMIT ?",
                           (session_id, agent_id, subagent_limit))
        count = await _rows(conn, "SELECT COUNT(*) FROM records WHERE session_id = ? AND "
                            "agent_id = ?", (session_id, agent_id))
        calls[tool_use_id]["subagent"] = {
            "agent_id": agent_id, "agent_type": agent_type, "description": description,
            "total": int(count[0][0]), "records": [_record(r, max_chars) for r in rows]}
