"""The PostgreSQL store: what the ingest runner writes through, on a shared database.

The same surface as the SQLite Store (ingest/surface.py), so ingest/runner.py
runs unchanged over it. One autocommit psycopg connection; every write is an
explicit transaction (`transaction()`), and `write_batch` puts a batch's
rows and its file's cursor in ONE of them (batch.py): exactly once, as on
SQLite. A store belongs to one machine: it sees and registers that machine's
sources only, and stamps its records with the machine's name; `stats` counts
the whole database, every machine.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ..batch import Batch, BatchResult, SourceRow
from ..config import PostgresUrl
from ..errors import DatabaseError
from ..surface import NewSource, SourceCounts
from .batch import insert_batch
from .connect import connect, describe
from .schema import prepare
from .sqlconn import PgConn
from .text import clean

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgStore"]

logger = logging.getLogger(__name__)

# Attempts at a batch that PostgreSQL aborted for a deadlock with another machine's.
_RETRIES = 5


class PgStore:
    """deja's tables in one PostgreSQL database, seen from one machine."""

    engine = "postgresql"

    def __init__(self, target: PostgresUrl, machine: str, conn: psycopg.AsyncConnection,
                 environ: Mapping[str, str]) -> None:
        self.target = target
        self.machine = machine
        self.conn = conn
        self.environ = environ
        self._reads: PgConn | None = None

    @classmethod
    async def open(cls, target: PostgresUrl, machine: str, environ: Mapping[str, str], *,
                   create: bool = True) -> PgStore:
        """Connect, check pgvector and the schema (creating it in a new database, unless
        `create` is False: then a database without deja's tables is an error).

        Raises DatabaseError (unreachable, refused, no pgvector, no privilege, no tables),
        SchemaTooNew.
        """
        import psycopg

        conn = await connect(target, environ)
        try:
            await prepare(conn, target, create=create)
        except psycopg.Error as exc:
            await conn.close()
            raise DatabaseError(f"cannot prepare the PostgreSQL database at {target}: "
                                f"{describe(exc, target, environ)}") from exc
        except BaseException:
            await conn.close()
            raise
        return cls(target, machine, conn, environ)

    @property
    def reads(self) -> PgConn:
        """This connection, as the aiosqlite-shaped PgConn the shared read queries run on
        (history, checkpoints, orientation: ingest/pg/sqlconn.py)."""
        if self._reads is None:
            self._reads = PgConn(self.conn)
        return self._reads

    async def close(self) -> None:
        await self.conn.close()

    async def __aenter__(self) -> PgStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sources and cursors ------------------------------------------------

    async def load_sources(self) -> dict[bytes, SourceRow]:
        """This machine's files and their cursors, by raw path."""
        cur = await self.conn.execute(
            'SELECT id, path, dev, ino, size, mtime_ns, "offset", lines, head_len, head_hash, '
            "missing, session_id FROM sources WHERE machine = %s", (self.machine,))
        return {
            bytes(r[1]): SourceRow(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                                   r[9], bool(r[10]), r[11])
            for r in await cur.fetchall()
        }

    async def add_sources(self, files: list[NewSource]) -> dict[bytes, SourceRow]:
        """Register new files of this machine; their cursors start at 0. The new rows by
        raw path."""
        if not files:
            return {}
        rows = [(self.machine, os.fsencode(f[0]), clean(f[1]), clean(f[2]), f[3], clean(f[4]),
                 clean(f[5])) for f in files]
        async with self.transaction(), self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO sources (machine, path, display_path, project_dir, layout, "
                "session_hint, agent_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (machine, path) DO NOTHING", rows)
        wanted = {r[1] for r in rows}
        return {raw: row for raw, row in (await self.load_sources()).items() if raw in wanted}

    async def mark_missing(self, source_ids: list[int], missing: bool = True) -> None:
        """Flag files that are gone (their records stay) or came back."""
        if not source_ids:
            return
        async with self.transaction():
            await self.conn.execute(
                "UPDATE sources SET missing = %s WHERE id = ANY(%s) AND machine = %s",
                (int(missing), source_ids, self.machine))

    # -- the batch write ----------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Commit a batch and its cursor in one transaction.

        Machines ingesting copies of the same sessions update the same session, subagent
        and response rows: two such batches can deadlock, and PostgreSQL then aborts one.
        Nothing of an aborted batch is in the database, so it is simply written again
        (a few times, after a short random pause).
        """
        import psycopg

        for attempt in range(_RETRIES):
            try:
                async with self.transaction():
                    return await insert_batch(self.conn, self.machine, batch)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                logger.info("batch of source %d aborted by a deadlock: writing it again",
                            batch.source_id)
                await anyio.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction():
            await self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    async def get_meta(self, key: str) -> str | None:
        cur = await self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,))
        row = await cur.fetchone()
        return row[0] if row else None

    # -- reads ----------------------------------------------------------------

    async def source_counts(self) -> SourceCounts:
        """This machine's sessions, their subagent runs and its files gone."""
        m = (self.machine,)
        return SourceCounts(
            sessions=await self._count(
                "SELECT COUNT(DISTINCT session_id) FROM sources WHERE missing = 0 "
                "AND machine = %s", m),
            subagent_runs=await self._count(
                "SELECT COUNT(*) FROM agent_runs WHERE session_id IN (SELECT session_id "
                "FROM sources WHERE missing = 0 AND machine = %s)", m),
            missing_files=await self._count(
                "SELECT COUNT(*) FROM sources WHERE missing = 1 AND machine = %s", m),
        )

    async def pending_embeddings(self) -> int:
        return await self._count("SELECT COUNT(*) FROM records WHERE embed_state = 0")

    async def stats(self) -> dict[str, Any]:
        """The counts of `deja stats`, over every machine (the keys of the SQLite Store's,
        plus `engine`, `machine` and `records_by_machine`)."""
        cur = await self.conn.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind")
        by_kind = {k: int(n) for k, n in await cur.fetchall()}
        cur = await self.conn.execute("SELECT machine, COUNT(*) FROM records GROUP BY machine")
        by_machine = {k: int(n) for k, n in await cur.fetchall()}
        cur = await self.conn.execute(
            'SELECT COUNT(*), COALESCE(SUM(missing), 0), COALESCE(SUM("offset"), 0) '
            "FROM sources WHERE layout != 'memory'")
        files, missing, ingested = (int(v) for v in (await cur.fetchone() or (0, 0, 0)))
        return {
            "database": str(self.target),
            "engine": "postgresql",
            "machine": self.machine,
            "database_bytes": await self._count("SELECT pg_database_size(current_database())"),
            "sessions": await self._count("SELECT COUNT(*) FROM sessions"),
            "subagent_runs": await self._count("SELECT COUNT(*) FROM agent_runs"),
            "records": sum(by_kind.values()),
            "by_kind": dict(sorted(by_kind.items())),
            "records_by_machine": dict(sorted(by_machine.items())),
            "files": files,
            "missing_files": missing,
            "bytes_ingested": ingested,
            "last_ingest": await self.get_meta("last_ingest"),
            "pending_embeddings": await self.pending_embeddings(),
            "chunks": await self._count("SELECT COUNT(*) FROM chunks"),
            "embedding_model": await self._model(),
        }

    # -- helpers --------------------------------------------------------------

    async def _model(self) -> str | None:
        cur = await self.conn.execute("SELECT model_id FROM embedding_model WHERE id = 1")
        row = await cur.fetchone()
        return str(row[0]) if row else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN ... COMMIT, rolled back on any error, a cancelled task included (the
        rollback is shielded, so the connection never stays inside a transaction)."""
        await self.conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._rollback()
            raise
        await self.conn.execute("COMMIT")

    async def _rollback(self) -> None:
        import psycopg

        try:
            await self.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone: the server rolled back already

    async def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        cur = await self.conn.execute(sql, params)
        row = await cur.fetchone()
        return int(row[0]) if row else 0
