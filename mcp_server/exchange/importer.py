"""`deja import FILE`: a JSONL export (see jsonl.py) into a database, idempotent.

Every row is inserted by its natural key, never by the exporting database's
ids: a source by its path, a record by (source, line_key, part), a session by
its id, a subagent run by (session, agent). What is already there is kept
(a session's empty fields are filled in), so importing the same file twice,
or into the database it came from, adds nothing.

What an import sets up:
- the full-text index, in the same transaction, by the writers' own statement
  (`ingest.derived.index_new_records`); records come in the export's id order,
  so each is indexed with the record before it, as ingest did;
- vectors are not carried: records that deserve one wait for it
  (`embed_state` 0) and `deja embed` (or the server) computes them;
- read cursors are not carried: a file imported starts at offset 0, so if it
  exists on this machine the next ingest re-reads it and adds only the lines
  that are not in the database yet.

The whole file is one transaction: a bad line leaves the database as it was.
The walk over the file (parsing, the header, batching) is walk.py's, shared
with the PostgreSQL importer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from ingest.derived import index_new_records, update_responses
from ingest.indexing import EMBEDDABLE_KINDS
from ingest.store import Store

from .selection import AGENT_COLUMNS, RECORD_COLUMNS, SESSION_COLUMNS, SOURCE_COLUMNS
from .walk import NotAnExport, feed, new_counts

__all__ = ["NotAnExport", "import_jsonl"]

_SESSION_UPSERT = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in SESSION_COLUMNS)}) ON CONFLICT (session_id) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(sessions.{c}, excluded.{c})" for c in SESSION_COLUMNS[1:])
)
_AGENT_INSERT = (
    f"INSERT OR IGNORE INTO agent_runs (source_id, {', '.join(AGENT_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in AGENT_COLUMNS)})"
)
_SOURCE_INSERT = (
    f"INSERT OR IGNORE INTO sources (path, {', '.join(SOURCE_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in SOURCE_COLUMNS)})"
)
_RECORD_INSERT = (
    f"INSERT OR IGNORE INTO records (source_id, {', '.join(RECORD_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in RECORD_COLUMNS)})"
)
_EMBEDDABLE = frozenset(EMBEDDABLE_KINDS)
_BATCH = 2000


async def import_jsonl(store: Store, lines: Iterable[str],
                       progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Import an export; returns how many rows of each kind were new.

    Raises NotAnExport for a file that is not a deja JSONL export.
    """
    sink = _SqliteSink(store)
    async with store.transaction():
        before = await sink.max_record_id()
        await feed(sink, lines, _BATCH, progress)
        for kind, n in await store.conn.execute_fetchall(
                "SELECT kind = 'memory', COUNT(*) FROM records WHERE id > ? GROUP BY 1",
                (before,)):
            sink.added["memories" if kind else "records"] += n
    return sink.added


class _SqliteSink:
    """The export's lines as rows of a SQLite database (walk.ExportSink)."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn
        self.added = new_counts()
        self._source_ids: dict[str, int] = {}

    async def max_record_id(self) -> int:
        rows = list(await self.conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM records"))
        return int(rows[0][0])

    async def _source_id(self, path: str) -> int:
        if path not in self._source_ids:
            rows = list(await self.conn.execute_fetchall("SELECT id FROM sources WHERE path = ?",
                                                         (os.fsencode(path),)))
            if not rows:
                raise NotAnExport(f"a record names the file {path!r}, which no `source` line "
                                  "before it does")
            self._source_ids[path] = int(rows[0][0])
        return self._source_ids[path]

    async def source(self, obj: dict[str, Any]) -> None:
        cur = await self.conn.execute(
            _SOURCE_INSERT, (os.fsencode(obj["path"]), *(obj.get(c) for c in SOURCE_COLUMNS)))
        self.added["sources"] += cur.rowcount

    async def session(self, obj: dict[str, Any]) -> None:
        exists = list(await self.conn.execute_fetchall(
            "SELECT 1 FROM sessions WHERE session_id = ?", (obj["session_id"],)))
        await self.conn.execute(_SESSION_UPSERT, tuple(obj.get(c) for c in SESSION_COLUMNS))
        self.added["sessions"] += 0 if exists else 1

    async def agent_run(self, obj: dict[str, Any]) -> None:
        sid = await self._source_id(obj["source"]) if obj.get("source") else None
        cur = await self.conn.execute(_AGENT_INSERT, (sid, *(obj.get(c) for c in AGENT_COLUMNS)))
        self.added["agent_runs"] += cur.rowcount

    async def records(self, objs: list[dict[str, Any]]) -> None:
        """Insert a batch; index it (FTS, token usage) in the same transaction."""
        rows = [(await self._source_id(obj["source"]), *_record_values(obj)) for obj in objs]
        before = await self.max_record_id()
        await self.conn.executemany(_RECORD_INSERT, rows)
        await index_new_records(self.conn, before)
        await update_responses(self.conn, before)


def _record_values(obj: dict[str, Any]) -> tuple[Any, ...]:
    """An exported record's values in RECORD_COLUMNS' order, as the records table holds them."""
    row = dict(obj)
    row["meta"] = (json.dumps(row["meta"], ensure_ascii=False, separators=(",", ":"))
                   if row.get("meta") else None)
    # Vectors are not exported: what deserves one waits for `deja embed`.
    row["embed_state"] = 0 if row.get("kind") in _EMBEDDABLE else 2
    return tuple(row.get(c) for c in RECORD_COLUMNS)
