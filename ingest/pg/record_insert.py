"""Records inserted row by row (`deja sync`, `deja import`): which rows were new, and their ids.

Why one function: both writers insert with PG_INSERT_RECORD (ON CONFLICT DO
NOTHING, so a history copied twice adds nothing) and need to know, row by
row, which records the database lacked. Their full-text index (the tsvector
with its context, the passages) is the schema's triggers' (search_schema.py,
search_rules.py), which index as ingest's batches do: the tests compare the
two row for row (tests/test_pg_fulltext.py, test_exchange's round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .sync_sql import PG_INSERT_RECORD

if TYPE_CHECKING:
    import psycopg

__all__ = ["insert_records"]


async def insert_records(conn: psycopg.AsyncConnection,
                         rows: Sequence[tuple[Any, ...]]) -> list[int | None]:
    """Insert PG_INSERT_RECORD rows the database lacks; for each row its new id, or None
    where the record was already there."""
    if not rows:
        return []
    ids: list[int | None] = []
    async with conn.cursor() as cur:
        await cur.executemany(PG_INSERT_RECORD, rows, returning=True)
        # One result per parameter set, in order: empty where the record was already there.
        while True:
            got = await cur.fetchall()
            ids.append(int(got[0][0]) if got else None)
            if not cur.nextset():
                break
    assert len(ids) == len(rows), (len(ids), len(rows))
    return ids
