"""Upgrading a database made by an older deja keeps everything and searches the same.

A version-4 database (the schema of the first release: FTS over the text
alone, float32 vectors in vec0) is built with the shipped migrations 1-4 and
filled the way that version filled it; opening it with today's Store must
migrate it (m005 full-text context column, m006 int8 vectors + sign bits)
without losing a record, a word or a vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np

from conftest import FixedEmbedder
from ingest.db import make_connector
from ingest.embed import DEFAULT_MODEL
from ingest.migrations import MIGRATIONS, SCHEMA_VERSION
from ingest.store import Store
from mcp_server.search import Resources, SearchRequest, search


def _version4_db(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A v4 database: 3 files x 40 records, one float vector per record. Returns the vectors."""
    conn = make_connector(path)()
    vectors = rng.normal(size=(120, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        for number, migration in enumerate(MIGRATIONS[:4], 1):
            conn.execute("BEGIN IMMEDIATE")
            migration(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO embedding_model VALUES (1, ?, 384, '2026-01-01')", (DEFAULT_MODEL,))
        for source in (1, 2, 3):
            conn.execute("INSERT INTO sources (id, path, display_path, project_dir, layout) "
                         "VALUES (?, ?, ?, '-p', 'session')", (source, f"f{source}".encode(),
                                                               f"f{source}"))
        for i in range(120):
            rid, source = i + 1, i // 40 + 1
            text = f"turn {i} word{i} about topic{i % 7}"
            conn.execute(
                "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, text, "
                "text_len, ts, embed_state) VALUES (?, ?, ?, 0, ?, 's', 'assistant', ?, ?, "
                "'2026-01-01T00:00:00.000Z', 1)", (rid, source, f"k{rid}", f"u{rid}", text, len(text)))
            conn.execute("INSERT INTO records_fts (rowid, text) VALUES (?, deja_fts_text(?))",
                         (rid, text))
            conn.execute("INSERT INTO chunks (id, record_id, seq, char_start, char_end) "
                         "VALUES (?, ?, 0, 0, ?)", (rid, rid, len(text)))
            conn.execute("INSERT INTO vec_chunks VALUES (?, ?, 'assistant', '-p', 's', '', "
                         "'2026-01-01T00:00:00.000Z')", (rid, vectors[i].tobytes()))
        conn.execute("COMMIT")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    finally:
        conn.close()
    return vectors


def test_a_version_4_database_upgrades_without_loss(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    vectors = _version4_db(db, np.random.default_rng(7))

    async def go() -> dict[str, Any]:
        store = await Store.open(db)
        try:
            conn = store.conn
            out: dict[str, Any] = {}
            out["version"] = (await conn.execute_fetchall("PRAGMA user_version"))[0][0]
            out["tables"] = {r[0] for r in await conn.execute_fetchall(
                "SELECT name FROM sqlite_master")}
            out["records"] = (await conn.execute_fetchall("SELECT COUNT(*) FROM records"))[0][0]
            out["vectors"] = await conn.execute_fetchall(
                "SELECT c.record_id, c.bits, v.vec FROM chunks c "
                "JOIN chunk_vectors v ON v.chunk_id = c.id ORDER BY c.record_id")
            out["own"] = await conn.execute_fetchall(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH 'text : word41'")
            out["context"] = await conn.execute_fetchall(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH 'context : word41'")
            # The first record of a file has no context: word39 ends file 1.
            out["across_files"] = await conn.execute_fetchall(
                "SELECT rowid FROM records_fts WHERE records_fts MATCH 'context : word39'")
            hits = await search(conn, SearchRequest("nothing matches", mode="vector", limit=3),
                                Resources(embedder=FixedEmbedder(vectors[57])))
            out["nearest"] = [h.uuid for h in hits.hits]
            out["status"] = hits.vector_status
            return out
        finally:
            await store.close()

    out = anyio.run(go)
    assert out["version"] == SCHEMA_VERSION == 6
    assert "vec_chunks" not in out["tables"] and "chunk_vectors" in out["tables"]
    assert out["records"] == 120
    # Every float vector became an int8 vector pointing the same way, with its sign bits.
    assert [r[0] for r in out["vectors"]] == list(range(1, 121))
    for rid, bits, vec in out["vectors"]:
        q8 = np.frombuffer(vec, dtype=np.int8).astype(np.float32)
        cosine = float(q8 @ vectors[rid - 1]) / float(np.linalg.norm(q8))
        assert cosine > 0.999
        assert bits == np.packbits(vectors[rid - 1] > 0).tobytes()
    # The full-text index holds each record's words, and the previous record's as context.
    assert [tuple(r) for r in out["own"]] == [(42,)]
    assert [tuple(r) for r in out["context"]] == [(43,)]
    assert list(out["across_files"]) == []
    assert out["status"] == "ok" and out["nearest"][0] == "u58"
