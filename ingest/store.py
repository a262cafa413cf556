"""All SQL writes of deja, and the reads that ingest itself needs.

`Store.open()` migrates the file (in a worker thread, with a plain connection)
and then opens the aiosqlite connection that owns writes. `write_batch()` is the
heart of exactly-once ingest: the records of a run of complete lines, the
sessions and subagent runs they touch, and the file's cursor advance commit in
ONE `BEGIN IMMEDIATE` transaction. Kill the process anywhere: either all of a
batch is in the database, cursor included, or none of it is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from .config import database_bytes
from .db import connect, driver_errors, is_locked_error, make_connector
from .errors import DatabaseError, DatabaseLocked
from .indexing import EMBEDDABLE_KINDS, FTS_CONTEXT_SQL, FTS_SKIP_SQL, PASSAGES_SQL
from .migrations import migrate
from .parse import AgentLink, Record, SessionInfo

__all__ = ["Store", "SourceRow", "Cursor", "Batch", "BatchResult", "SessionAgg", "index_new_records",
           "RESPONSE_KEY_SQL", "update_responses"]

logger = logging.getLogger(__name__)


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
    """What a batch saw of one session: time span and the latest context."""

    first_ts: str | None = None
    last_ts: str | None = None
    cwd: str | None = None
    git_branch: str | None = None
    version: str | None = None

    def add(self, info: SessionInfo) -> None:
        if info.ts:
            if self.first_ts is None or info.ts < self.first_ts:
                self.first_ts = info.ts
            if self.last_ts is None or info.ts > self.last_ts:
                self.last_ts = info.ts
        self.cwd = self.cwd or info.cwd
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
INSERT INTO sessions (session_id, project_dir, cwd, git_branch, first_ts, last_ts, version)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
    project_dir = COALESCE(sessions.project_dir, excluded.project_dir),
    cwd = COALESCE(sessions.cwd, excluded.cwd),
    git_branch = COALESCE(excluded.git_branch, sessions.git_branch),
    first_ts = MIN(COALESCE(sessions.first_ts, excluded.first_ts),
                   COALESCE(excluded.first_ts, sessions.first_ts)),
    last_ts = MAX(COALESCE(sessions.last_ts, excluded.last_ts),
                  COALESCE(excluded.last_ts, sessions.last_ts)),
    version = COALESCE(excluded.version, sessions.version)
"""

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


# The response (message id, request id) a record belongs to, for `responses`
# (migration m008 froze the same expression: tests/test_migrations.py checks it).
RESPONSE_KEY_SQL = (
    "COALESCE(json_extract(r.meta, '$.message_id') || char(31) || "
    "COALESCE(json_extract(r.meta, '$.request_id'), ''), 'line:' || r.line_key)"
)

# Usage once per response, the largest value of each field: the lines of one
# response repeat it (newer Claude Code) or grow it (older), in this batch or
# across batches and files (FORMAT.md). MIN() of two values is NULL when one
# is, hence the COALESCEs.
_UPSERT_RESPONSES = f"""
INSERT INTO responses (key, session_id, model, ts, input, output, cache_creation, cache_read)
SELECT k, MIN(session_id), MIN(model), MIN(ts), MAX(i), MAX(o), MAX(cc), MAX(cr) FROM (
    SELECT {RESPONSE_KEY_SQL} AS k, r.session_id, r.model, r.ts,
        COALESCE(json_extract(r.meta, '$.usage.input_tokens'), 0) AS i,
        COALESCE(json_extract(r.meta, '$.usage.output_tokens'), 0) AS o,
        COALESCE(json_extract(r.meta, '$.usage.cache_creation_input_tokens'), 0) AS cc,
        COALESCE(json_extract(r.meta, '$.usage.cache_read_input_tokens'), 0) AS cr
    FROM records r
    WHERE r.id > ? AND r.role = 'assistant' AND r.meta LIKE '%"usage":%'
) GROUP BY k
ON CONFLICT (key) DO UPDATE SET
    session_id = COALESCE(MIN(responses.session_id, excluded.session_id), responses.session_id,
                          excluded.session_id),
    model = COALESCE(MIN(responses.model, excluded.model), responses.model, excluded.model),
    ts = COALESCE(MIN(responses.ts, excluded.ts), responses.ts, excluded.ts),
    input = MAX(responses.input, excluded.input),
    output = MAX(responses.output, excluded.output),
    cache_creation = MAX(responses.cache_creation, excluded.cache_creation),
    cache_read = MAX(responses.cache_read, excluded.cache_read)
"""


