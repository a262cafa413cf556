"""`deja export --format parquet`: one row per record, for analysis (pyarrow, `deja[parquet]`).

The schema is stable (README, "Export and import"): new columns may be added
at the end, none renamed or retyped within `deja-export` version 1. Session
fields are repeated on each record so that one file answers most questions
without a join; `meta` keeps the stored JSON (token usage, message and
request ids, compaction data) as text. `ts` is a UTC timestamp; the original
text form stays in `ts_text`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from ingest.errors import DejaError

from . import selection
from .jsonl import path_text
from .selection import Selection

__all__ = ["COLUMNS", "schema", "write_parquet"]

# (name, pyarrow type name) in file order; `schema()` turns them into pyarrow types.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("uuid", "string"), ("session_id", "string"), ("agent_id", "string"),
    ("project_dir", "string"), ("source", "string"), ("line_key", "string"), ("part", "int32"),
    ("parent_uuid", "string"), ("kind", "string"), ("role", "string"), ("tool_name", "string"),
    ("tool_use_id", "string"), ("is_error", "bool"), ("text", "string"), ("text_len", "int64"),
    ("truncated", "bool"), ("ts", "timestamp"), ("ts_text", "string"), ("cwd", "string"),
    ("git_branch", "string"), ("model", "string"), ("is_sidechain", "bool"),
    ("meta", "string"), ("session_title", "string"),
)
_BATCH = 5000


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # the writer
    except ImportError:
        raise DejaError("Parquet export needs pyarrow: pip install 'deja[parquet]'") from None
    return pyarrow


def schema() -> Any:
    """The pyarrow schema of the export."""
    pa = _pyarrow()
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
             "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


async def write_parquet(conn: aiosqlite.Connection, sel: Selection, out: Path,
                        progress: Callable[[int], None]) -> dict[str, int]:
    """Write the selected records to the Parquet file `out`; returns the rows written."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    titles = {s["session_id"]: s["title"] async for s in selection.sessions(conn, sel)}
    file_schema = schema()
    names = [name for name, _ in COLUMNS]
    count = 0
    batch: dict[str, list[Any]] = {n: [] for n in names}
    with pq.ParquetWriter(str(out), file_schema, compression="zstd") as writer:

        def flush() -> None:
            writer.write_table(pa.Table.from_pydict(batch, schema=file_schema))
            for column in batch.values():
                column.clear()

        async for r in selection.records(conn, sel):
            row = {**r, "project_dir": r["project_dir_"], "source": path_text(r["source"]),
                   "is_error": _bool(r["is_error"]), "truncated": _bool(r["truncated"]),
                   "is_sidechain": _bool(r["is_sidechain"]), "ts": _time(r["ts"]),
                   "ts_text": r["ts"], "session_title": titles.get(r["session_id"])}
            for name in names:
                batch[name].append(row[name])
            count += 1
            if count % _BATCH == 0:
                flush()
                progress(count)
        if batch["uuid"] or count == 0:
            flush()
    return {"records": count}
