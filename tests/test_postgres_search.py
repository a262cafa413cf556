"""The PostgreSQL engine's own search machinery (issue 11): what only PostgreSQL has.

What a search answers is tested on both engines in test_search.py (the
`engine` fixture: filters that never return fewer hits than exist, with and
without an HNSW index, limits, budgets, snippets, the JSON contract with
`machine`, hostile query strings, degraded modes). Here, on the same corpus
(fixtures/search_corpus.py, ingested and embedded once per run per engine):

- the same windows get vectors on both engines (record, seq, offsets), one
  model recorded, unit vectors in pgvector's column;
- a version 1 database is upgraded to the current schema and embedded (the
  refusal of another model until `deja reembed` runs on both engines in
  test_embedding.py);
- the keyword index of schema v4: a long record's passages (their starts
  are SQLite's `passage_spans`), kept in step by the triggers when a record
  changes or goes;
- an HNSW index on the chunks: an unfiltered query uses it and agrees with
  the exact scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_json
from fixtures.paths import SAMPLE
from fixtures.postgres import PgServer
from fixtures.search_corpus import MACHINE, QUERY, Corpus, SearchCorpora

from ingest.config import PostgresUrl
from ingest.pg.schema import SCHEMA_VERSION
from ingest.pg.store import PgStore


@pytest.fixture
def pg(search_corpora: SearchCorpora, postgres_server: PgServer) -> Corpus:
    """test_search.py's corpus on PostgreSQL (searches only read it)."""
    return search_corpora.get("postgres", postgres_server)


def test_the_same_windows_get_vectors_on_both_engines(search_corpora: SearchCorpora,
                                                      pg: Corpus) -> None:
    lite = search_corpora.get("sqlite")
    windows = ("SELECT r.uuid, r.part, c.seq, c.char_start, c.char_end "
               "FROM chunks c JOIN records r ON r.id = c.record_id")
    pg_chunks = set(pg.sql(windows))
    assert len(pg_chunks) > 400 and pg_chunks == set(lite.sql(windows))
    model = "SELECT model_id, dim FROM embedding_model"
    assert pg.sql(model) == lite.sql(model)
    assert pg.sql("SELECT version FROM deja_schema") == [(SCHEMA_VERSION,)]
    # Unit vectors of 384 dimensions.
    norms = pg.sql("SELECT MIN(vector_dims(vec)), MIN(vec <#> vec), MAX(vec <#> vec) FROM chunks")
    assert norms[0][0] == 384 and -1.01 < norms[0][1] <= norms[0][2] < -0.99


# What schema versions 8 (ingest/pg/search_rules.py), 7 (ingest/pg/ml_schema.py), 6 (the
# batches' own index: its trigger for a changed text), 5 (sessions' key and machine), 4
# (ingest/pg/search_schema.py) and 3 add, undone: a version 2 database.
UNDO_V5_V3 = """
DROP TRIGGER records_index_update ON records;
DROP TABLE ml_vectors;
DROP TABLE ml_model;
ALTER TABLE records DROP COLUMN ml_seen;
DROP INDEX sessions_project_key;
ALTER TABLE sessions DROP COLUMN project_key, DROP COLUMN machine;
DROP TABLE passages;
DROP TRIGGER records_index ON records;
DROP TRIGGER records_passages ON records;
DROP TRIGGER records_passages_update ON records;
DROP FUNCTION deja_index_record, deja_index_passages, deja_passage_spans, deja_cut,
    deja_next_start, deja_context, deja_tsv_len, deja_tsv, deja_words, deja_record_tsv,
    deja_skipped, deja_command_args;
ALTER TABLE records DROP COLUMN search_tsv, DROP COLUMN search_len;
DROP TEXT SEARCH CONFIGURATION deja;
DROP TEXT SEARCH DICTIONARY deja_stem;
ALTER TABLE records ADD COLUMN text_tsv TSVECTOR
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, text)) STORED;
CREATE INDEX records_tsv ON records USING GIN (text_tsv);
DROP FUNCTION json_extract;
UPDATE deja_schema SET version = 2;
"""


def test_a_version_1_database_is_upgraded_and_embedded(postgres_server: PgServer,
                                                       postgres_url: str, home: Path) -> None:
    deja_json(home, "--db", postgres_url, "ingest", "--root", str(SAMPLE), "--json",
              "--no-embed")
    name = postgres_url.split("/")[3].split("?")[0]
    with postgres_server.connect(name) as conn:  # as the first part of the engine left it
        conn.execute(UNDO_V5_V3)
        conn.execute("DROP TABLE chunks; DROP TABLE embedding_model; DROP INDEX records_source_id; "
                     "UPDATE deja_schema SET version = 1")
        records = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    out = deja_json(home, "--db", postgres_url, "embed", "--json")
    assert out["embedded"] > 0 and out["pending_embeddings"] == 0
    with postgres_server.connect(name) as conn:
        assert conn.execute("SELECT version FROM deja_schema").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == records
    hits = deja_json(home, "--db", postgres_url, "search", "--json", "--mode", "vector",
                     "cart tests")["hits"]
    assert hits and hits[0]["machine"]
    # Version 3's full-text index was backfilled: every record, the keyword ranker finds them.
    with postgres_server.connect(name) as conn:
        assert conn.execute("SELECT COUNT(*) FROM records WHERE search_tsv IS NULL "
                            "OR search_len IS NULL").fetchone()[0] == 0
    assert deja_json(home, "--db", postgres_url, "search", "--json", "--mode", "keyword",
                     "cart tests")["hits"]


