"""What `deja browse` asks of the database: every query of the terminal UI, none in its widgets.

Opening must take under a second on a million records, so no query here
reads the records table beyond one session's stretch of the
`records_session_ts` index:
- `sessions_page`: a page of sessions (the sessions table is small: one row a
  session), newest first, filtered by project and by text, with each
  session's record count, which the index answers without reading a record;
- `session_details`: what costs a read of a session's records (turns,
  compactions, tokens), asked for one row at a time after the list is up;
- the session view pages through mcp_server/transcript.py; search is
  mcp_server.search `search()` in keyword mode unless a model is given (the
  UI never loads one: torch or onnxruntime would cost seconds at start);
- `doctor_checks`: mcp_server.doctor's checks when that module exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from ingest.config import PostgresUrl

from ..checkpoint import load_checkpoint
from ..search import Resources, SearchRequest, SearchResult, search
from ..transcript import resume_command, session_tokens

__all__ = ["Check", "PAGE", "projects", "sessions_page", "session_details", "keyword_search",
           "checkpoint", "doctor_checks"]

PAGE = 100
_COLS = ("session_id", "title", "project_dir", "cwd", "git_branch", "first_ts", "last_ts")


@dataclass(frozen=True)
class Check:
    """One diagnostic line, as mcp_server.doctor's `Check` has it."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None


async def projects(conn: aiosqlite.Connection) -> list[tuple[str, str, int]]:
    """(project_dir, a cwd of it, sessions) for every project, most sessions first."""
    rows = await conn.execute_fetchall(
        "SELECT project_dir, MAX(cwd), COUNT(*) FROM sessions WHERE project_dir IS NOT NULL "
        "AND last_ts IS NOT NULL GROUP BY project_dir ORDER BY COUNT(*) DESC, project_dir")
    return [(r[0], r[1] or r[0], int(r[2])) for r in rows]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def sessions_page(conn: aiosqlite.Connection, *, project_dir: str | None = None,
                        text: str = "", offset: int = 0,
                        limit: int = PAGE) -> list[dict[str, Any]]:
    """Sessions, newest first: `limit` from `offset`, of one project folder (None: all),
    whose title, id, folder or branch holds `text` (case-insensitive)."""
    clauses, params = ["s.last_ts IS NOT NULL"], []
    if project_dir is not None:
        clauses.append("s.project_dir = ?")
        params.append(project_dir)
    if text.strip():
        cols = ("s.title", "s.session_id", "s.cwd", "s.git_branch")
        clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in cols) + ")")
        params.extend([_like(text.strip())] * len(cols))
    rows = await conn.execute_fetchall(
        f"SELECT {', '.join('s.' + c for c in _COLS)}, "
        "(SELECT COUNT(*) FROM records r WHERE r.session_id = s.session_id), "
        "(SELECT COUNT(*) FROM agent_runs a WHERE a.session_id = s.session_id) "
        f"FROM sessions s WHERE {' AND '.join(clauses)} ORDER BY s.last_ts DESC NULLS LAST "
        "LIMIT ? OFFSET ?", (*params, limit, offset))
    return [{**dict(zip(_COLS, r[:7])), "records": int(r[7]), "subagent_runs": int(r[8])}
            for r in rows]


async def session_details(conn: aiosqlite.Connection, session_id: str) -> dict[str, Any]:
    """turns, compactions and tokens of one session (reads its records once each)."""
    rows = list(await conn.execute_fetchall(
        "SELECT COALESCE(SUM(CASE WHEN kind = 'prompt' AND agent_id IS NULL THEN 1 END), 0), "
        "COALESCE(SUM(CASE WHEN kind = 'compaction' THEN 1 END), 0) FROM records "
        "WHERE session_id = ?",
        (session_id,)))
    return {"turns": int(rows[0][0]), "compactions": int(rows[0][1]),
            "tokens": await session_tokens(conn, session_id)}


async def keyword_search(conn: aiosqlite.Connection, query: str, *,
                         project_dir: str | None = None, limit: int = 30) -> SearchResult:
    """`search()` in keyword mode (no model), over one project folder or all.

    On PostgreSQL (`conn` a PgConn) the engine's own rankers answer (mcp_server/search/pg).
    Raises InvalidQuery for a query with no searchable word.
    """
    request = SearchRequest(query, mode="keyword", limit=limit, project=project_dir)
    if getattr(conn, "engine", "sqlite") == "postgresql":
        from ..search.pg import search_pg

        return await search_pg(conn.raw, request)  # type: ignore[attr-defined]
    return await search(conn, request, Resources())


async def checkpoint(conn: aiosqlite.Connection, session: dict[str, Any]) -> dict[str, Any]:
    """load_checkpoint's briefing of a session, with the command that resumes it."""
    out = await load_checkpoint(conn, session_id=session["session_id"], max_tokens=3000)
    out["resume"] = resume_command({**out.get("session", {}), **session})
    return out


def doctor_checks(db_path: Path | PostgresUrl, env: Mapping[str, str]) -> list[Check]:
    """mcp_server.doctor's checks; one failed Check saying so when that module is missing."""
    try:
        doctor = importlib.import_module("mcp_server.doctor")
    except ImportError:
        return [Check("doctor", "warn", "doctor not available in this version of deja",
                      "update deja; `deja stats` shows what the database holds")]
    return [Check(c.name, c.status, c.detail, c.fix) for c in doctor.run_checks(db_path, env)]
