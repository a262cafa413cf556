"""What one ingest batch carries, and the SQL that writes it.

A batch is the records of a run of complete lines of one file, the sessions
and subagent runs they touch, and the file's cursor once they are in.
`insert_batch` writes all of it on the writer's connection; it opens no
transaction: `Store.write_batch` runs it inside ONE `BEGIN IMMEDIATE`
transaction, so the rows and the cursor advance commit together or not at all
(exactly-once ingest, DESIGN.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from .derived import index_new_records, update_responses
from .gitremote import project_key
from .indexing import EMBEDDABLE_KINDS
from .parse import AgentLink, Record, SessionInfo

__all__ = ["BACKFILL_KEYS", "Batch", "BatchResult", "Cursor", "SessionAgg", "SourceRow",
           "backfill_keys", "insert_batch"]


@dataclass
class SourceRow:
    """What the database remembers of a transcript file."""

    id: int
    path: bytes
    dev: int | None
    ino: int | None
    size: int
    mtime_ns: int
    offset: int
    lines: int
    head_len: int
    head_hash: str | None
    missing: bool
    session_id: str | None


@dataclass
class Cursor:
    """Where a file has been read to; saved with the batch that reached it."""

    offset: int
    lines: int
    size: int
    mtime_ns: int
    dev: int
    ino: int
    head_len: int
    head_hash: str
    session_id: str | None = None
    reset: bool = False


@dataclass
class SessionAgg:
    """What a batch saw of one session: time span and the latest context.

    `project_key` is the git remote of its cwd (ingest/gitremote.py), looked up
    here, on the machine that reads the transcript and has the folder, so it is
    the same for both engines and for `deja sync`.
    """

    first_ts: str | None = None
    last_ts: str | None = None
    cwd: str | None = None
    git_branch: str | None = None
    version: str | None = None
    project_key: str | None = None

    def add(self, info: SessionInfo) -> None:
        if info.ts:
            if self.first_ts is None or info.ts < self.first_ts:
                self.first_ts = info.ts
            if self.last_ts is None or info.ts > self.last_ts:
                self.last_ts = info.ts
        if self.cwd is None and info.cwd:
            self.cwd = info.cwd
            self.project_key = project_key(info.cwd)
        self.git_branch = info.git_branch or self.git_branch
        self.version = info.version or self.version


@dataclass
class Batch:
    source_id: int
    records: list[Record] = field(default_factory=list)
    sessions: dict[str, SessionAgg] = field(default_factory=dict)
    titles: dict[str, SessionInfo] = field(default_factory=dict)
    agent_links: list[AgentLink] = field(default_factory=list)
    project_dir: str | None = None
    cursor: Cursor | None = None


@dataclass
class BatchResult:
    new_records: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


_EMBEDDABLE = frozenset(EMBEDDABLE_KINDS)

_RECORD_COLUMNS = (
    "source_id", "line_key", "part", "uuid", "parent_uuid", "session_id", "agent_id",
    "kind", "role", "tool_name", "tool_use_id", "is_error", "text", "text_len", "truncated",
    "ts", "cwd", "git_branch", "model", "is_sidechain", "byte_offset", "meta", "embed_state",
)
_INSERT_RECORD = (
    f"INSERT OR IGNORE INTO records ({', '.join(_RECORD_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _RECORD_COLUMNS)})"
)

_UPSERT_SESSION = """
INSERT INTO sessions (session_id, project_dir, cwd, git_branch, first_ts, last_ts, version,
                      project_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
    project_dir = COALESCE(sessions.project_dir, excluded.project_dir),
    cwd = COALESCE(sessions.cwd, excluded.cwd),
    project_key = COALESCE(sessions.project_key, excluded.project_key),
    git_branch = COALESCE(excluded.git_branch, sessions.git_branch),
    first_ts = MIN(COALESCE(sessions.first_ts, excluded.first_ts),
                   COALESCE(excluded.first_ts, sessions.first_ts)),
    last_ts = MAX(COALESCE(sessions.last_ts, excluded.last_ts),
                  COALESCE(excluded.last_ts, sessions.last_ts)),
    version = COALESCE(excluded.version, sessions.version)
"""

# The backfill of sessions written before their key existed (migration m011): those of a
# cwd whose key a batch just found get it too, at the cost of one UPDATE per folder.
BACKFILL_KEYS = "UPDATE sessions SET project_key = ? WHERE project_key IS NULL AND cwd = ?"

_UPSERT_AGENT = """
INSERT INTO agent_runs (session_id, agent_id, source_id, layout, agent_type, description,
                        tool_use_id, is_aside)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id, agent_id) DO UPDATE SET
    source_id = COALESCE(excluded.source_id, agent_runs.source_id),
    layout = COALESCE(excluded.layout, agent_runs.layout),
    agent_type = COALESCE(agent_runs.agent_type, excluded.agent_type),
    description = COALESCE(excluded.description, agent_runs.description),
    tool_use_id = COALESCE(agent_runs.tool_use_id, excluded.tool_use_id),
    is_aside = MAX(agent_runs.is_aside, excluded.is_aside)
