"""The PostgreSQL engine, second part (issue 11): embedding and search on PostgreSQL.

test_search.py's generated corpus (filters exclude most of it) is ingested and
embedded by the real CLI into both engines, once for the module: a SQLite
file and a PostgreSQL database on the run's server (fixtures/postgres.py).
Then:

- the same windows get vectors on both (record, seq, offsets), one model recorded;
- the same query finds the same record in the top hits on both engines, in
  keyword, vector and hybrid mode; `deja search --json` has the same fields on
  both, plus `machine` on PostgreSQL only;
- every filter of test_search.py returns every matching record up to the limit
  (no fewer hits than exist), in vector and hybrid mode;
- hostile query strings (quotes, colons, `&|!`, parentheses, NUL) never raise;
- another model is refused (ModelMismatch) until `deja reembed`; a version 1
  database is upgraded to version 2 and embedded.

The library calls (`search_pg`) share one loaded embedder; the CLI runs as a
subprocess where the process boundary matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import test_search as sqlite_search
from fixtures.cli import deja, deja_json
from fixtures.db import sql
from fixtures.paths import MODEL_CACHE, SAMPLE
from fixtures.postgres import PgServer

from ingest.config import PostgresUrl
from ingest.embed import Embedder, load_embedder
from ingest.pg.schema import SCHEMA_VERSION
from ingest.pg.store import PgStore
from mcp_server.search import SearchRequest
from mcp_server.search.pg import search_pg
from mcp_server.search.results import SearchResult


class Both:
    """One corpus in both engines."""

    def __init__(self, home: Path, db: Path, url: str, server: PgServer,
                 embedder: Embedder) -> None:
        self.home, self.db, self.url, self.server, self.embedder = home, db, url, server, embedder

    def pg(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.server.connect(self.url.split("/")[3].split("?")[0]) as conn:
            return [tuple(r) for r in conn.execute(query, params).fetchall()]

    def search(self, query: str, **kw: Any) -> SearchResult:
        """search_pg through the library, with the module's embedder."""
        async def go() -> SearchResult:
            store = await PgStore.open(PostgresUrl(self.url), "test", {}, create=False)
            try:
                return await search_pg(store.conn, SearchRequest(query, **kw),
                                       embedder=self.embedder)
            finally:
                await store.close()

        return anyio.run(go)

    def cli(self, engine: str, *args: str) -> Any:
        db = self.url if engine == "postgresql" else str(self.db)
        return deja_json(self.home, "--db", db, "search", "--json", *args)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(None, "auto", cache_dir=MODEL_CACHE, local_files_only=True)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, postgres_server: PgServer,
         embedder: Embedder) -> Iterator[Both]:
    base = tmp_path_factory.mktemp("pgsearch")
    root, home = base / "projects", base / "home"
    home.mkdir()
    sqlite_search.build_corpus(root, datetime.now(timezone.utc))
    db = base / "deja.db"
    url = postgres_server.uri(postgres_server.new_database())
    for target in (str(db), url):
        out = deja_json(home, "--db", target, "ingest", "--root", str(root), "--root",
                        str(SAMPLE), "--json", embed=True, env={"DEJA_MACHINE": "laptop"})
        assert out["pending_embeddings"] == 0 and out["embedded"] > 400, out
    yield Both(home, db, url, postgres_server, embedder)


def test_the_same_windows_get_vectors_on_both_engines(both: Both) -> None:
    sqlite_chunks = set(sql(both.db, "SELECT r.uuid, r.part, c.seq, c.char_start, c.char_end "
                                     "FROM chunks c JOIN records r ON r.id = c.record_id"))
    pg_chunks = set(both.pg("SELECT r.uuid, r.part, c.seq, c.char_start, c.char_end "
                            "FROM chunks c JOIN records r ON r.id = c.record_id"))
    assert len(pg_chunks) > 400 and pg_chunks == sqlite_chunks
    assert both.pg("SELECT model_id, dim FROM embedding_model") == \
        sql(both.db, "SELECT model_id, dim FROM embedding_model")
    assert both.pg("SELECT version FROM deja_schema") == [(SCHEMA_VERSION,)]
    # Unit vectors of 384 dimensions.
    norms = both.pg("SELECT MIN(vector_dims(vec)), MIN(vec <#> vec), MAX(vec <#> vec) FROM chunks")
    assert norms[0][0] == 384 and -1.01 < norms[0][1] <= norms[0][2] < -0.99


