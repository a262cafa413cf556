"""The full-text index of a batch's new records, written by the batch itself (schema v6).

Why: schema v4's triggers indexed each record as it was inserted, with a
query for the record before it (its context) and the passages cut in
PL/pgSQL; that took the CLI ingest of the shared corpus from 8.9 to 2.6 MB/s,
most of it the PL/pgSQL passage cutting (12 of 31 s here). The batch knows
all of it already: the record before each one is the one before it in the
batch (the first one's is read once per batch), and the passages are cut by
the same Python function the SQLite writer uses (ingest/indexing.py
`passage_spans`). The tsvectors stay SQL's (`deja_tsv`, once per row and per
passage), so what the keyword ranker reads is what the triggers wrote: the
tests compare the two row for row.

The triggers stay as the fallback of every other writer (`deja sync`,
write_memory, a hand-made INSERT): the records' fires only for a row that
comes without its tsvector, the passages' only outside a batch's
transaction, which says it writes them itself by `SET_BATCH_INDEXES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..indexing import CONTEXT_CHARS, CONTEXT_KINDS, passage_spans

if TYPE_CHECKING:
    import psycopg

__all__ = ["BATCH_SETTING", "SET_BATCH_INDEXES", "context_text", "contexts",
           "last_context", "write_passages", "reindex_contexts"]

# The transaction-local setting the passages trigger (schema v6) reads: 'on' in a
# transaction whose writer inserts its records' passages itself.
BATCH_SETTING = "deja.batch_indexes"
SET_BATCH_INDEXES = f"SELECT set_config('{BATCH_SETTING}', 'on', true)"

_CONTEXT_KINDS = frozenset(CONTEXT_KINDS)

# The record before the batch's first one in its file: the context of that first one.
_LAST_OF_SOURCE = (
    f"SELECT kind, substr(text, 1, {CONTEXT_CHARS}) FROM records WHERE source_id = %s "
    "ORDER BY id DESC LIMIT 1")

_INSERT_PASSAGES = """
INSERT INTO passages (record_id, start, tsv, len)
SELECT u.id, u.start, t.tsv, deja_tsv_len(t.tsv)
FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS u(id, start, body),
     deja_tsv(u.body, NULL) AS t(tsv)
"""

# The records whose context the batch could not know (a line read again before them):
# as the v4 trigger computes it, from the record before each by id.
_REINDEX = """
UPDATE records r SET (search_tsv, search_len) = (SELECT x.tsv, deja_tsv_len(x.tsv)
    FROM deja_tsv(r.text, deja_context(r.source_id, r.id)) AS x(tsv))
WHERE r.id = ANY(%s)
"""


def context_text(kind: str, text: str) -> str | None:
    """What a record gives the one after it as context (deja_context in SQL): its first
    CONTEXT_CHARS characters if it is a prompt, a reply, a tool call or a summary."""
    return text[:CONTEXT_CHARS] if kind in _CONTEXT_KINDS else None


def contexts(before: str | None, records: Sequence[tuple[str, str]]) -> list[str | None]:
    """The context of each (kind, text) of a batch, in file order: the record before it,
    the first one's `before` (the file's last record already stored); none for a memory."""
    out: list[str | None] = []
    previous = before
    for kind, text in records:
        out.append(None if kind == "memory" else previous)
        previous = context_text(kind, text)
    return out


async def last_context(conn: psycopg.AsyncConnection, source_id: int) -> str | None:
    """The context the file's next record gets from its last stored one."""
    cur = await conn.execute(_LAST_OF_SOURCE, (source_id,))
    row = await cur.fetchone()
    return None if row is None else context_text(row[0], row[1])


async def write_passages(conn: psycopg.AsyncConnection,
                         records: Sequence[tuple[int, str]]) -> None:
    """The passages of the new (id, text) records that are long enough, in one statement."""
    ids: list[int] = []
    starts: list[int] = []
    bodies: list[str] = []
    for rid, text in records:
        for start, end in passage_spans(text):
            ids.append(rid)
            starts.append(start)
            bodies.append(text[start:end])
    if ids:
        await conn.execute(_INSERT_PASSAGES, (ids, starts, bodies))


async def reindex_contexts(conn: psycopg.AsyncConnection, ids: list[int]) -> None:
    """Index `ids` again with the context the database gives them (see _REINDEX)."""
    if ids:
        await conn.execute(_REINDEX, (ids,))