async def update_responses(conn: aiosqlite.Connection, after_id: int) -> None:
    """Count the usage of records with id > after_id into `responses` (inside the writer's
    transaction): every writer of records calls it, as it calls index_new_records."""
    await conn.execute(_UPSERT_RESPONSES, (after_id,))


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


async def index_new_records(conn: aiosqlite.Connection, after_id: int) -> None:
    """Add records with id > after_id to the full-text index, in one statement.

    Inside the writer's transaction; one INSERT ... SELECT costs half what a
    per-row trigger does (migration m003). Injected copies of a command's
    arguments get no rows; records longer than PASSAGE_FROM also get passages.
    """
    await conn.execute(
        "INSERT INTO records_fts (rowid, text, context) "
        f"SELECT r.id, deja_fts_text(r.text), {FTS_CONTEXT_SQL} FROM records r "
        f"WHERE r.id > ? AND NOT {FTS_SKIP_SQL}",
        (after_id,),
    )
    # Long records also as passages (ingest/indexing.py, migration m007).
    await conn.execute(PASSAGES_SQL.format(where="r.id > ?"), (after_id,))


class Store:
    """The deja database: one aiosqlite connection that owns writes."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Create or migrate the database at `path` and open it.

        Raises DatabaseLocked, SchemaTooNew or DatabaseError.
        """
        path = Path(path).expanduser()
        try:
            await anyio.to_thread.run_sync(_migrate_file, path)
        except driver_errors() as exc:
            if is_locked_error(exc):
                raise DatabaseLocked(f"database {path} is locked by another process") from exc
            raise DatabaseError(f"cannot prepare database {path}: {exc}") from exc
        except OSError as exc:
            raise DatabaseError(f"cannot create database {path}: {exc}") from exc
        conn = await connect(path)
        return cls(path, conn)

    async def close(self) -> None:
        await self.conn.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sources and cursors ------------------------------------------------

    async def load_sources(self) -> dict[bytes, SourceRow]:
        rows = await self.conn.execute_fetchall(
            "SELECT id, path, dev, ino, size, mtime_ns, offset, lines, head_len, head_hash, "
            "missing, session_id FROM sources"
        )
        return {
            bytes(r[1]): SourceRow(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                                   r[9], bool(r[10]), r[11])
            for r in rows
        }

    async def add_sources(self, files: list[tuple[str, str, str, str, str | None, str | None]]
                          ) -> dict[bytes, SourceRow]:
        """Register new files (path, display, project_dir, layout, session_hint, agent_id).

        Their cursors start at 0; returns the new rows by raw path.
        """
        if not files:
            return {}
        rows = [(os.fsencode(f[0]), *f[1:]) for f in files]
        async with self.transaction():
            await self.conn.executemany(
                "INSERT OR IGNORE INTO sources (path, display_path, project_dir, layout, "
                "session_hint, agent_id) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        wanted = {r[0] for r in rows}
        return {raw: row for raw, row in (await self.load_sources()).items() if raw in wanted}

    async def mark_missing(self, source_ids: list[int], missing: bool = True) -> None:
        """Flag files that are gone (their records stay) or came back."""
        if not source_ids:
            return
        async with self.transaction():
            await self.conn.executemany(
                "UPDATE sources SET missing = ? WHERE id = ?",
                [(int(missing), sid) for sid in source_ids],
            )

    # -- the batch write ----------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Commit a batch and its cursor in one transaction (see module docstring)."""
        result = BatchResult()
        conn = self.conn
        async with self.transaction():
            before = (await _rows(conn, "SELECT COALESCE(MAX(id), 0) FROM records"))[0][0]
            if batch.records:
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
            if batch.sessions:
                await conn.executemany(_UPSERT_SESSION, [
                    (sid, batch.project_dir, s.cwd, s.git_branch, s.first_ts, s.last_ts, s.version)
                    for sid, s in batch.sessions.items()
                ])
            for info in batch.titles.values():
                await conn.execute(
                    "INSERT INTO sessions (session_id, project_dir) VALUES (?, ?) "
                    "ON CONFLICT (session_id) DO NOTHING",
                    (info.session_id, batch.project_dir),
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
            for link in batch.agent_links:
                tool_use_id = link.tool_use_id
                if tool_use_id is None and link.spawn_prompt_sha:
                    rows = await _rows(
                        conn,
                        "SELECT tool_use_id FROM records WHERE source_id = ? AND kind = 'tool_call' "
                        "AND tool_name IN ('Task', 'Agent') "
                        "AND json_extract(meta, '$.prompt_sha1') = ? ORDER BY id DESC LIMIT 1",
                        (batch.source_id, link.spawn_prompt_sha),
                    )
                    tool_use_id = rows[0][0] if rows else None
                await conn.execute(_UPSERT_AGENT, (
                    link.session_id, link.agent_id,
                    batch.source_id if link.from_source else None,
                    link.layout, link.agent_type, link.description, tool_use_id,
                    int(link.is_aside),
                ))
            if batch.cursor is not None:
                c = batch.cursor
                await conn.execute(
                    "UPDATE sources SET offset = ?, lines = ?, size = ?, mtime_ns = ?, dev = ?, "
                    "ino = ?, head_len = ?, head_hash = ?, missing = 0, "
                    "session_id = COALESCE(session_id, ?), resets = resets + ?, "
                    "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
                    (c.offset, c.lines, c.size, c.mtime_ns, c.dev, c.ino, c.head_len,
                     c.head_hash, c.session_id, int(c.reset), batch.source_id),
                )
        return result

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction():
            await self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def get_meta(self, key: str) -> str | None:
        rows = await _rows(self.conn, "SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # -- reads ----------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Counts for `deja stats`: sessions, records (by kind), subagent runs, files.

        `database_bytes` is the file plus its -wal and -shm (`config.database_bytes`),
        the same figure the memory_status tool reports.
        """

        async def q(sql: str) -> list[Any]:
            return list(await self.conn.execute_fetchall(sql))

        by_kind = {k: n for k, n in await q("SELECT kind, COUNT(*) FROM records GROUP BY kind")}
        sources = (await q(
            "SELECT COUNT(*), COALESCE(SUM(missing), 0), COALESCE(SUM(offset), 0) FROM sources "
            "WHERE layout != 'memory'"
        ))[0]
        return {
            "database": str(self.path),
            "database_bytes": database_bytes(self.path),
            "sessions": (await q("SELECT COUNT(*) FROM sessions"))[0][0],
            "subagent_runs": (await q("SELECT COUNT(*) FROM agent_runs"))[0][0],
            "records": sum(by_kind.values()),
            "by_kind": dict(sorted(by_kind.items())),
            "files": sources[0],
            "missing_files": sources[1],
            "bytes_ingested": sources[2],
            "last_ingest": await self.get_meta("last_ingest"),
            "pending_embeddings": (await q(
                "SELECT COUNT(*) FROM records WHERE embed_state = 0"))[0][0],
            "chunks": (await q("SELECT COUNT(*) FROM chunks"))[0][0],
            "embedding_model": next(iter([r[0] for r in await q(
                "SELECT model_id FROM embedding_model")]), None),
        }

    # -- helpers --------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn, self.path)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error, locks made readable."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    async def __aenter__(self) -> None:
        try:
            await self.conn.execute("BEGIN IMMEDIATE")
        except driver_errors() as exc:
            if is_locked_error(exc):
                raise DatabaseLocked(
                    f"database {self.path} is locked by another process; try again"
                ) from exc
            raise DatabaseError(str(exc)) from exc

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                await self.conn.execute("COMMIT")
                return
            except driver_errors() as commit_exc:
                await _rollback(self.conn)
                if is_locked_error(commit_exc):
                    raise DatabaseLocked(f"database {self.path} is locked") from commit_exc
                raise DatabaseError(str(commit_exc)) from commit_exc
        await _rollback(self.conn)
        if exc is not None and isinstance(exc, driver_errors()) and is_locked_error(exc):
            raise DatabaseLocked(f"database {self.path} is locked by another process") from exc


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Shielded: a cancelled task must still leave the connection out of its transaction.
    with anyio.CancelScope(shield=True):
        try:
            await conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction left to roll back
            pass


async def _rows(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """execute_fetchall as a list (aiosqlite types it as an Iterable)."""
    return list(await conn.execute_fetchall(sql, params))


def _migrate_file(path: Path) -> None:
    conn = make_connector(path)()
    try:
        migrate(conn)
    finally:
        conn.close()