# ---------------------------------------------------------------- the keyword index (schema v4)

def _keyword(url: str, query: str, context: float) -> tuple[list[tuple[int, float]],
                                                             dict[int, int]]:
    """keyword_ranks_pg itself: (record id, score) best first, and the passages' starts."""
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg.keyword import keyword_ranks_pg

    async def go() -> tuple[list[tuple[int, float]], dict[int, int]]:
        store = await PgStore.open(PostgresUrl(url), MACHINE, {}, create=False)
        starts: dict[int, int] = {}
        try:
            ranked = await keyword_ranks_pg(store.conn, query, SearchFilters(), 10, context,
                                            starts=starts)
        finally:
            await store.close()
        return ranked, starts

    return anyio.run(go)


def test_a_long_records_passages_are_sqlites_and_rank_it(pg: Corpus) -> None:
    """The passages table holds SQLite's passage spans; the ranker gives the best one's start
    (the snippet's window is tested on both engines in test_search.py)."""
    from ingest.indexing import passage_spans

    (rid, text), = pg.sql("SELECT id, text FROM records WHERE text LIKE '%zanzibarquux%'")
    starts = [r[0] for r in pg.sql("SELECT start FROM passages WHERE record_id = ? "
                                   "ORDER BY start", (rid,))]
    assert len(starts) > 5 and starts == [s for s, _ in passage_spans(text)]
    ranked, where = _keyword(pg.db, "zanzibarquux", 0.0)
    assert ranked[0][0] == rid and text[where[rid]:].find("zanzibarquux") < 600


def test_a_changed_or_deleted_record_is_indexed_again(pg: Corpus, tmp_path: Path) -> None:
    copy = pg.copy(tmp_path)
    long_text = "quixotic walrus census. " + "Filler sentence number two. " * 120
    assert copy.server is not None
    with copy.server.connect(copy.db.split("/")[3].split("?")[0]) as conn:
        rid = conn.execute("SELECT MIN(id) FROM records").fetchone()[0]
        conn.execute("UPDATE records SET text = %s WHERE id = %s", (long_text, rid))
        assert conn.execute("SELECT COUNT(*) FROM passages WHERE record_id = %s",
                            (rid,)).fetchone()[0] > 3
        assert conn.execute("SELECT COUNT(*) FROM records WHERE search_tsv IS NULL"
                            ).fetchone()[0] == 0
        hits = copy.search("quixotic censuses", mode="keyword").hits
        assert [h.id for h in hits] == [rid]
        conn.execute("DELETE FROM records WHERE id = %s", (rid,))
        assert conn.execute("SELECT COUNT(*) FROM passages WHERE record_id = %s",
                            (rid,)).fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0] == \
            conn.execute("SELECT COUNT(*) FROM passages p JOIN records r ON r.id = p.record_id"
                         ).fetchone()[0]
    assert not copy.search("quixotic censuses", mode="keyword").hits


# ---------------------------------------------------------------- an HNSW index on the chunks

def test_an_unfiltered_query_uses_the_hnsw_index_and_agrees_with_the_exact_scan(
        pg: Corpus) -> None:
    from ingest.pg.vector_text import vector_literal
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg import vector as pgv

    qvec = pg.embedder.embed([QUERY])[0]
    url = pg.hnsw_target()  # the corpus with pgvector's HNSW index on chunks.vec

    async def go() -> tuple[list[Any], list[Any], str]:
        store = await PgStore.open(PostgresUrl(url), MACHINE, {}, create=False)
        try:
            exact = await pgv.vector_ranks_pg(store.conn, qvec, SearchFilters(), 20,
                                              use_hnsw=False)
            auto = await pgv.vector_ranks_pg(store.conn, qvec, SearchFilters(), 20)
            literal = vector_literal(qvec)
            # (the planner scans 450 chunks rather than use an index: as it would not at 100k)
            await store.conn.execute("SET enable_seqscan = off")
            cur = await store.conn.execute("EXPLAIN " + pgv._HNSW_SQL, (literal, literal, 60))
            plan = "\n".join(r[0] for r in await cur.fetchall())
        finally:
            await store.close()
        return exact, auto, plan

    exact, auto, plan = anyio.run(go)
    assert "chunks_vec_hnsw" in plan
    assert len(auto) == 20
    top = {rid for rid, _, _ in exact[:10]}
    assert len(top & {rid for rid, _, _ in auto[:10]}) >= 8


def test_concurrent_hnsw_searches_on_one_connection_each_answer(pg: Corpus) -> None:
    """The server's searches share one read connection: HNSW's SET LOCAL transactions of
    concurrent searches must not nest on it (each search answers, as it does alone)."""
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg import vector as pgv

    qvecs = pg.embedder.embed([QUERY, "bicycle chain oil", "greenhouse tomatoes", "merino"])
    url = pg.hnsw_target()

    async def go() -> tuple[list[Any], list[Any]]:
        store = await PgStore.open(PostgresUrl(url), MACHINE, {}, create=False)
        try:
            alone = [await pgv.vector_ranks_pg(store.conn, q, SearchFilters(), 10)
                     for q in qvecs]
            together: list[Any] = [None] * (2 * len(qvecs))

            async def one(i: int) -> None:
                together[i] = await pgv.vector_ranks_pg(store.conn, qvecs[i % len(qvecs)],
                                                        SearchFilters(), 10)

            async with anyio.create_task_group() as tg:
                for i in range(len(together)):
                    tg.start_soon(one, i)
        finally:
            await store.close()
        return alone, together

    alone, together = anyio.run(go)
    assert all(alone)
    assert together == alone + alone
