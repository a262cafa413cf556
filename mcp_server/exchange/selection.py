"""Which rows an export covers, and reading them in one pass.

The filters are those of search: `--project` (resolved like everywhere else,
mcp_server/projects.py), `--session` (an id or its prefix), `--since` (a date
or `7d`, mcp_server/search/times.py). On PostgreSQL (a PgConn) the same
queries run, and sources and records also give their `machine`. Records are read in id order, so an
import gives them ids in the same relative order: the full-text index holds
each record with its predecessor in the same file (migration m005), and that
predecessor must still come before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiosqlite

from ingest.errors import InvalidQuery

from ..projects import expand_project_arg, resolve_project
from ..search.times import parse_time

__all__ = ["Selection", "RECORD_COLUMNS", "SOURCE_COLUMNS", "SESSION_COLUMNS", "AGENT_COLUMNS",
           "select", "records", "sources", "sessions", "agent_runs", "is_postgres"]

# What an export carries of each table: everything but ids local to one file and the cursor.
RECORD_COLUMNS = ("line_key", "part", "uuid", "parent_uuid", "session_id", "agent_id", "kind",
                  "role", "tool_name", "tool_use_id", "is_error", "text", "text_len",
                  "truncated", "ts", "cwd", "git_branch", "model", "is_sidechain",
                  "byte_offset", "meta", "embed_state")
SOURCE_COLUMNS = ("display_path", "project_dir", "layout", "session_hint", "session_id",
                  "agent_id")
SESSION_COLUMNS = ("session_id", "project_dir", "cwd", "git_branch", "title", "title_kind",
                   "agent_name", "first_ts", "last_ts", "version", "project_key")
AGENT_COLUMNS = ("session_id", "agent_id", "layout", "agent_type", "description",
                 "tool_use_id", "is_aside")


@dataclass(frozen=True)
class Selection:
    """The WHERE clause over `records r JOIN sources s` and its parameters."""

    where: str
    params: tuple[Any, ...]


async def select(conn: aiosqlite.Connection, *, project: str | None = None,
                 session: str | None = None, since: str | None = None) -> Selection:
    """The rows the filters cover. Raises InvalidQuery for a bad date or an unknown session."""
    clauses: list[str] = []
    params: list[Any] = []
    dirs = await resolve_project(conn, expand_project_arg(project))
    if dirs is not None:
        clauses.append(f"s.project_dir IN ({', '.join('?' for _ in dirs)})" if dirs else "1 = 0")
        params.extend(dirs)
    if session:
        ids = [r[0] for r in await conn.execute_fetchall(
            "SELECT session_id FROM sessions WHERE session_id = ? OR session_id LIKE ? "
            "ESCAPE '\\'", (session, session.replace("%", "\\%").replace("_", "\\_") + "%"))]
        if not ids:
            raise InvalidQuery(f"no session {session!r}: `deja sessions` lists them")
        clauses.append(f"r.session_id IN ({', '.join('?' for _ in ids)})")
        params.extend(ids)
    if since:
        clauses.append("r.ts >= ?")
        params.append(parse_time(since))
    return Selection(" AND ".join(clauses) or "1 = 1", tuple(params))


async def _iterate(conn: aiosqlite.Connection, sql: str,
                   params: tuple[Any, ...]) -> AsyncIterator[dict[str, Any]]:
    async with conn.execute(sql, params) as cursor:
        async for row in cursor:  # sqlite3.Row and PgConn's Row both know their columns
            yield dict(zip(row.keys(), row))


def is_postgres(conn: Any) -> bool:
    """Whether `conn` is the PostgreSQL engine's PgConn (ingest/pg/sqlconn.py)."""
    return getattr(conn, "engine", "sqlite") == "postgresql"


def _machine(conn: Any, table: str) -> str:
    """`, t.machine` on PostgreSQL, whose sources and records know their machine."""
    return f", {table}.machine" if is_postgres(conn) else ""


def records(conn: aiosqlite.Connection, sel: Selection) -> AsyncIterator[dict[str, Any]]:
    """The selected records in id order, each with its source's path as `source`."""
    cols = ", ".join(f"r.{c}" for c in RECORD_COLUMNS)
    return _iterate(conn, f"SELECT s.path AS source, s.project_dir AS project_dir_, {cols}"
                          f"{_machine(conn, 'r')} "
                          f"FROM records r JOIN sources s ON s.id = r.source_id "
                          f"WHERE {sel.where} ORDER BY r.id", sel.params)


def sources(conn: aiosqlite.Connection, sel: Selection) -> AsyncIterator[dict[str, Any]]:
    """The files the selected records come from (with `path` as raw bytes)."""
    cols = ", ".join(f"s.{c}" for c in SOURCE_COLUMNS)
    return _iterate(conn, f"SELECT s.path, {cols}{_machine(conn, 's')} FROM sources s WHERE s.id IN "
                          f"(SELECT r.source_id FROM records r JOIN sources s ON s.id = "
                          f"r.source_id WHERE {sel.where}) ORDER BY s.id", sel.params)


def _of_sessions(sel: Selection) -> str:
    return (f"(SELECT DISTINCT r.session_id FROM records r JOIN sources s ON s.id = r.source_id "
            f"WHERE {sel.where})")


def sessions(conn: aiosqlite.Connection, sel: Selection) -> AsyncIterator[dict[str, Any]]:
    """The sessions the selected records belong to."""
    return _iterate(conn, f"SELECT {', '.join(SESSION_COLUMNS)}{_machine(conn, 'sessions')} "
                          "FROM sessions WHERE session_id "
                          f"IN {_of_sessions(sel)} ORDER BY first_ts NULLS FIRST, session_id", sel.params)


def agent_runs(conn: aiosqlite.Connection, sel: Selection) -> AsyncIterator[dict[str, Any]]:
    """The subagent runs of those sessions, with their transcript's path as `source` (and on
    PostgreSQL that file's machine, which the import needs to find the same file)."""
    cols = ", ".join(f"a.{c}" for c in AGENT_COLUMNS)
    return _iterate(conn, f"SELECT s.path AS source, {cols}{_machine(conn, 's')} FROM agent_runs a "
                          f"LEFT JOIN sources s ON s.id = a.source_id WHERE a.session_id IN "
                          f"{_of_sessions(sel)} ORDER BY a.session_id, a.agent_id", sel.params)
