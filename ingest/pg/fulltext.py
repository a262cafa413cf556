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
write_memory, a hand-made INSERT): since schema v8 both fire only outside a
batch's transaction, which says it writes the index itself by
`SET_BATCH_INDEXES`.

Schema v8 (ingest/pg/search_rules.py) adds SQLite's rule of the injected copies
(ingest/indexing.py FTS_SKIP_SQL): a batch finds them here (`skips`, over the
file's last records stored and its own) and sends them without a tsvector or
passages. `deja_words` takes escape codes out of every text in SQL, so nothing
here cleans them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..indexing import (
    COMMAND_KINDS,
    CONTEXT_CHARS,
    CONTEXT_KINDS,
    SKIP_KINDS,
    SKIP_LOOKBACK,
    SKIP_MIN_ARGS,
    command_args,
    passage_spans,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["BATCH_SETTING", "SET_BATCH_INDEXES", "Tail", "context_text", "contexts", "skips",
           "tail", "write_passages", "reindex"]

# The transaction-local setting the passages trigger (schema v6) reads: 'on' in a
# transaction whose writer inserts its records' passages itself.
BATCH_SETTING = "deja.batch_indexes"
SET_BATCH_INDEXES = f"SELECT set_config('{BATCH_SETTING}', 'on', true)"

_CONTEXT_KINDS = frozenset(CONTEXT_KINDS)
_SKIP_KINDS = frozenset(SKIP_KINDS)
_COMMAND_KINDS = frozenset(COMMAND_KINDS)

# The file's last records before the batch's first one, newest first: the last one's
# start is the first one's context, and the arguments of the commands among them what
# the batch's first records may copy.
_TAIL_OF_SOURCE = (
    f"SELECT kind, substr(text, 1, {CONTEXT_CHARS}), "
    f"CASE WHEN kind IN ({', '.join(repr(k) for k in COMMAND_KINDS)}) "
    "THEN deja_command_args(text) END "
    f"FROM records WHERE source_id = %s ORDER BY id DESC LIMIT {SKIP_LOOKBACK}")

_INSERT_PASSAGES = """
INSERT INTO passages (record_id, start, tsv, len)
SELECT u.id, u.start, t.tsv, deja_tsv_len(t.tsv)
FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS u(id, start, body),
     deja_tsv(u.body, NULL) AS t(tsv)
"""

# The records whose context or copied command the batch could not know (a line read
# again before them): as the trigger computes it (deja_record_tsv, schema v8), from the
# records before each by id; which of them are copies.
_REINDEX = """
UPDATE records r SET (search_tsv, search_len) = (
    SELECT x.tsv, CASE WHEN x.tsv IS NOT NULL THEN deja_tsv_len(x.tsv) END
    FROM deja_record_tsv(r.source_id, r.id, r.kind, r.text) AS x(tsv))
WHERE r.id = ANY(%s)
RETURNING r.id, r.search_tsv IS NULL
"""


@dataclass
class Tail:
    """What a batch's first records take from the file's last ones stored: the context
    (the last one's start, if it counts) and the (kind, command arguments) of up to
    SKIP_LOOKBACK of them, oldest first."""

    context: str | None = None
    commands: list[tuple[str, str | None]] = field(default_factory=list)


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


def skips(before: Sequence[tuple[str, str | None]],
          records: Sequence[tuple[str, str]]) -> list[bool]:
    """Whether each (kind, text) of a batch, in file order, is an injected copy of a
    command's arguments (ingest/indexing.py FTS_SKIP_SQL): a system, meta or attachment
    record holding the arguments of a command or prompt among the SKIP_LOOKBACK records
    before it, the first ones' from `before` (Tail.commands)."""
    window = deque(before, maxlen=SKIP_LOOKBACK)
    out: list[bool] = []
    for kind, text in records:
        out.append(kind in _SKIP_KINDS and any(
            args is not None and len(args) >= SKIP_MIN_ARGS and args in text
            for k, args in window if k in _COMMAND_KINDS))
        window.append((kind, command_args(text) if kind in _COMMAND_KINDS else None))
    return out


async def tail(conn: psycopg.AsyncConnection, source_id: int) -> Tail:
    """What the file's next records take from its last stored ones (see Tail)."""
    cur = await conn.execute(_TAIL_OF_SOURCE, (source_id,))
    rows = await cur.fetchall()
    if not rows:
        return Tail()
    return Tail(context_text(rows[0][0], rows[0][1]),
                [(kind, args) for kind, _, args in reversed(rows)])


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


async def reindex(conn: psycopg.AsyncConnection, ids: list[int]) -> dict[int, bool]:
    """Index `ids` again with the records the database has before them (see _REINDEX);
    whether each is a copy, by id."""
    if not ids:
        return {}
    cur = await conn.execute(_REINDEX, (ids,))
    return {int(rid): bool(skipped) for rid, skipped in await cur.fetchall()}
