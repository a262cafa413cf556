"""The JSONL exchange format: what `deja export --format jsonl` writes and `deja import` reads.

One JSON object a line, each tagged by `type`, in this order:
- `header`: `format` ("deja-export"), `version` (1), `schema_version` (the
  database's), `exported_at`, `filters`, and `engine` ("sqlite" or "postgresql");
- `source` (one per transcript file or memory pseudo-file): `path` and the
  columns of `selection.SOURCE_COLUMNS`, without the read cursor; from
  PostgreSQL also its `machine` (a record too), so an import into PostgreSQL
  keeps every machine's files apart (into SQLite, which has one machine, it
  is not kept);
- `session`, `agent_run`: the columns of those tables (`agent_run.source` is
  its transcript's path; a session's `project_key`, its git remote; from
  PostgreSQL a session's `machine`, and an agent run's, its transcript's);
- `record`: `source` (the file's path) and the columns of
  `selection.RECORD_COLUMNS`; `meta` is the stored JSON, parsed.

Paths are bytes in the database (names need not be UTF-8): they are written
decoded with surrogateescape, and everything is ASCII-escaped, so a lone
surrogate survives the trip and the file is valid UTF-8 whatever it holds.
Database ids are not written: they are local to a file. A record is
identified by (source path, line_key, part), which is its unique key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

import aiosqlite

from . import selection
from .selection import Selection

__all__ = ["FORMAT", "VERSION", "write_jsonl", "path_text", "dumps"]

FORMAT = "deja-export"
VERSION = 1


def path_text(raw: bytes | str) -> str:
    """A stored path as text that encodes back to the same bytes (see module docstring)."""
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "surrogateescape")


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


async def write_jsonl(conn: aiosqlite.Connection, sel: Selection, out: IO[str],
                      filters: dict[str, Any], progress: Callable[[int], None]) -> dict[str, int]:
    """Write the selection to `out`; returns the count of each line type written."""
    version = await conn.execute_fetchall(
        "SELECT version FROM deja_schema WHERE id = 1" if selection.is_postgres(conn)
        else "PRAGMA user_version")
    counts = {"source": 0, "session": 0, "agent_run": 0, "record": 0}
    out.write(dumps({"type": "header", "format": FORMAT, "version": VERSION,
                     "schema_version": next(iter(version))[0],
                     "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "filters": filters,
                     "engine": "postgresql" if selection.is_postgres(conn) else "sqlite"}) + "\n")
    async for row in selection.sources(conn, sel):
        row["path"] = path_text(row["path"])
        out.write(dumps({"type": "source", **row}) + "\n")
        counts["source"] += 1
    async for row in selection.sessions(conn, sel):
        out.write(dumps({"type": "session", **row}) + "\n")
        counts["session"] += 1
    async for row in selection.agent_runs(conn, sel):
        row["source"] = None if row["source"] is None else path_text(row["source"])
        out.write(dumps({"type": "agent_run", **row}) + "\n")
        counts["agent_run"] += 1
    async for row in selection.records(conn, sel):
        row["source"] = path_text(row["source"])
        row.pop("project_dir_", None)
        row["meta"] = json.loads(row["meta"]) if row["meta"] else None
        out.write(dumps({"type": "record", **row}) + "\n")
        counts["record"] += 1
        if counts["record"] % 1000 == 0:
            progress(counts["record"])
    return counts
