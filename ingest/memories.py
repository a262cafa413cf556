"""Explicit memories: notes, decisions and checkpoints an agent writes on purpose.

A memory is a record of kind `memory` like any other, so keyword search finds
it at once and the embedder gives it a vector soon after. It belongs to a
pseudo-source per project (`deja:memories/<project_dir>`), which lets the
project filters of search work unchanged and gives exact duplicates a unique
key to collide on: the hash of (memory kind, content) within the project.

Memories are redacted like transcripts: an agent may paste a secret too.

Checkpoints (kind `checkpoint`) written by deja itself (ingest/checkpoints.py)
carry an `origin` in their meta and `supersede` it: a session keeps only its
latest checkpoint of each origin, so hooks firing at every compaction and
session end do not pile up copies. An agent's own checkpoints have no origin
and are never superseded.
"""

from __future__ import annotations

import hashlib
import json
import uuid as uuid_mod
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .derived import index_new_records
from .errors import InvalidQuery, NotFound
from .memory_draft import MemoryDraft
from .redact import Redactor
from .store import Store

__all__ = ["MEMORY_KINDS", "MemoryWritten", "write_memory", "forget_memory", "MAX_MEMORY_CHARS"]

MEMORY_KINDS = ("note", "decision", "checkpoint", "todo", "fact", "preference")
MAX_MEMORY_CHARS = 32_000
_SOURCE_PREFIX = "deja:memories/"


@dataclass
class MemoryWritten:
    id: str
    created: bool  # False when the exact same memory already existed
    project_dir: str
    redactions: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "project": self.project_dir,
                "redactions": self.redactions}


async def _memory_source(store: Store, project_dir: str) -> int:
    path = (_SOURCE_PREFIX + project_dir).encode("utf-8", "surrogateescape")
    await store.conn.execute(
        "INSERT OR IGNORE INTO sources (path, display_path, project_dir, layout) "
        "VALUES (?, ?, ?, 'memory')",
        (path, _SOURCE_PREFIX + project_dir, project_dir),
    )
    # aiosqlite types the rows as an Iterable; they are a list.
    rows = list(await store.conn.execute_fetchall("SELECT id FROM sources WHERE path = ?", (path,)))
    return int(rows[0][0])


