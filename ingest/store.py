"""The deja database, and the one aiosqlite connection that owns its writes.

`Store.open()` migrates the file (in a worker thread, with a plain connection)
and then opens that connection. `write_batch()` is the heart of exactly-once
ingest: the records of a run of complete lines, the sessions and subagent runs
they touch, and the file's cursor advance commit in ONE `BEGIN IMMEDIATE`
transaction. Kill the process anywhere: either all of a batch is in the
database, cursor included, or none of it is. What a batch carries and the SQL
that writes it are in batch.py, the transaction in transaction.py, what every
writer of records adds beside them (full-text rows, response usage) in
derived.py. The Store also registers files (sources), keeps `meta` and counts
what `deja stats` shows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from .batch import Batch, BatchResult, SourceRow, insert_batch
from .config import database_bytes
from .db import connect, driver_errors, is_locked_error, make_connector
from .errors import DatabaseError, DatabaseLocked
from .migrations import migrate
from .surface import SourceCounts
from .transaction import Transaction

__all__ = ["Store"]


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

    @property
    def reads(self) -> aiosqlite.Connection:
        """The connection the shared read queries run on (history, checkpoints; the
        PostgreSQL store gives its aiosqlite-shaped PgConn here)."""
        return self.conn

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
        async with self.transaction():
            result = await insert_batch(self.conn, batch)
        return result

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction():
            await self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def get_meta(self, key: str) -> str | None:
        rows = list(await self.conn.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,)))
        return rows[0][0] if rows else None

    # -- reads ----------------------------------------------------------------

    async def source_counts(self) -> SourceCounts:
        """Sessions, their subagent runs and the files gone, for an ingest summary."""

        async def count(sql: str) -> int:
            rows = list(await self.conn.execute_fetchall(sql))
            return int(rows[0][0])

        return SourceCounts(
            sessions=await count(
                "SELECT COUNT(DISTINCT session_id) FROM sources WHERE missing = 0"),
            subagent_runs=await count(
                "SELECT COUNT(*) FROM agent_runs WHERE session_id IN "
                "(SELECT session_id FROM sources WHERE missing = 0)"),
            missing_files=await count("SELECT COUNT(*) FROM sources WHERE missing = 1"),
        )

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

    def transaction(self) -> Transaction:
        return Transaction(self.conn, self.path)


def _migrate_file(path: Path) -> None:
    conn = make_connector(path)()
    try:
        migrate(conn)
    finally:
        conn.close()
