"""`deja sync --to URL`: a local SQLite history copied into a team PostgreSQL database.

A user who started locally moves up without losing or doubling anything:

- Every source (transcript file or memory pseudo-file) becomes a source of
  THIS machine (DEJA_MACHINE, else the host name) under its own path, with
  its layout, session and read cursor: exactly the row `deja ingest --db URL`
  would have made here, so a later ingest on this machine goes on from the
  copied cursors instead of reading the files again. A cursor is copied only
  where it is ahead of the one already there, and in the same transaction as
  the source's last records. It is read from the local file BEFORE the
  records: a local ingest running meanwhile can only add records beyond it,
  never leave the copied cursor ahead of the copied records.
- Records keep their unique key (source, line key, part), so a record the
  database already holds (a second sync, a sync after a kill -9, a file this
  machine had ingested there already) is left as it is and counted as
  already there. Explicit memories are records of their project's memory
  pseudo-source, copied the same way.
- Sessions, subagent runs and response usage are upserted by their keys with
  the ingest path's merge (fill in, widen), then `last_ingest` if later.
- Vectors: when the database has no model yet or the local one, each new
  record's chunks come with it. SQLite keeps a chunk as int8 (each vector
  scaled to +-127, the scale not kept: ingest/quantize.py); cosine distance
  ignores length, so the int8 vector divided by its norm IS the unit vector
  to within the rounding (cosine to the original > 0.9999), and is sent as
  pgvector's float form. Re-embedding would cost minutes of model time per
  thousand records for no better ranking. When the models differ, the
  records arrive waiting (`embed_state` 0) for `deja embed --db URL`. The
  multilingual vectors are not carried: the records arrive unseen by the
  multilingual pass, which builds them there (ingest/pg/multilingual.py).

Crash-safe: the work goes in batches, one PostgreSQL transaction each, under
this machine's ingest lock (lock.py), so nothing else of this machine writes
its sources meanwhile; the shared rows (sessions, subagent runs, responses)
are upserted in key order and a transaction aborted by a deadlock with
another machine's ingest is written again. Redaction happened when the local records were
written: only what the local database holds is sent, strings made storable
(text.py).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..config import PostgresUrl
from ..errors import DatabaseError, ModelMismatch
from . import sync_sql as q
from .connect import require_psycopg
from .lock import AdvisoryLock, wait_for_advisory_lock
from .record_insert import insert_records
from .schema import VECTOR_DIM
from .store import PgStore
from .text import clean, clean_json
from .vector_text import vector_literal
from .vectors import ensure_model_pg, stored_model_pg

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["SyncSummary", "sync_to_postgres", "copy_history"]

# Records per PostgreSQL transaction; sources too small to fill one share it.
BATCH_RECORDS = 1000
_KEY_ROWS = 1000  # sessions, subagent runs, responses per transaction
_RETRIES = 5  # attempts at a transaction aborted by a deadlock with another machine's


@dataclass
class SyncSummary:
    """What a sync copied (new on PostgreSQL) and found already there."""

    machine: str
    records_copied: int = 0
    records_already_there: int = 0
    records_by_kind: dict[str, int] = field(default_factory=dict)
    memories_copied: int = 0
    memories_already_there: int = 0
    sources_copied: int = 0
    sources_already_there: int = 0
    cursors_copied: int = 0
    sessions_copied: int = 0
    sessions_already_there: int = 0
    agent_runs_copied: int = 0
    agent_runs_already_there: int = 0
    responses_copied: int = 0
    responses_already_there: int = 0
    vectors: str = "none"          # copied | pending (another model) | none (no local vectors)
    local_model: str | None = None
    database_model: str | None = None
    chunks_copied: int = 0
    pending_embeddings: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["records_by_kind"] = dict(sorted(self.records_by_kind.items()))
        out["seconds"] = round(self.seconds, 2)
        return out


@dataclass
class _Piece:
    """Some records of one local source; `last`: the source's final piece, with its cursor."""

    source: tuple[Any, ...]   # a row of LOCAL_SOURCES (id None: the records without source)
    records: list[tuple[Any, ...]]
    last: bool