"""


def _record_row(source_id: int, r: Record) -> tuple[Any, ...]:
    return (
        source_id, r.line_key, r.part, r.uuid, r.parent_uuid, r.session_id, r.agent_id,
        r.kind, r.role, r.tool_name, r.tool_use_id,
        None if r.is_error is None else int(r.is_error),
        r.text, r.text_len, int(r.truncated), r.ts, r.cwd, r.git_branch, r.model,
        int(r.is_sidechain), r.byte_offset,
        json.dumps(r.meta, ensure_ascii=False, separators=(",", ":")) if r.meta else None,
        0 if r.kind in _EMBEDDABLE else 2,
    )


async def insert_batch(conn: aiosqlite.Connection, batch: Batch) -> BatchResult:
    """Write `batch`'s rows and then its cursor, inside the caller's transaction."""
    result = BatchResult()
    if batch.records:
        await _insert_records(conn, batch, result)
    if batch.sessions:
        await conn.executemany(_UPSERT_SESSION, [
            (sid, batch.project_dir, s.cwd, s.git_branch, s.first_ts, s.last_ts, s.version,
             s.project_key)
            for sid, s in batch.sessions.items()
        ])
        await conn.executemany(BACKFILL_KEYS, sorted(backfill_keys(batch)))
    for info in batch.titles.values():
        await _name_session(conn, info, batch.project_dir)
    for link in batch.agent_links:
        await _link_agent(conn, batch.source_id, link)
    if batch.cursor is not None:
        await _advance_cursor(conn, batch.source_id, batch.cursor)
    return result


def backfill_keys(batch: Batch) -> set[tuple[str, str]]:
    """(project key, cwd) of the batch's sessions that have a key: BACKFILL_KEYS' rows."""
    return {(s.project_key, s.cwd) for s in batch.sessions.values()
            if s.project_key and s.cwd}


async def _insert_records(conn: aiosqlite.Connection, batch: Batch, result: BatchResult) -> None:
    """The records, their full-text rows and usage, their tools' names; counted into `result`."""
    before = (await _rows(conn, "SELECT COALESCE(MAX(id), 0) FROM records"))[0][0]
    await conn.executemany(
        _INSERT_RECORD, [_record_row(batch.source_id, r) for r in batch.records]
    )
    await index_new_records(conn, before)
    await update_responses(conn, before)
    # Results name their tool only through the call's id: fill it in
    # from the call (an earlier line, maybe an earlier batch) of the
    # same session (ids like call_function_1 repeat across sessions).
    await conn.execute(
        "UPDATE records SET tool_name = (SELECT c.tool_name FROM records c "
        "WHERE c.tool_use_id = records.tool_use_id AND c.kind = 'tool_call' "
        "AND c.session_id IS records.session_id LIMIT 1) "
        "WHERE id > ? AND kind = 'tool_result' AND tool_name IS NULL "
        "AND tool_use_id IS NOT NULL",
        (before,),
    )
    for kind, count in await conn.execute_fetchall(
        "SELECT kind, COUNT(*) FROM records WHERE id > ? GROUP BY kind", (before,)
    ):
        result.by_kind[kind] = count
        result.new_records += count


async def _name_session(conn: aiosqlite.Connection, info: SessionInfo,
                        project_dir: str | None) -> None:
    """A session's title and agent name, the session row created when it has none yet."""
    await conn.execute(
        "INSERT INTO sessions (session_id, project_dir) VALUES (?, ?) "
        "ON CONFLICT (session_id) DO NOTHING",
        (info.session_id, project_dir),
    )
    if info.title:
        await conn.execute(
            "UPDATE sessions SET title = ?, title_kind = ? WHERE session_id = ?",
            (info.title, info.title_kind, info.session_id),
        )
    if info.agent_name:
        await conn.execute(
            "UPDATE sessions SET agent_name = ? WHERE session_id = ?",
            (info.agent_name, info.session_id),
        )


async def _link_agent(conn: aiosqlite.Connection, source_id: int, link: AgentLink) -> None:
    """A subagent run; its spawning call found by the prompt's hash when the link lacks its id."""
    tool_use_id = link.tool_use_id
    if tool_use_id is None and link.spawn_prompt_sha:
        rows = await _rows(
            conn,
            "SELECT tool_use_id FROM records WHERE source_id = ? AND kind = 'tool_call' "
            "AND tool_name IN ('Task', 'Agent') "
            "AND json_extract(meta, '$.prompt_sha1') = ? ORDER BY id DESC LIMIT 1",
            (source_id, link.spawn_prompt_sha),
        )
        tool_use_id = rows[0][0] if rows else None
    await conn.execute(_UPSERT_AGENT, (
        link.session_id, link.agent_id,
        source_id if link.from_source else None,
        link.layout, link.agent_type, link.description, tool_use_id,
        int(link.is_aside),
    ))


async def _advance_cursor(conn: aiosqlite.Connection, source_id: int, c: Cursor) -> None:
    """The file's cursor: where the next batch starts reading (and what the file looked like)."""
    await conn.execute(
        "UPDATE sources SET offset = ?, lines = ?, size = ?, mtime_ns = ?, dev = ?, "
        "ino = ?, head_len = ?, head_hash = ?, missing = 0, "
        "session_id = COALESCE(session_id, ?), resets = resets + ?, "
        "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
        (c.offset, c.lines, c.size, c.mtime_ns, c.dev, c.ino, c.head_len,
         c.head_hash, c.session_id, int(c.reset), source_id),
    )


async def _rows(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """execute_fetchall as a list (aiosqlite types it as an Iterable)."""
    return list(await conn.execute_fetchall(sql, params))
