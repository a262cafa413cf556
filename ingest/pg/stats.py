"""`deja stats` on PostgreSQL: the counts of `PgStore.stats`, any psycopg failure worded.

It opens the store like ingest does (checking pgvector and the schema, and
creating the tables in a new database: a fresh database then counts 0).
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
        async with await PgStore.open(target, machine, environ) as store:
            return await store.stats()
    except psycopg.Error as exc:
        raise DatabaseError(f"PostgreSQL at {target}: {describe(exc, target, environ)}") from exc