# (query, SQL LIKE of the text of the record expected among the top 3)
FINDS = [
    ("zanzibarquux codename", "%codename of the release is zanzibarquux%"),
    ("how often to oil the bicycle chain", "Oil the chain every few hundred%"),
    ("watering greenhouse tomatoes", "The greenhouse tomatoes need watering%"),
    ("knit a scarf of merino wool", "Knit a scarf with the blue merino wool.%"),
]


# A made-up word deep inside a long answer is for the keywords: no vector finds it.
CASES = [(q, like, mode) for q, like in FINDS for mode in ("keyword", "vector", "hybrid")
         if not (mode == "vector" and "zanzibarquux" in q)]


@pytest.mark.parametrize("query,like,mode", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_the_same_query_finds_the_same_record_on_both_engines(
        both: Both, query: str, like: str, mode: str) -> None:
    want = {r[0] for r in sql(both.db, "SELECT uuid FROM records WHERE text LIKE ?", (like,))}
    assert len(want) == 1
    assert {r[0] for r in both.pg("SELECT uuid FROM records WHERE text LIKE %s", (like,))} == want
    sqlite_top = [h.uuid for h in both_sqlite_search(both, query, mode).hits[:3]]
    pg = both.search(query, mode=mode, limit=10)
    assert pg.vector_status == ("not used" if mode == "keyword" else "ok")
    assert want & set(sqlite_top), (mode, sqlite_top)
    assert want & {h.uuid for h in pg.hits[:3]}, (mode, [h.snippet[:60] for h in pg.hits[:3]])
    assert all(h.machine == "laptop" for h in pg.hits)


def both_sqlite_search(both: Both, query: str, mode: str) -> SearchResult:
    corpus = sqlite_search.Corpus(both.db, both.home, both.home, {}, both.embedder)
    result: SearchResult = corpus.search(query, mode=mode, limit=10)
    return result


def test_search_json_has_the_same_fields_on_both_engines_and_a_machine_on_postgres(
        both: Both) -> None:
    query = ("--mode", "hybrid", "-n", "5", "bicycle chain oil")
    lite, pg = both.cli("sqlite", *query), both.cli("postgresql", *query)
    assert set(pg) == set(lite) and pg["vector_status"] == lite["vector_status"] == "ok"
    assert lite["hits"] and pg["hits"]
    for hit in lite["hits"]:
        assert "machine" not in hit
    for hit in pg["hits"]:
        assert set(hit) == set(lite["hits"][0]) | {"machine"} and hit["machine"] == "laptop"
        assert set(hit["scores"]) <= {"bm25_rank", "bm25", "bm25_match", "vector_rank", "cosine"}
    assert pg["hits"][0]["uuid"] == lite["hits"][0]["uuid"]
    plain = deja(both.home, "--db", both.url, "search", "bicycle chain", "--format", "plain",
                 "--mode", "keyword").stdout
    assert "on laptop" in plain.splitlines()[0]


def _pg_expected(both: Both, where: str) -> set[str]:
    return {r[0] for r in both.pg(
        "SELECT DISTINCT r.uuid FROM records r JOIN sources s ON s.id = r.source_id "
        "WHERE r.embed_state = 1 AND EXISTS (SELECT 1 FROM chunks c WHERE c.record_id = r.id) "
        f"AND {where}")}


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
@pytest.mark.parametrize("label,kwargs,where", sqlite_search.FILTERS,
                         ids=[f[0] for f in sqlite_search.FILTERS])
def test_filters_return_every_match_up_to_the_limit(both: Both, mode: str, label: str,
                                                    kwargs: dict[str, Any], where: str) -> None:
    expected = _pg_expected(both, where)
    assert len(expected) >= 3, label
    for limit in (len(expected) + 5, 2):
        got = [h.uuid for h in both.search(sqlite_search.QUERY, mode=mode, limit=limit,
                                           **kwargs).hits]
        assert len(got) == len(set(got)) and set(got) <= expected, label
        assert len(got) == min(limit, len(expected)), (label, mode, limit, len(got))


def test_filters_through_the_cli(both: Both) -> None:
    out = both.cli("postgresql", "--mode", "vector", "--kind", "thinking", "-n", "50",
                   sqlite_search.QUERY)
    assert {h["uuid"] for h in out["hits"]} == _pg_expected(both, "r.kind = 'thinking'")
    out = both.cli("postgresql", "--mode", "keyword", "--project", "/home/bench/rare",
                   "--since", "2026-03-01", "-n", "50", "tomato")
    assert out["hits"] and all(h["project"].startswith("/home/bench/rare") for h in out["hits"])


HOSTILE = ['"unbalanced quote', 'a:b c::d :', "foo & bar | !baz", "((((", ")) or ((",
           "'; DROP TABLE records; --", "\\", "-", "!", "<->", "*", "tomato*", '"" "',
           "NOT AND OR", "a\x00b", "%s %(x)s {0}", "a <-> b & !(c | d)", "\ud800 lone"]


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_hostile_query_strings_do_not_raise(both: Both, mode: str) -> None:
    for query in HOSTILE:
        result = both.search(query, mode=mode, limit=5)
        assert isinstance(result.hits, list), query
    # The words of a hostile string still count: tomato among the operators.
    assert both.search("tomato & | ! (", mode="keyword").hits
    assert both.pg("SELECT COUNT(*) FROM records")[0][0] > 400  # nothing was dropped


def test_hostile_query_through_the_cli(both: Both) -> None:
    out = both.cli("postgresql", "--mode", "keyword", 'greenhouse: "tomatoes & (water | !')
    assert out["hits"]


def test_or_fallback_when_all_words_find_nothing(both: Both) -> None:
    result = both.search("tomatoes xylophonequartz", mode="keyword", limit=5)
    assert result.hits and all("tomato" in h.snippet.lower() for h in result.hits)


def test_another_model_is_refused_until_reembed(postgres_server: PgServer, postgres_url: str,
                                                home: Path) -> None:
    deja_json(home, "--db", postgres_url, "ingest", "--root", str(SAMPLE), "--json",
              "--no-embed")
    name = postgres_url.split("/")[3].split("?")[0]
    with postgres_server.connect(name) as conn:
        conn.execute("INSERT INTO embedding_model (id, model_id, dim) VALUES (1, 'other/m', 384)")
    proc = deja(home, "--db", postgres_url, "embed", "--json", expect=1)
    assert "other/m" in proc.stderr and "deja reembed" in proc.stderr
    assert "Traceback" not in proc.stderr
    out = deja_json(home, "--db", postgres_url, "reembed", "--json")
    assert out["embedded"] > 0 and out["pending_embeddings"] == 0
    with postgres_server.connect(name) as conn:
        assert conn.execute("SELECT model_id FROM embedding_model").fetchone()[0] != "other/m"
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] > 0


