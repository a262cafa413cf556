"""Explicit memories on PostgreSQL: the insert of ingest/memories.py's `MemoryDraft`.

ingest/memories.py validates, redacts and keys a memory once for both
engines; this writes it on a shared database. As on SQLite a memory belongs
to its project's pseudo-source `deja:memories/<project_dir>`, here one per
(machine, project), the key `deja sync` copies local memories under, so a
memory written by a server and one synced later from the same machine are
one. Exact duplicates collide on (source, line key, part) and are stored
once; the keyword index (search_tsv, passages) is written by the schema's
triggers in the same transaction, the vector by the next embedding pass.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .text import clean, clean_json

if TYPE_CHECKING:
    from ..memory_draft import MemoryDraft
    from .store import PgStore

__all__ = ["insert_memory_pg"]

_PREFIX = "deja:memories/"


async def insert_memory_pg(store: PgStore, project_dir: str, d: MemoryDraft
                           ) -> tuple[bool, str]:
    """Insert `d` (and supersede, as on SQLite) in one transaction; (created, its id)."""
    conn, machine = store.conn, store.machine
    display = clean(_PREFIX + project_dir) or _PREFIX
    path = (_PREFIX + project_dir).encode("utf-8", "surrogateescape")
    async with store.transaction():
        await conn.execute(
            "INSERT INTO sources (machine, path, display_path, project_dir, layout) "
            "VALUES (%s, %s, %s, %s, 'memory') ON CONFLICT (machine, path) DO NOTHING",
            (machine, path, display, clean(project_dir)))
        cur = await conn.execute("SELECT id FROM sources WHERE machine = %s AND path = %s",
                                 (machine, path))
        row = await cur.fetchone()
        assert row is not None  # inserted or already there, in this transaction
        source_id = int(row[0])
        cur = await conn.execute(
            "INSERT INTO records (machine, source_id, line_key, part, uuid, session_id, kind, "
            "role, text, text_len, ts, cwd, meta, embed_state) "
            "VALUES (%s, %s, %s, 0, %s, %s, 'memory', 'memory', %s, %s, %s, %s, %s, 0) "
            "ON CONFLICT (source_id, line_key, part) DO NOTHING RETURNING uuid",
            (machine, source_id, d.key, d.uuid, d.session_id, clean(d.text), len(d.text), d.ts,
             clean(d.cwd), clean_json(d.meta) or json.dumps({})))
        created = await cur.fetchone() is not None
        memory_id = d.uuid
        if not created:
            cur = await conn.execute(
                "SELECT uuid FROM records WHERE source_id = %s AND line_key = %s AND part = 0",
                (source_id, d.key))
            found = await cur.fetchone()
            assert found is not None
            memory_id = str(found[0])
        if d.origin is not None:
            await conn.execute(
                "DELETE FROM records WHERE kind = 'memory' AND session_id = %s AND uuid != %s "
                "AND meta->>'memory_kind' = %s AND meta->>'origin' = %s",
                (d.session_id, memory_id, d.kind, d.origin))
        if d.session_id:
            await conn.execute(
                "INSERT INTO sessions (session_id, project_dir, cwd, machine) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (session_id) DO NOTHING",
                (d.session_id, clean(project_dir), clean(d.cwd), machine))
    return created, memory_id