async def sync_to_postgres(local_path: Path, target: PostgresUrl, machine: str,
                           environ: Mapping[str, str], *, batch_records: int = BATCH_RECORDS,
                           wait_seconds: float = 0.0,
                           progress: Callable[[int, int], None] | None = None) -> SyncSummary:
    """Copy the SQLite database at `local_path` into `target` as `machine`.

    Raises DatabaseError (no local database, server unreachable or refusing, a statement
    refused: one line without the password), IngestBusy (this machine's ingest holds the lock).
    """
    from ..store import Store
    from .run import worded_failures

    if not Path(local_path).is_file():
        raise DatabaseError(f"no database at {local_path}; nothing to sync")
    require_psycopg()

    local = await Store.open(local_path)
    try:
        pg = await PgStore.open(target, machine, environ)
        lock = AdvisoryLock(pg.conn, machine)
        try:
            with worded_failures(pg):
                await wait_for_advisory_lock(lock, wait_seconds)
                return await copy_history(local, pg, batch_records=batch_records,
                                          progress=progress)
        finally:
            with anyio.CancelScope(shield=True):
                await lock.release()
                await pg.close()
    finally:
        with anyio.CancelScope(shield=True):
            await local.close()


async def copy_history(local: Store, pg: PgStore, *, batch_records: int = BATCH_RECORDS,
                       progress: Callable[[int, int], None] | None = None) -> SyncSummary:
    """The copy itself, on open stores (the module docstring says what and how)."""
    started = time.perf_counter()
    summary = SyncSummary(machine=pg.machine)
    copy_vectors = await _vector_plan(local, pg, summary)
    total = (await _rows(local, "SELECT COUNT(*) FROM records"))[0][0]
    done = 0
    if progress:
        progress(0, total)
    seen: set[int | None] = set()
    batch: list[_Piece] = []
    for_batch = 0
    async for piece in _pieces(local, batch_records):
        batch.append(piece)
        seen.add(piece.source[0])
        for_batch += len(piece.records)
        if for_batch >= batch_records or len(batch) >= batch_records:
            await _write(local, pg, batch, copy_vectors, summary)
            done += for_batch
            batch, for_batch = [], 0
            if progress:
                progress(done, total)
    if batch:
        await _write(local, pg, batch, copy_vectors, summary)
        if progress:
            progress(total, total)
    summary.sources_already_there = len(seen) - summary.sources_copied
    await _copy_keyed(local, pg, summary)
    for key in ("last_ingest",):
        value = await local.get_meta(key)
        if value:
            async with pg.transaction():
                await pg.conn.execute(q.PG_META_IF_NEWER, (key, value))
    summary.pending_embeddings = await pg.pending_embeddings()
    summary.seconds = time.perf_counter() - started
    return summary


async def _vector_plan(local: Store, pg: PgStore, summary: SyncSummary) -> bool:
    """Whether the chunks' vectors are copied (the module docstring says when)."""
    rows = await _rows(local, q.LOCAL_MODEL)
    if rows:
        summary.local_model = str(rows[0][0])
    stored = await stored_model_pg(pg)
    summary.database_model = stored[0] if stored else None
    if not rows:
        return False
    model, dim = str(rows[0][0]), int(rows[0][1])
    if stored is None and dim == VECTOR_DIM:
        try:
            await ensure_model_pg(pg, model, dim)  # another machine may record one meanwhile
            summary.database_model = model
        except ModelMismatch:
            stored = await stored_model_pg(pg)
            summary.database_model = stored[0] if stored else None
    if summary.database_model == model and dim == VECTOR_DIM:
        summary.vectors = "copied"
        return True
    summary.vectors = "pending"
    return False


async def _pieces(local: Store, batch_records: int) -> AsyncIterator[_Piece]:
    """Every local source (cursor first) with its records, in pages of `batch_records`."""
    sources = [tuple(r) for r in await _rows(local, q.LOCAL_SOURCES)]
    if (await _rows(local, q.LOCAL_UNSOURCED))[0][0]:
        sources.append((None, q.UNSOURCED_PATH, q.UNSOURCED_PATH.decode(), "", "memory",
                        *([None] * 3), *([0] * 10)))
    for source in sources:
        sql = q.local_records_sql(source[0] is None)
        last_id = 0
        while True:
            params = (last_id, batch_records) if source[0] is None else \
                (source[0], last_id, batch_records)
            page = [tuple(r) for r in await _rows(local, sql, params)]
            full = len(page) == batch_records
            yield _Piece(source, page, last=not full)
            if not full:
                break
            last_id = page[-1][0]


