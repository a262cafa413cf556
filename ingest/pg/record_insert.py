"""Records inserted row by row (`deja sync`, `deja import`), indexed as ingest's batches are.

Why: the passages of a long record are cut by ingest/indexing.py's
`passage_spans` on both engines (ingest/pg/fulltext.py). The schema v4
trigger's PL/pgSQL cutting, the fallback for any other writer, differs from
it on a few records (7,010 against 7,012 passages on the shared corpus), so
a history synced or imported into PostgreSQL would not be indexed exactly as
the same history ingested there. These writers therefore say they write
their passages themselves (`SET_BATCH_INDEXES`, which turns the passages
trigger off for the transaction) and write them with the batches' function.
The records' own tsvector (with its context, the record before it by id)
stays the trigger's, which equals the batches' row for row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .fulltext import SET_BATCH_INDEXES, write_passages
from .sync_sql import PG_INSERT_RECORD, RECORD_INSERT_COLUMNS

if TYPE_CHECKING:
    import psycopg

__all__ = ["insert_records"]

_TEXT = RECORD_INSERT_COLUMNS.index("text")


async def insert_records(conn: psycopg.AsyncConnection,
                         rows: Sequence[tuple[Any, ...]]) -> list[int | None]:
    """Insert PG_INSERT_RECORD rows the database lacks, with their passages; for each row
    its new id, or None where the record was already there."""
    if not rows:
        return []
    await conn.execute(SET_BATCH_INDEXES)
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
    await write_passages(conn, [(rid, row[_TEXT] or "") for rid, row in zip(ids, rows)
                                if rid is not None])
    return ids
