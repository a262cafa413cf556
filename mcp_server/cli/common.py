"""What the command modules share: the subparsers' type and the read-only guard.

A read-only command (stats, search, show, sessions) must not create a
database: `Store.open` creates the file and its folders, so a mistyped `--db`
would print "0 records" instead of saying that nothing is there.
`read_store` refuses first, then opens the store for one read; the write
commands (ingest, embed, reembed, serve) open the store directly and create it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ingest.config import PostgresUrl
from ingest.errors import DatabaseError
from ingest.store import Store

if TYPE_CHECKING:
    from ingest.pg.store import PgStore

__all__ = ["Subparsers", "Target", "Readable", "require_database", "read_store", "read_postgres",
           "read_database"]

T = TypeVar("T")
# What a command is pointed at: a SQLite file, or a PostgreSQL database (ingest/config.py).
Target = Path | PostgresUrl


class Readable(Protocol):
    """A store of either engine, as the read commands see it: `reads` is the connection the
    shared read queries run on (SQLite's aiosqlite connection, PostgreSQL's PgConn)."""

    @property
    def reads(self) -> Any: ...

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def require_database(db_path: Path) -> None:
    """Raises DatabaseError when no database file is at `db_path`; creates nothing."""
    if not db_path.is_file():
        raise DatabaseError(f"no database at {db_path}; run `deja ingest` to create one")


async def read_store(db_path: Path, read: Callable[[Store], Awaitable[T]]) -> T:
    """`read(store)` on the database at `db_path`, which must exist.

    Raises DatabaseError (no database there), and what `read` raises.
    """
    require_database(db_path)
    store = await Store.open(db_path)
    try:
        return await read(store)
    finally:
        await store.close()


async def read_postgres(target: PostgresUrl, read: Callable[[PgStore], Awaitable[T]]) -> T:
    """`read(store)` on the PostgreSQL database at `target`, which must hold deja's tables
    (created by nothing here); `store.reads` runs the shared read queries.

    Raises DatabaseError (unreachable, no tables, ...), and what `read` raises.
    """
    from ingest.config import machine_from
    from ingest.pg.connect import describe, require_psycopg
    from ingest.pg.store import PgStore

    require_psycopg()
    import psycopg

    try:
        store = await PgStore.open(target, machine_from(os.environ), os.environ, create=False)
        try:
            return await read(store)
        finally:
            await store.close()
    except psycopg.Error as exc:  # a query failed or the connection went: one line, masked
        raise DatabaseError(f"PostgreSQL at {target}: {describe(exc, target, os.environ)}"
                            ) from exc


async def read_database(target: Target, read: Callable[[Readable], Awaitable[T]]) -> T:
    """`read(store)` on either engine: `read_store` for a file, `read_postgres` for a URL.
    `read` reaches the shared read queries through `store.reads` (both engines have it)."""
    if isinstance(target, PostgresUrl):
        return await read_postgres(target, read)
    return await read_store(target, read)
