"""Reading the history around a hit: context, sessions, status.

The answering side of deja's reads that are not ranked search: the turns
around a record (in file order, which is conversation order), recent sessions
of a project, and what the database holds. Every function takes an aiosqlite
connection (or ingest.pg.sqlconn.PgConn: the same SQL runs on both engines) and
returns plain dicts ready for JSON.

Which machine: on PostgreSQL, a shared database, a session says the machine
it came from (`machine`: its record's for get_context, the session's, the
first machine that wrote it, for list_sessions). On SQLite, one machine's
file, there is no such column and the answers have no `machine` key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiosqlite

from ingest.config import database_bytes
from ingest.errors import InvalidQuery, NotFound

from .projects import resolve_project
from .search import parse_time
from .search.filters import in_list

__all__ = ["find_record", "get_context", "list_sessions", "on_postgres", "session_machine",
           "status", "trim", "memory_meta"]

_HANDLE = re.compile(r"^rec:(\d+)$")


def on_postgres(conn: Any) -> bool:
    """Whether `conn` reads a PostgreSQL database (PgConn), where rows know their machine."""
    return getattr(conn, "engine", "sqlite") == "postgresql"


async def session_machine(conn: Any, session_id: str | None) -> dict[str, Any]:
    """{"machine": ...} of a session on PostgreSQL, {} on SQLite: merged into a session dict."""
    if not on_postgres(conn):
        return {}
    rows = await _rows(conn, "SELECT machine FROM sessions WHERE session_id = ?", (session_id,))
    return {"machine": rows[0][0] if rows else None}


def trim(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with the cut said."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" …[{len(text) - limit} more characters]"


async def find_record(conn: aiosqlite.Connection, ref: str) -> tuple[Any, ...]:
    """The record a hit handle (`rec:123`), a line uuid or a memory id names.

    Raises NotFound.
    """
    ref = (ref or "").strip()
    m = _HANDLE.match(ref)
    cols = "id, source_id, byte_offset, part, session_id, ts"
    if m:
        rows = await _rows(conn, f"SELECT {cols} FROM records WHERE id = ?", (int(m.group(1)),))
    else:
        # The same uuid can sit in two files (a /btw replay): prefer the session file.
        rows = await _rows(
            conn,
            f"SELECT {cols} FROM records WHERE uuid = ? ORDER BY "
            f"(SELECT layout != 'session' FROM sources WHERE sources.id = records.source_id), "
            f"part LIMIT 1",
            (ref,),
        )
    if not rows:
        raise NotFound(f"no record {ref!r}: pass a hit's uuid or its handle (rec:<id>)")
    return tuple(rows[0])


def _record_dict(row: Any, max_chars: int) -> dict[str, Any]:
    return {
        "handle": f"rec:{row[0]}", "uuid": row[1], "kind": row[2], "role": row[3],
        "timestamp": row[4], "tool_name": row[5], "text": trim(row[6], max_chars),
        "truncated_at_ingest": bool(row[7]), "agent_id": row[8],
    }


async def get_context(conn: aiosqlite.Connection, ref: str, *, before: int = 5, after: int = 5,
                      max_tokens: int = 4000) -> dict[str, Any]:
    """The records around `ref` in its file, within a token budget (~4 characters a token).

    Raises NotFound, InvalidQuery.
    """
    if not (0 <= before <= 100 and 0 <= after <= 100):
        raise InvalidQuery("before and after must be between 0 and 100")
    if max_tokens < 100:
        raise InvalidQuery("max_tokens must be at least 100")
    rid, source_id, offset, part, session_id, _ts = await find_record(conn, ref)
    cols = "id, uuid, kind, role, ts, tool_name, text, truncated, agent_id"
    if source_id is None or offset is None:
        rows_before, rows_after = [], []
        target = await _rows(conn, f"SELECT {cols} FROM records WHERE id = ?", (rid,))
    else:
        target = await _rows(conn, f"SELECT {cols} FROM records WHERE id = ?", (rid,))
        rows_before = list(await conn.execute_fetchall(
            f"SELECT {cols} FROM records WHERE source_id = ? AND (byte_offset < ? OR "
            f"(byte_offset = ? AND part < ?)) ORDER BY byte_offset DESC NULLS LAST, part DESC LIMIT ?",
            (source_id, offset, offset, part, before),
        ))
        rows_before.reverse()
        rows_after = list(await conn.execute_fetchall(
            f"SELECT {cols} FROM records WHERE source_id = ? AND (byte_offset > ? OR "
            f"(byte_offset = ? AND part > ?)) ORDER BY byte_offset, part LIMIT ?",
            (source_id, offset, offset, part, after),
        ))
    budget_chars = max_tokens * 4
    # The hit itself gets up to half the budget; neighbours share the rest.
    hit = _record_dict(target[0], max(400, budget_chars // 2))
    rest = budget_chars - len(hit["text"])
    neighbours = len(rows_before) + len(rows_after)
    each = max(200, rest // max(neighbours, 1))
    session = await _rows(
        conn, "SELECT session_id, title, cwd, git_branch, first_ts, last_ts FROM sessions "
        "WHERE session_id = ?", (session_id,),
    )
    about: dict[str, Any] = dict(zip(
        ("session_id", "title", "cwd", "git_branch", "first_ts", "last_ts"), session[0]
    )) if session else {"session_id": session_id}
    if on_postgres(conn):
        # The machine of the hit's own file: a session copied between machines has both.
        about["machine"] = (await _rows(conn, "SELECT machine FROM records WHERE id = ?",
                                        (rid,)))[0][0]
    return {
        "session": about,
        "before": [_record_dict(r, each) for r in rows_before],
        "hit": hit,
        "after": [_record_dict(r, each) for r in rows_after],
    }


async def list_sessions(conn: aiosqlite.Connection, *, project: str | None = None,
                        since: str | None = None, limit: int = 20) -> dict[str, Any]:
    """Recent sessions, newest first: title, project, branch, time span, size, subagents."""
    if not 1 <= limit <= 200:
        raise InvalidQuery("limit must be between 1 and 200")
    dirs = await resolve_project(conn, project)
    clauses = ["s.last_ts IS NOT NULL"]
    params: list[Any] = []
    if dirs is not None:
        clauses.append(in_list("s.project_dir", dirs))
        params.extend(dirs)
    if since:
        clauses.append("s.last_ts >= ?")
        params.append(parse_time(since))
    rows = await conn.execute_fetchall(
        "SELECT s.session_id, s.title, s.cwd, s.project_dir, s.git_branch, s.first_ts, s.last_ts, "
        "(SELECT COUNT(*) FROM records r WHERE r.session_id = s.session_id), "
        "(SELECT COUNT(*) FROM records r WHERE r.session_id = s.session_id AND r.kind = 'prompt'), "
        "(SELECT COUNT(*) FROM agent_runs a WHERE a.session_id = s.session_id)"
        f"{', s.machine' if on_postgres(conn) else ''} "
        f"FROM sessions s WHERE {' AND '.join(clauses)} ORDER BY s.last_ts DESC NULLS LAST LIMIT ?",
        (*params, limit),
    )
    keys = ("session_id", "title", "cwd", "project_dir", "git_branch", "first_ts", "last_ts",
            "records", "prompts", "subagent_runs", "machine")  # no machine on SQLite: zip stops
    return {"sessions": [dict(zip(keys, r)) for r in rows]}


async def status(conn: aiosqlite.Connection, db_path: Path) -> dict[str, Any]:
    """Counts and freshness for memory_status / deja stats.

    `database_bytes` is the file plus its -wal and -shm (`config.database_bytes`),
    the same figure `deja stats` prints.
    """
    model = await _rows(conn, "SELECT model_id, dim FROM embedding_model")
    last = await _rows(conn, "SELECT value FROM meta WHERE key = 'last_ingest'")
    return {
        "database": str(db_path),
        "database_bytes": database_bytes(db_path),
        "sessions": await _count(conn, "SELECT COUNT(*) FROM sessions"),
        "records": await _count(conn, "SELECT COUNT(*) FROM records"),
        "memories": await _count(conn, "SELECT COUNT(*) FROM records WHERE kind = 'memory'"),
        "pending_embeddings": await _count(conn,
                                           "SELECT COUNT(*) FROM records WHERE embed_state = 0"),
        "embedding_model": {"model_id": model[0][0], "dim": model[0][1]} if model else None,
        "last_ingest": last[0][0] if last else None,
    }


async def _rows(conn: aiosqlite.Connection, sql: str,
                params: tuple[Any, ...] = ()) -> list[Any]:
    """All rows of `sql`, as a list (aiosqlite types them as a bare Iterable)."""
    return list(await conn.execute_fetchall(sql, params))


async def _count(conn: aiosqlite.Connection, sql: str) -> int:
    return int((await _rows(conn, sql))[0][0])


def memory_meta(meta: str | None) -> dict[str, Any]:
    """A memory record's meta column as a dict; {} when empty or not JSON."""
    try:
        return json.loads(meta) if meta else {}
    except ValueError:
        return {}