async def write_memory(
    store: Store,
    content: str,
    *,
    project_dir: str,
    cwd: str | None = None,
    title: str | None = None,
    tags: list[str] | None = None,
    kind: str = "note",
    session_id: str | None = None,
    meta: dict[str, Any] | None = None,
    supersede: bool = False,
) -> MemoryWritten:
    """Store a memory (deduplicated); returns its id. Raises InvalidQuery on bad input.

    meta: more fields for the record's meta (JSON-able). supersede: delete the
    session's other memories of the same kind and `meta["origin"]` in the same
    transaction (see the module docstring).
    """
    if not isinstance(content, str) or not content.strip():
        raise InvalidQuery("content must be a non-empty text")
    if len(content) > MAX_MEMORY_CHARS:
        raise InvalidQuery(f"content is {len(content)} characters; keep a memory under "
                           f"{MAX_MEMORY_CHARS} (summarise, or write several)")
    if kind not in MEMORY_KINDS:
        raise InvalidQuery(f"kind must be one of {', '.join(MEMORY_KINDS)}, not {kind!r}")
    redactor = Redactor()
    content = redactor(content.strip())
    title = redactor(title.strip()) if title and title.strip() else None
    clean_tags = sorted({redactor(t.strip()) for t in (tags or []) if t and t.strip()})
    text = f"{title}\n\n{content}" if title else content
    if clean_tags:
        text += "\n\ntags: " + ", ".join(clean_tags)
    key = "mem:" + hashlib.sha1(f"{kind}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{datetime.now(timezone.utc).microsecond // 1000:03d}Z"
    new_uuid = str(uuid_mod.uuid4())
    record_meta = {**(meta or {}), "memory_kind": kind, "title": title, "tags": clean_tags}
    origin = record_meta.get("origin")
    if supersede and (not session_id or not isinstance(origin, str)):
        raise InvalidQuery("supersede needs a session_id and an origin in meta")
    draft = MemoryDraft(key=key, uuid=new_uuid, session_id=session_id, text=text, ts=now,
                        cwd=cwd, meta=record_meta, kind=kind, origin=origin if supersede else None)
    if getattr(store, "engine", "sqlite") == "postgresql":
        from .pg.memories import insert_memory_pg

        created, new_uuid = await insert_memory_pg(store, project_dir, draft)  # type: ignore[arg-type]
    else:
        created, new_uuid = await _insert_memory(store, project_dir, draft)
    return MemoryWritten(id=new_uuid, created=created, project_dir=project_dir,
                         redactions=redactor.total)


async def _insert_memory(store: Store, project_dir: str, d: MemoryDraft) -> tuple[bool, str]:
    """Insert `d` on SQLite (and supersede); (created, the memory's id)."""
    async with store.transaction():
        source_id = await _memory_source(store, project_dir)
        cur = await store.conn.execute(
            "INSERT OR IGNORE INTO records (source_id, line_key, part, uuid, session_id, kind, "
            "role, text, text_len, ts, cwd, meta, embed_state) "
            "VALUES (?, ?, 0, ?, ?, 'memory', 'memory', ?, ?, ?, ?, ?, 0)",
            (source_id, d.key, d.uuid, d.session_id, d.text, len(d.text), d.ts, d.cwd,
             json.dumps(d.meta, ensure_ascii=False)),
        )
        created = cur.rowcount == 1
        new_uuid = d.uuid
        if created:
            # The INSERT added one row, so lastrowid is its id.
            assert cur.lastrowid is not None
            await index_new_records(store.conn, cur.lastrowid - 1)
        else:
            rows = list(await store.conn.execute_fetchall(
                "SELECT uuid FROM records WHERE source_id = ? AND line_key = ? AND part = 0",
                (source_id, d.key),
            ))
            new_uuid = rows[0][0]
        if d.origin is not None:
            # Its chunks and FTS rows go with it (ON DELETE CASCADE, the delete trigger).
            await store.conn.execute(
                "DELETE FROM records WHERE kind = 'memory' AND session_id = ? AND uuid != ? "
                "AND json_extract(meta, '$.memory_kind') = ? AND json_extract(meta, '$.origin') = ?",
                (d.session_id, new_uuid, d.kind, d.origin),
            )
        if d.session_id:
            await store.conn.execute(
                "INSERT INTO sessions (session_id, project_dir, cwd) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id) DO NOTHING",
                (d.session_id, project_dir, d.cwd),
            )
    return created, new_uuid


async def forget_memory(store: Store, memory_id: str) -> None:
    """Delete an explicit memory, its chunks and vectors. Transcript records are not deletable.

    Raises NotFound if no memory has this id. The same SQL on both engines (`store.reads`
    is the PostgreSQL store's PgConn, on its connection, inside its transaction).
    """
    async with store.transaction():
        rows = await store.reads.execute_fetchall(
            "SELECT id, kind FROM records WHERE uuid = ?", (memory_id,)
        )
        if not rows:
            raise NotFound(f"no memory with id {memory_id!r}: pass the id write_memory returned "
                           "(search_memory with kinds=['memory'] shows them as uuid)")
        if all(r[1] != "memory" for r in rows):
            raise InvalidQuery(f"{memory_id!r} is a transcript record, not a memory; only "
                               "memories written with write_memory can be forgotten")
        for record_id, kind in rows:
            if kind != "memory":
                continue
            # Its chunks and their vectors go with it (ON DELETE CASCADE).
            await store.reads.execute("DELETE FROM records WHERE id = ?", (record_id,))