# What schema versions 6 (the batches' own index: its trigger for a changed text), 5
# (sessions' key and machine), 4 (ingest/pg/search_schema.py) and 3 add, undone: a version
# 2 database.
UNDO_V5_V3 = """
DROP TRIGGER records_index_update ON records;
DROP INDEX sessions_project_key;
ALTER TABLE sessions DROP COLUMN project_key, DROP COLUMN machine;
DROP TABLE passages;
DROP TRIGGER records_index ON records;
DROP TRIGGER records_passages ON records;
DROP TRIGGER records_passages_update ON records;
DROP FUNCTION deja_index_record, deja_index_passages, deja_passage_spans, deja_cut,
    deja_next_start, deja_context, deja_tsv_len, deja_tsv, deja_words;
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

def _keyword(both: Both, query: str, context: float) -> tuple[list[tuple[int, float]],
                                                               dict[int, int]]:
    """keyword_ranks_pg itself: (record id, score) best first, and the passages' starts."""
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg.keyword import keyword_ranks_pg

    async def go() -> tuple[list[tuple[int, float]], dict[int, int]]:
        store = await PgStore.open(PostgresUrl(both.url), "test", {}, create=False)
        starts: dict[int, int] = {}
        try:
            ranked = await keyword_ranks_pg(store.conn, query, SearchFilters(), 10, context,
                                            starts=starts)
        finally:
            await store.close()
        return ranked, starts

    return anyio.run(go)


def test_stemmed_words_match_as_on_sqlite(both: Both) -> None:
    pg = both.search("refuelling", mode="keyword").hits
    lite = both_sqlite_search(both, "refuelling", "keyword").hits
    assert len(pg) == 1 and "refuel" in pg[0].snippet.lower()
    assert [h.uuid for h in pg] == [h.uuid for h in lite]
    # Every word is indexed, stopwords too (FTS5 keeps them): "the" alone finds records.
    assert both.search("the", mode="keyword", limit=3).hits


