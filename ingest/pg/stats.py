"""`deja stats` on PostgreSQL: the counts of `PgStore.stats`, any psycopg failure worded.

It opens the store without creating anything: a database deja has not
written yet is an error that says to run `deja ingest`, as a missing SQLite
file is for the read-only commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import PostgresUrl
from ..errors import DatabaseError
from .connect import describe, require_psycopg
from .store import PgStore

__all__ = ["read_stats"]


async def read_stats(target: PostgresUrl, machine: str, environ: Mapping[str, str]
                     ) -> dict[str, Any]:
    """The counts of the database at `target`. Raises DatabaseError, SchemaTooNew."""
    require_psycopg()
    import psycopg

    try:
        async with await PgStore.open(target, machine, environ, create=False) as store:
            return await store.stats()
    except psycopg.Error as exc:
        raise DatabaseError(f"PostgreSQL at {target}: {describe(exc, target, environ)}") from exc