async def _write(local: Store, pg: PgStore, batch: list[_Piece], copy_vectors: bool,
                 summary: SyncSummary) -> None:
    """One batch in ONE PostgreSQL transaction: its sources, records, chunks and cursors."""
    added_sources = 0
    counts: dict[str, int] = {}
    chunks = already = memories_there = cursors = 0
    async with pg.transaction():
        for piece in batch:
            source_id, created = await _ensure_source(pg, piece.source)
            added_sources += created
            new = await _insert_records(pg, source_id, piece.records, copy_vectors)
            for row in piece.records:
                if row[0] not in new:
                    already += 1
                    memories_there += row[7] == "memory"
            for _, kind in new.values():
                counts[kind] = counts.get(kind, 0) + 1
            if copy_vectors:
                chunks += await _copy_chunks(local, pg, {
                    local_id: pg_id for local_id, (pg_id, _) in new.items()})
            if piece.last:
                cursors += await _advance_cursor(pg, source_id, piece.source)
    # Counted once committed, so the summary never counts a rolled-back batch.
    summary.sources_copied += added_sources
    summary.records_already_there += already
    summary.memories_already_there += memories_there
    summary.cursors_copied += cursors
    for kind, n in counts.items():
        summary.records_by_kind[kind] = summary.records_by_kind.get(kind, 0) + n
        summary.records_copied += n
    summary.memories_copied += counts.get("memory", 0)
    summary.chunks_copied += chunks


async def _ensure_source(pg: PgStore, s: tuple[Any, ...]) -> tuple[int, bool]:
    """This machine's row of local source `s` (created with a cursor at 0 when new)."""
    path = bytes(s[1])
    cur = await pg.conn.execute(q.PG_ENSURE_SOURCE, (
        pg.machine, path, clean(s[2]), clean(s[3]), s[4], clean(s[5]), clean(s[6]), clean(s[7])))
    row = await cur.fetchone()
    if row:
        return int(row[0]), True
    cur = await pg.conn.execute(q.PG_SOURCE, (pg.machine, path))
    found = await cur.fetchone()
    assert found is not None  # inserted or already there, in this transaction
    return int(found[0]), False


async def _insert_records(pg: PgStore, source_id: int, records: list[tuple[Any, ...]],
                          copy_vectors: bool) -> dict[int, tuple[int, str]]:
    """Insert the records the database lacks; {local id: (PostgreSQL id, kind)} of those."""
    if not records:
        return {}
    rows = [_record_row(pg.machine, source_id, r, copy_vectors) for r in records]
    ids = await insert_records(pg.conn, rows)
    return {record[0]: (rid, record[7]) for record, rid in zip(records, ids) if rid is not None}


def _record_row(machine: str, source_id: int, r: tuple[Any, ...],
                copy_vectors: bool) -> tuple[Any, ...]:
    """A local record row (id first, then LOCAL_RECORD_COLUMNS) as PG_INSERT_RECORD's values."""
    (_, line_key, part, uuid, parent, session, agent, kind, role, tool, tool_use, is_error,
     text, text_len, truncated, ts, cwd, branch, model, sidechain, offset, meta, state) = r
    if state == 1 and not copy_vectors:
        state = 0  # another model's database: the record waits for `deja embed`
    return (machine, source_id, clean(line_key), part, clean(uuid), clean(parent),
            clean(session), clean(agent), kind, role, clean(tool), clean(tool_use), is_error,
            clean(text), text_len, truncated, clean(ts), clean(cwd), clean(branch),
            clean(model), sidechain, offset, clean_json(json.loads(meta)) if meta else None,
            state)


