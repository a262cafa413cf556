"""What the MCP server is told (`ServerConfig`) and what its parts share while it runs (`DejaState`).

A module of its own so that the tools (tools.py), the background work
(background.py) and the factory (server.py) all read the same two types
without importing one another: server.py imports the other two, they import
only this.

When the database opens: a SQLite file is opened by the lifespan, before the
handshake (a local file, milliseconds; a broken one is the server's own
failure). A PostgreSQL server is opened on first use instead (`open_database`:
the first tool call, or the warm-up right after the handshake), because it may
be down, refuse the password or lack pgvector for a while: the client must
still get its tools at once, and each call then says in one line why it
cannot answer, and the next call tries again. A connection lost later is
reopened the same way. Nothing then falls back to a local SQLite file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ingest.config import PostgresUrl
from ingest.errors import DatabaseError
from ingest.settings import Exclusions
from ingest.store import Store

from .search import VectorIndex

__all__ = ["ServerConfig", "DejaState"]


@dataclass
class ServerConfig:
    """What `deja serve` asks of the server: where the database and transcripts are, what to run."""

    db_path: Path
    roots: list[Path]
    environ: Mapping[str, str]
    ingest: bool = True  # run the background ingest supervisor
    load_model: bool = True
    rescan_seconds: float = 30.0
    embed_poll_seconds: float = 3.0
    index_refresh_seconds: float = 2.0
    # How long a search waits for a model whose quick load (a cached export) is
    # under way, rather than answering from keywords alone.
    model_wait_seconds: float = 0.5
    # How long the ingest supervisor lets a quick model load go first.
    ingest_defer_seconds: float = 3.0
    exclude: Exclusions | None = None  # projects kept out of ingest (ingest/settings.py)
    # A PostgreSQL database instead of the SQLite file at db_path (ingest/pg/), written as
    # `machine` (DEJA_MACHINE, else the host name).
    pg: PostgresUrl | None = None
    machine: str = ""


@dataclass
class DejaState:
    """What the tools share for the life of the server."""

    config: ServerConfig
    # The tools' connection (reads and memory writes); a PgStore on PostgreSQL, None there
    # until `open_database` (and again after a lost connection).
    store: Store | None
    project: str  # path of the "current" project
    # The connection the read queries (history, checkpoints, search) run on: the store's
    # own on SQLite; on PostgreSQL a PgConn of a second connection, so that a read never
    # runs inside a memory write's transaction.
    reader: Any = None
    embedder: Any = None
    embedder_error: str | None = "the embedding model is still loading"
    ingesting: bool = False
    last_pass: str | None = None
    background_errors: list[str] = field(default_factory=list)
    # Sign bits of every chunk in memory, refreshed in the background, and the
    # second connection the vector ranker runs on beside the keyword ranker.
    vector_index: VectorIndex = field(default_factory=VectorIndex)
    vector_conn: Any = None
    # The optional multilingual model (ingest.multilingual.MlOnce, loaded only when the
    # database holds a non-English record) and its vectors in memory.
    ml: Any = None
    ml_index: Any = None
    # Set when the model loader has settled: the model is loaded, failed, or
    # turned out slow to load (the one-time export, torch). None: no loader.
    model_settled: anyio.Event | None = None
    # PostgreSQL: why the last open failed (None: open, or not tried yet); the lock that has
    # one task open the database while the others wait for it.
    database_error: str | None = None
    open_lock: anyio.Lock = field(default_factory=anyio.Lock)
    # Memory writes hold it: they share the store's one connection, on which two
    # transactions at once would interleave (two BEGINs, one COMMIT for both).
    write_lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def open_database(self) -> None:
        """On PostgreSQL, open the store and the reader unless both are open and usable.

        Raises DatabaseError (the server is unreachable, refuses the login, lacks
        pgvector, ...) with its one-line reason; the next call tries again. On
        SQLite the lifespan has opened the file: nothing to do.
        """
        target = self.config.pg
        if target is None or self._pg_open():
            return
        async with self.open_lock:
            if self._pg_open():
                return  # another task opened it meanwhile
            await self.close_database()
            from ingest.pg.connect import connect as pg_connect
            from ingest.pg.sqlconn import PgConn
            from ingest.pg.store import PgStore

            try:
                store = await PgStore.open(target, self.config.machine, self.config.environ)
                try:
                    reader = PgConn(await pg_connect(target, self.config.environ))
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await store.close()
                    raise
            except DatabaseError as exc:
                self.database_error = str(exc)
                raise
            self.store, self.reader, self.database_error = store, reader, None  # type: ignore[assignment]

    def _pg_open(self) -> bool:
        """Both PostgreSQL connections are open and usable."""
        return (self.store is not None and self.reader is not None
                and _alive(self.store.conn) and _alive(self.reader.raw))

    async def close_database(self) -> None:
        """Close the store and the reader, whichever is open (shielded: also when cancelled)."""
        store, reader = self.store, self.reader
        self.store = self.reader = None
        with anyio.CancelScope(shield=True):
            if store is not None:
                await store.close()
            if reader is not None:
                await reader.raw.close()

    async def wait_for_model(self) -> float:
        """Wait, at most `model_wait_seconds`, for a quick model load under way; the seconds waited.

        Returns at once when the model is loaded, when no loader runs, or when
        the load is slow (keyword search serves meanwhile, as the answer says).
        """
        settled = self.model_settled
        if self.embedder is not None or settled is None or settled.is_set():
            return 0.0
        started = time.monotonic()
        with anyio.move_on_after(self.config.model_wait_seconds):
            await settled.wait()
        return time.monotonic() - started

    @property
    def db_path(self) -> Path:
        return self.config.db_path

    @property
    def on_postgres(self) -> bool:
        return self.config.pg is not None

    @property
    def writer(self) -> Store:
        """The open store (memory writes, meta); raises DatabaseError when it is not open."""
        if self.store is None:
            raise DatabaseError(self.database_error or "the database is not open")
        return self.store

    @property
    def reads(self) -> Any:
        """The connection for the read queries (see `reader`); raises DatabaseError when the
        database is not open."""
        if self.reader is not None:
            return self.reader
        if self.on_postgres:
            raise DatabaseError(self.database_error or "the database is not open")
        return self.writer.conn


def _alive(conn: Any) -> bool:
    """A psycopg connection neither closed nor broken (the server went away)."""
    return not (conn.closed or conn.broken)
