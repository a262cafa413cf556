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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from ingest.derived import index_new_records, update_responses
from ingest.errors import DejaError
from ingest.indexing import EMBEDDABLE_KINDS
from ingest.store import Store

from .jsonl import FORMAT, VERSION
from .selection import AGENT_COLUMNS, RECORD_COLUMNS, SESSION_COLUMNS, SOURCE_COLUMNS

__all__ = ["NotAnExport", "import_jsonl"]


class NotAnExport(DejaError):
    """The file is not a deja JSONL export (or not one this deja reads)."""


_SESSION_UPSERT = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in SESSION_COLUMNS)}) ON CONFLICT (session_id) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(sessions.{c}, excluded.{c})" for c in SESSION_COLUMNS[1:])
)
_AGENT_INSERT = (
    f"INSERT OR IGNORE INTO agent_runs (source_id, {', '.join(AGENT_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in AGENT_COLUMNS)})"
)
_RECORD_INSERT = (
    f"INSERT OR IGNORE INTO records (source_id, {', '.join(RECORD_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in RECORD_COLUMNS)})"
)
_EMBEDDABLE = frozenset(EMBEDDABLE_KINDS)
_BATCH = 2000


def _parse(lines: Iterable[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise NotAnExport(f"line {number} is not JSON: {exc}") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise NotAnExport(f"line {number} is not a deja export line (no `type`)")
        yield number, obj


async def import_jsonl(store: Store, lines: Iterable[str],
                       progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Import an export; returns how many rows of each kind were new.

    Raises NotAnExport for a file that is not a deja JSONL export.
    """
    conn = store.conn
    added = {"sources": 0, "sessions": 0, "agent_runs": 0, "records": 0, "memories": 0}
    source_ids: dict[str, int] = {}
    pending: list[tuple[Any, ...]] = []

    async def source_id(path: str) -> int:
        if path not in source_ids:
            rows = list(await conn.execute_fetchall("SELECT id FROM sources WHERE path = ?",
                                                    (os.fsencode(path),)))
            if not rows:
                raise NotAnExport(f"a record names the file {path!r}, which no `source` line "
                                   "before it does")
            source_ids[path] = int(rows[0][0])
        return source_ids[path]

    async def flush() -> None:
        if not pending:
            return
        before = list(await conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM records"))
        await conn.executemany(_RECORD_INSERT, pending)
        pending.clear()
        await index_new_records(conn, before[0][0])
        await update_responses(conn, before[0][0])

    async with store.transaction():
        header_seen = False
        before_all = list(await conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM records"))
        for number, obj in _parse(lines):
            kind = obj["type"]
            if not header_seen:
                _check_header(obj)
                header_seen = True
            elif kind == "source":
                cur = await conn.execute(
                    f"INSERT OR IGNORE INTO sources (path, {', '.join(SOURCE_COLUMNS)}) "
                    f"VALUES (?, {', '.join('?' for _ in SOURCE_COLUMNS)})",
                    (os.fsencode(obj["path"]), *(obj.get(c) for c in SOURCE_COLUMNS)))
                added["sources"] += cur.rowcount
            elif kind == "session":
                exists = list(await conn.execute_fetchall(
                    "SELECT 1 FROM sessions WHERE session_id = ?", (obj["session_id"],)))
                await conn.execute(_SESSION_UPSERT, tuple(obj.get(c) for c in SESSION_COLUMNS))
                added["sessions"] += 0 if exists else 1
            elif kind == "agent_run":
                sid = await source_id(obj["source"]) if obj.get("source") else None
                cur = await conn.execute(_AGENT_INSERT,
                                         (sid, *(obj.get(c) for c in AGENT_COLUMNS)))
                added["agent_runs"] += cur.rowcount
            elif kind == "record":
                pending.append((await source_id(obj["source"]), *_record_values(obj)))
                if len(pending) >= _BATCH:
                    await flush()
                    progress(number)
            else:
                raise NotAnExport(f"line {number}: unknown type {kind!r}")
        if not header_seen:
            raise NotAnExport("the file is empty: not a deja export")
        await flush()
        for kind, n in await conn.execute_fetchall(
                "SELECT kind = 'memory', COUNT(*) FROM records WHERE id > ? GROUP BY 1",
                (before_all[0][0],)):
            added["memories" if kind else "records"] += n
    return added


def _check_header(obj: dict[str, Any]) -> None:
    """Raise NotAnExport unless `obj` is the header of an export this deja reads."""
    if obj["type"] != "header" or obj.get("format") != FORMAT:
        raise NotAnExport("not a deja export: the first line must be its header "
                          "(`deja export --format jsonl` writes one)")
    if int(obj.get("version", 0)) > VERSION:
        raise NotAnExport(f"export format version {obj.get('version')} is newer "
                          f"than this deja reads ({VERSION}): upgrade deja")


def _record_values(obj: dict[str, Any]) -> tuple[Any, ...]:
    """An exported record's values in RECORD_COLUMNS' order, as the records table holds them."""
    row = dict(obj)
    row["meta"] = (json.dumps(row["meta"], ensure_ascii=False, separators=(",", ":"))
                   if row.get("meta") else None)
    # Vectors are not exported: what deserves one waits for `deja embed`.
    row["embed_state"] = 0 if row.get("kind") in _EMBEDDABLE else 2
    return tuple(row.get(c) for c in RECORD_COLUMNS)