def test_a_match_deep_inside_a_long_record_is_found_by_its_passage(both: Both) -> None:
    from ingest.indexing import passage_spans

    hits = both.search("zanzibarquux", mode="keyword").hits
    assert len(hits) == 1 and "[zanzibarquux]" in hits[0].snippet
    assert hits[0].snippet.startswith("…")  # a window around the passage, not the start
    (rid, text), = both.pg("SELECT id, text FROM records WHERE text LIKE '%%zanzibarquux%%'")
    starts = [r[0] for r in both.pg("SELECT start FROM passages WHERE record_id = %s "
                                    "ORDER BY start", (rid,))]
    assert len(starts) > 5 and starts == [s for s, _ in passage_spans(text)]
    ranked, where = _keyword(both, "zanzibarquux", 0.0)
    assert ranked[0][0] == rid and text[where[rid]:].find("zanzibarquux") < 600


def test_a_prefix_query_matches_longer_words(both: Both) -> None:
    assert not both.search("zanzibar", mode="keyword").hits
    hits = both.search("zanzibar*", mode="keyword").hits
    assert len(hits) == 1 and "zanzibarquux" in hits[0].snippet


def test_the_previous_prompt_counts_in_hybrid_only(both: Both) -> None:
    """"bicycle" is only in the prompt before the reply that says "kilometres": the reply
    matches both words through its context (SQLite's context column), at a low weight."""
    (reply,), = both.pg("SELECT id FROM records WHERE text LIKE 'Oil the chain every few%%'")
    with_context, _ = _keyword(both, "bicycle kilometres", 0.25)
    own_words, _ = _keyword(both, "bicycle kilometres", 0.0)
    assert with_context[0][0] == reply
    assert dict(own_words).get(reply, 0.0) < with_context[0][1]


def test_a_changed_or_deleted_record_is_indexed_again(postgres_server: PgServer,
                                                      postgres_url: str, home: Path) -> None:
    deja_json(home, "--db", postgres_url, "ingest", "--root", str(SAMPLE), "--json",
              "--no-embed")
    name = postgres_url.split("/")[3].split("?")[0]
    long_text = "quixotic walrus census. " + "Filler sentence number two. " * 120
    with postgres_server.connect(name) as conn:
        rid = conn.execute("SELECT MIN(id) FROM records").fetchone()[0]
        conn.execute("UPDATE records SET text = %s WHERE id = %s", (long_text, rid))
        assert conn.execute("SELECT COUNT(*) FROM passages WHERE record_id = %s",
                            (rid,)).fetchone()[0] > 3
        assert conn.execute("SELECT COUNT(*) FROM records WHERE search_tsv IS NULL"
                            ).fetchone()[0] == 0
    hits = deja_json(home, "--db", postgres_url, "search", "--json", "--mode", "keyword",
                     "walruses census")["hits"]
    assert len(hits) == 1
    with postgres_server.connect(name) as conn:
        conn.execute("DELETE FROM records WHERE id = %s", (rid,))
        assert conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0] == \
            conn.execute("SELECT COUNT(*) FROM passages p JOIN records r ON r.id = p.record_id"
                         ).fetchone()[0]


# ---------------------------------------------------------------- an HNSW index on the chunks

@pytest.fixture
def hnsw(both: Both) -> Iterator[Both]:
    """The module's database with pgvector's HNSW index for the test's length."""
    name = both.url.split("/")[3].split("?")[0]
    with both.server.connect(name) as conn:
        conn.execute("CREATE INDEX chunks_vec_hnsw ON chunks USING hnsw (vec vector_cosine_ops)")
    try:
        yield both
    finally:
        with both.server.connect(name) as conn:
            conn.execute("DROP INDEX chunks_vec_hnsw")


def test_filters_return_every_match_with_an_hnsw_index(hnsw: Both) -> None:
    """HNSW filters after its scan (pgvector 0.6): a filtered query scans exactly."""
    for label, kwargs, where in sqlite_search.FILTERS:
        expected = _pg_expected(hnsw, where)
        got = [h.uuid for h in hnsw.search(sqlite_search.QUERY, mode="vector",
                                           limit=len(expected) + 5, **kwargs).hits]
        assert set(got) == expected, label


def test_an_unfiltered_query_uses_the_hnsw_index_and_agrees_with_the_exact_scan(
        hnsw: Both) -> None:
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg import vector as pgv

    qvec = hnsw.embedder.embed([sqlite_search.QUERY])[0]

    async def go() -> tuple[list[Any], list[Any], str]:
        store = await PgStore.open(PostgresUrl(hnsw.url), "test", {}, create=False)
        try:
            exact = await pgv.vector_ranks_pg(store.conn, qvec, SearchFilters(), 20,
                                              use_hnsw=False)
            auto = await pgv.vector_ranks_pg(store.conn, qvec, SearchFilters(), 20)
            from ingest.pg.vectors import vector_literal
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