async def _copy_chunks(local: Store, pg: PgStore, new: dict[int, int]) -> int:
    """The chunks of the new records, their int8 vectors as unit float vectors."""
    if not new:
        return 0
    import numpy as np

    ids = sorted(new)
    rows: list[Any] = []
    for at in range(0, len(ids), _KEY_ROWS):  # within SQLite's limit of parameters
        some = ids[at:at + _KEY_ROWS]
        rows += await _rows(local, q.LOCAL_CHUNKS.format(marks=", ".join("?" for _ in some)),
                            tuple(some))
    if not rows:
        return 0
    int8 = np.frombuffer(b"".join(bytes(r[4]) for r in rows), dtype=np.int8)
    mat = int8.reshape(len(rows), -1).astype(np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    mat = mat / norms
    async with pg.conn.cursor() as cur:
        await cur.executemany(q.PG_INSERT_CHUNK, [
            (new[r[0]], r[1], r[2], r[3], vector_literal(vec)) for r, vec in zip(rows, mat)])
    return len(rows)


async def _advance_cursor(pg: PgStore, source_id: int, s: tuple[Any, ...]) -> int:
    """The local cursor of source `s`, where ahead of the database's; 1 if it was copied."""
    (_, _, _, _, _, _, session_id, _, dev, ino, size, mtime_ns, offset, lines, head_len,
     head_hash, missing, resets) = s
    cur = await pg.conn.execute(q.PG_ADVANCE_CURSOR, (
        offset, lines, size, mtime_ns, dev, ino, head_len, head_hash, missing, resets,
        clean(session_id), source_id, offset))
    return cur.rowcount


async def _copy_keyed(local: Store, pg: PgStore, summary: SyncSummary) -> None:
    """Sessions, subagent runs and responses, by their keys, a transaction per page."""
    last: tuple[Any, ...] = ("",)
    while rows := await _rows(local, q.LOCAL_SESSIONS, (*last, _KEY_ROWS)):
        new = await _upsert(pg, q.PG_UPSERT_SESSION, [
            (*(clean(v) if isinstance(v, str) else v for v in r), pg.machine) for r in rows])
        summary.sessions_copied += new
        summary.sessions_already_there += len(rows) - new
        last = (rows[-1][0],)
    paths = {int(r[0]): bytes(r[1]) for r in await _rows(local, "SELECT id, path FROM sources")}
    last = ("", "")
    while rows := await _rows(local, q.LOCAL_AGENT_RUNS, (*last, _KEY_ROWS)):
        values = []
        for sid, aid, src, layout, atype, desc, tool_use, aside in rows:
            pg_src = await _pg_source_id(pg, paths.get(src)) if src is not None else None
            values.append((clean(sid), clean(aid), pg_src, layout, clean(atype), clean(desc),
                           clean(tool_use), aside))
        new = await _upsert(pg, q.PG_UPSERT_AGENT, values)
        summary.agent_runs_copied += new
        summary.agent_runs_already_there += len(rows) - new
        last = (rows[-1][0], rows[-1][1])
    last = ("",)
    while rows := await _rows(local, q.LOCAL_RESPONSES, (*last, _KEY_ROWS)):
        new = await _upsert(pg, q.PG_UPSERT_RESPONSE, [
            (clean(r[0]), clean(r[1]), clean(r[2]), clean(r[3]), *r[4:]) for r in rows])
        summary.responses_copied += new
        summary.responses_already_there += len(rows) - new
        last = (rows[-1][0],)


async def _pg_source_id(pg: PgStore, path: bytes | None) -> int | None:
    if path is None:
        return None
    cur = await pg.conn.execute(q.PG_SOURCE, (pg.machine, path))
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def _upsert(pg: PgStore, sql: str, values: list[tuple[Any, ...]]) -> int:
    """Upsert `values` (in key order) in one transaction; how many rows were new.

    Another machine's ingest batch may update the same sessions or responses at once; a
    deadlock aborts one of the two, which is written again, as PgStore.write_batch does.
    """
    import psycopg

    for attempt in range(_RETRIES):
        try:
            new = 0
            async with pg.transaction(), pg.conn.cursor() as cur:
                await cur.executemany(sql, values, returning=True)
                while True:
                    new += sum(1 for (inserted,) in await cur.fetchall() if inserted)
                    if not cur.nextset():
                        break
            return new
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == _RETRIES - 1:
                raise
            await anyio.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
    raise AssertionError("unreachable")  # the loop returns or raises


async def _rows(local: Store, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return list(await local.conn.execute_fetchall(sql, params))
