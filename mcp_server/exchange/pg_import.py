"""`deja import FILE` into PostgreSQL: the JSONL export (jsonl.py) as rows of a shared database.

The same promise as the SQLite importer (importer.py): every row by its
natural key, never by the exporting database's ids; importing twice adds
nothing; the whole file is one transaction (`PgStore.transaction`), so a bad
line leaves the database as it was. The statements are `deja sync`'s
(ingest/pg/sync_sql.py), keyed as ingest keys them:

- a source by (machine, path): the machine the export names (an export from
  PostgreSQL carries each file's `machine`), else this one (DEJA_MACHINE, else
  the host name: an export from SQLite is this machine's history). Its read
  cursor starts at 0, as on SQLite;
- a record by (source, line key, part); the usage of the responses the new
  records belong to is counted in the same transaction (ingest/pg/batch.py's
  statement), as the SQLite importer's `update_responses`;
- sessions (with their project key, and the machine that first saw them)
  and subagent runs upserted with the ingest path's merge.

Vectors are not carried: records that deserve one wait (`embed_state` 0) for
`deja embed`. Strings are made storable first (NUL, lone surrogates: ingest/pg/text.py).
The walk over the file (parsing, the header, batching) is walk.py's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ingest.pg import sync_sql as q
from ingest.pg.batch import _UPSERT_RESPONSES
from ingest.pg.record_insert import insert_records
from ingest.pg.text import clean, clean_json

from .importer import _record_values
from .selection import AGENT_COLUMNS, SESSION_COLUMNS, SOURCE_COLUMNS
from .walk import NotAnExport, feed, new_counts

if TYPE_CHECKING:
    from ingest.pg.store import PgStore

__all__ = ["import_jsonl_pg"]

_BATCH = 1000


async def import_jsonl_pg(store: PgStore, lines: Iterable[str],
                          progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Import an export into the PostgreSQL database of `store`; how many rows of each kind
    were new. Raises NotAnExport, psycopg errors (the CLI words them)."""
    sink = _PgSink(store)
    async with store.transaction():
        await feed(sink, lines, _BATCH, progress)
    return sink.added


class _PgSink:
    """The export's lines as rows of a PostgreSQL database (walk.ExportSink)."""

    def __init__(self, store: PgStore) -> None:
        self.conn = store.conn
        self.machine = store.machine
        self.added = new_counts()
        self._source_ids: dict[tuple[str, str], int] = {}

    def _machine(self, obj: dict[str, Any]) -> str:
        """The machine the export names for this line, else this one."""
        return clean(str(obj.get("machine") or self.machine)) or self.machine

    async def _source_id(self, machine: str, path: str) -> int:
        key = (machine, path)
        if key not in self._source_ids:
            cur = await self.conn.execute(q.PG_SOURCE, (machine, os.fsencode(path)))
            row = await cur.fetchone()
            if row is None:
                raise NotAnExport(f"a record names the file {path!r} of machine {machine!r}, "
                                  "which no `source` line before it does")
            self._source_ids[key] = int(row[0])
        return self._source_ids[key]

    async def source(self, obj: dict[str, Any]) -> None:
        machine, path = self._machine(obj), obj["path"]
        cur = await self.conn.execute(q.PG_ENSURE_SOURCE, (
            machine, os.fsencode(path), *(clean(obj.get(c)) for c in SOURCE_COLUMNS)))
        row = await cur.fetchone()
        if row is not None:
            self.added["sources"] += 1
            self._source_ids[(machine, path)] = int(row[0])

    async def session(self, obj: dict[str, Any]) -> None:
        cur = await self.conn.execute(q.PG_UPSERT_SESSION, (
            *(clean(obj.get(c)) for c in SESSION_COLUMNS), self._machine(obj)))
        row = await cur.fetchone()
        self.added["sessions"] += 1 if row and row[0] else 0

    async def agent_run(self, obj: dict[str, Any]) -> None:
        machine = self._machine(obj)
        sid = await self._source_id(machine, obj["source"]) if obj.get("source") else None
        values = {c: obj.get(c) for c in AGENT_COLUMNS}
        cur = await self.conn.execute(q.PG_UPSERT_AGENT, (
            values["session_id"], values["agent_id"], sid, values["layout"],
            clean(values["agent_type"]), clean(values["description"]),
            values["tool_use_id"], int(values["is_aside"] or 0)))
        row = await cur.fetchone()
        self.added["agent_runs"] += 1 if row and row[0] else 0

    async def records(self, objs: list[dict[str, Any]]) -> None:
        """Insert a batch; count the new ones' token usage in the same transaction."""
        rows = []
        for obj in objs:
            machine = self._machine(obj)
            rows.append((machine, await self._source_id(machine, obj["source"]),
                         *_storable(_record_values(obj))))
        new = [rid for rid in await insert_records(self.conn, rows) if rid is not None]
        if not new:
            return
        await self.conn.execute(_UPSERT_RESPONSES, (new,))
        cur2 = await self.conn.execute("SELECT kind = 'memory', COUNT(*) FROM records "
                                       "WHERE id = ANY(%s) GROUP BY 1", (new,))
        for memory, n in await cur2.fetchall():
            self.added["memories" if memory else "records"] += int(n)


def _storable(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A record's values with every string storable in PostgreSQL, meta as JSONB text."""
    out = []
    for value in values:
        out.append(clean(value) if isinstance(value, str) else value)
    meta_at = q.LOCAL_RECORD_COLUMNS.index("meta")
    meta = values[meta_at]
    out[meta_at] = clean_json(json.loads(meta)) if meta else None
    return tuple(out)
