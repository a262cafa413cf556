"""Search end to end on both engines: filters, limits, budgets, the JSON contract, degraded modes.

Every test that is about what a search answers runs on SQLite and on
PostgreSQL (the `engine` fixture): the same body, the library search of the
engine (`mcp_server.search.search`, or `search_pg` on PostgreSQL) through
fixtures/search_corpus.py's `Corpus.search`, the CLI with `--db TARGET`.
PostgreSQL's hits also carry the machine they came from.

One generated corpus (plus tests/sample) is ingested and embedded with the
real model once per run per engine (fixtures/search_corpus.py; shared with
test_postgres_search.py). It is built so that filters exclude most of it:
~500 records of one project talk about databases, and a handful of records
(another project, another session, a rare kind, a rare tool, an old time
range) talk about something else entirely. An index that runs its KNN
before an outer WHERE (vec0, pgvector's HNSW) would find none of the rare
records for a database question; the engine must return every matching
record, up to the limit. Counts are checked against brute-force SQL.

The CLI runs as a subprocess (`deja search ... --json`) where the process
boundary matters (exit codes, stderr, the JSON on stdout); the library
everywhere else, for speed. SQLite-only tests: the in-memory vector index,
FTS5's OR pruning, the read connections' page cache.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fixtures.cli import deja, deja_json
from fixtures.embedders import FixedEmbedder
from fixtures.engines import Target, is_postgres
from fixtures.paths import SAMPLE
from fixtures.search_corpus import (
    CJK_SAMPLES,
    MACHINE,
    QUERY,
    Corpus,
    SearchCorpora,
    run_search,
    search_embedder,
)
from fixtures.transcripts import SessionFile

from ingest.db import connect, make_connector
from ingest.embed import DEFAULT_MODEL, Embedder
from ingest.errors import InvalidQuery
from ingest.quantize import bits_rows, int8_rows
from ingest.store import Store
from mcp_server.search import FUSION, Resources, SearchFilters, SearchRequest, VectorIndex, search
from mcp_server.search.snippets import SNIPPET_CHARS

__all__ = ["QUERY", "FILTERS"]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return search_embedder()  # type: ignore[no-any-return]


@pytest.fixture
def corpus(engine: str, search_corpora: SearchCorpora, request: pytest.FixtureRequest) -> Corpus:
    """The run's corpus on the test's engine (ingested on first use; searches only read it)."""
    server = request.getfixturevalue("postgres_server") if engine == "postgres" else None
    return search_corpora.get(engine, server)


@pytest.fixture
def sqlite_corpus(search_corpora: SearchCorpora) -> Corpus:
    """The corpus on SQLite, for the tests of SQLite's own machinery."""
    return search_corpora.get("sqlite")


# -- filters never starve: every matching record comes back, up to the limit ------------------

# (label, search kwargs, SQL over records r joined to sources s selecting the matching ids)
FILTERS = [
    ("project folder", {"project": "-home-bench-rare"}, "s.project_dir = '-home-bench-rare'"),
    ("project path covers subfolder cwd", {"project": "/home/bench/rare"},
     "s.project_dir IN ('-home-bench-rare', '-home-bench-rare-pkg')"),
    ("project path of the subfolder", {"project": "/home/bench/rare/pkg"},
     "s.project_dir = '-home-bench-rare-pkg'"),
    ("session", {"session_id": "raresess-0000-0000-0000-000000000000"},
     "r.session_id = 'raresess-0000-0000-0000-000000000000'"),
    ("session in all projects", {"session_id": "raresess-0000-0000-0000-000000000000",
                                 "project": "all"},
     "r.session_id = 'raresess-0000-0000-0000-000000000000'"),
    ("kind", {"kinds": ["thinking"]}, "r.kind = 'thinking'"),
    ("several kinds", {"kinds": ["thinking", "compact_summary", "summary"]},
     "r.kind IN ('thinking', 'compact_summary', 'summary')"),
    ("several kinds and a project", {"kinds": ["prompt", "assistant"],
                                     "project": "-home-bench-rare-pkg"},
     "r.kind IN ('prompt', 'assistant') AND s.project_dir = '-home-bench-rare-pkg'"),
    ("tool", {"tool": "WebFetch"}, "r.tool_name = 'WebFetch'"),
    ("tool and kind", {"tool": "WebFetch", "kinds": ["tool_result"]},
     "r.tool_name = 'WebFetch' AND r.kind = 'tool_result'"),
    ("time range", {"since": "2025-06-01", "until": "2025-07-01"},
     "r.ts >= '2025-06-01' AND r.ts < '2025-07-01'"),
    ("time range and project", {"since": "2025-06-01", "until": "2025-07-01",
                                "project": "/home/bench/bulk"},
     "r.ts >= '2025-06-01' AND r.ts < '2025-07-01' AND s.project_dir = '-home-bench-bulk'"),
]


def _expected(corpus: Corpus, where: str) -> set[str]:
    """uuids of the embedded records matching `where`: the ones vector search can find."""
    rows = corpus.sql(
        "SELECT DISTINCT r.uuid FROM records r JOIN sources s ON s.id = r.source_id "
        f"WHERE r.embed_state = 1 AND EXISTS (SELECT 1 FROM chunks c WHERE c.record_id = r.id) "
        f"AND {where}")
    return {r[0] for r in rows}


def test_the_rare_records_are_far_outside_the_unfiltered_top(corpus: Corpus) -> None:
    """The premise: an unfiltered KNN over the query's neighbours finds none of them."""
    hits = corpus.search(QUERY, mode="vector", limit=200).hits
    rare = _expected(corpus, "s.project_dir IN ('-home-bench-rare', '-home-bench-rare-pkg') "
                             "OR r.kind = 'thinking' OR r.tool_name = 'WebFetch' "
                             "OR r.session_id LIKE 'raresess%' OR r.ts < '2026'")
    assert len(rare) >= 25
    top = {h.uuid for h in hits[:100]}
    assert not top & rare
    total = corpus.sql("SELECT COUNT(*) FROM records WHERE embed_state = 1")[0][0]
    assert len(rare) / total < 0.07  # and each filter below keeps 1 to 2% of the corpus


@pytest.mark.parametrize("path", ["sql", "index"])
@pytest.mark.parametrize("mode", ["vector", "hybrid"])
@pytest.mark.parametrize("label,kwargs,where", FILTERS, ids=[f[0] for f in FILTERS])
def test_filtered_query_returns_every_match_up_to_the_limit(
        corpus: Corpus, mode: str, label: str, kwargs: dict[str, Any], where: str,
        path: str) -> None:
    """Through the exact scan and the engine's index (SQLite's in-memory sign bits,
    PostgreSQL's HNSW, which filters after its scan), with a coarse step and a
    candidate count far smaller than the corpus, so that the candidates must grow."""
    expected = _expected(corpus, where)
    assert len(expected) >= 3, f"{label}: the corpus should have a few matches"
    for limit in (len(expected) + 5, 2):
        result = corpus.search(QUERY, mode=mode, limit=limit, indexed=path == "index",
                               fusion={"coarse": 10, "candidates": 20}, **kwargs)
        assert result.vector_status == "ok"
        got = [h.uuid for h in result.hits]
        assert len(got) == len(set(got))
        assert set(got) <= expected, f"{label}: hits outside the filter"
        assert len(got) == min(limit, len(expected)), (
            f"{label} ({mode}, limit {limit}): {len(got)} hits, {len(expected)} exist")


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
def test_a_query_finds_its_record_among_the_top_three(corpus: Corpus, query: str, like: str,
                                                      mode: str) -> None:
    want = {r[0] for r in corpus.sql("SELECT uuid FROM records WHERE text LIKE ?", (like,))}
    assert len(want) == 1
    result = corpus.search(query, mode=mode, limit=10)
    assert result.vector_status == ("not used" if mode == "keyword" else "ok")
    assert want & {h.uuid for h in result.hits[:3]}, [h.snippet[:60] for h in result.hits[:3]]
    assert {h.machine for h in result.hits} == {MACHINE if corpus.on_postgres else None}


def test_filtered_keyword_query_finds_every_match(corpus: Corpus) -> None:
    rows = corpus.sql("SELECT uuid FROM records WHERE text LIKE '%tomato%'")
    # The record after a match matches through its context column, below the
    # records holding the word themselves.
    after = corpus.sql(
        "SELECT n.uuid FROM records r JOIN records n ON n.source_id = r.source_id AND n.id = "
        "(SELECT MIN(id) FROM records x WHERE x.source_id = r.source_id AND x.id > r.id) "
        "WHERE r.text LIKE '%tomato%'")
    result = corpus.search("tomato", mode="keyword", limit=50, project="/home/bench/rare")
    got = [h.uuid for h in result.hits]
    direct = {r[0] for r in rows}
    assert set(got[:len(direct)]) == direct
    assert set(got[len(direct):]) <= {r[0] for r in after} - direct
    assert all("tomato" in h.snippet.lower() for h in result.hits[:len(direct)])


def test_filters_through_the_cli_match_the_library(corpus: Corpus) -> None:
    expected = _expected(corpus, "r.tool_name = 'WebFetch' AND r.kind IN ('tool_call', 'tool_result')")
    out = corpus.cli("search", QUERY, "--json", "--tool", "WebFetch", "--kind", "tool_call",
                     "--kind", "tool_result", "--limit", "50")
    assert out["vector_status"] == "ok"
    assert {h["uuid"] for h in out["hits"]} == expected
    out = corpus.cli("search", QUERY, "--json", "--project", "/home/bench/rare", "--session",
                     "rarepb00-0000-0000-0000-000000000000")
    assert {h["uuid"] for h in out["hits"]} == _expected(
        corpus, "r.session_id = 'rarepb00-0000-0000-0000-000000000000'")
    assert {h["project"] for h in out["hits"]} == {"/home/bench/rare/pkg"}


def _many_chunks(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, list[np.ndarray]]]]:
    """The query vector, and (record number, source 1 or 2, its chunks' unit vectors):
    2,000 one-chunk records in one project; 220 twelve-chunk records in another.

    The chunks of a long record lie close together, as the windows of one
    long answer do; the big project sits near the query, the long records
    farther away.
    """
    query = rng.normal(size=384).astype(np.float32)
    query /= np.linalg.norm(query)
    records = []
    rid = 0
    for source, n_records, n_chunks in ((1, 2000, 1), (2, 220, 12)):
        for _ in range(n_records):
            rid += 1
            center = query * (0.8 if source == 1 else 0.1) + rng.normal(size=384) * 0.05
            vectors = []
            for _ in range(n_chunks):
                v = (center + rng.normal(size=384) * 0.002).astype(np.float32)
                vectors.append(v / np.linalg.norm(v))
            records.append((rid, source, vectors))
    return query, records


def _many_chunk_db(target: Target, rng: np.random.Generator) -> np.ndarray:
    """_many_chunks' records in a new database on either engine; returns the query vector.

    Vectors straight into the schema (the plumbing, not the model, is under
    test): SQLite's sign bits and int8 copy, PostgreSQL's `vector` column.
    """
    query, records = _many_chunks(rng)
    if is_postgres(target):
        _many_chunks_pg(str(target), records)
        return query

    async def create() -> None:
        await (await Store.open(Path(target))).close()

    anyio.run(create)
    conn = make_connector(Path(target))()
    try:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO embedding_model VALUES (1, ?, 384, '2026-01-01')", (DEFAULT_MODEL,))
        conn.execute("INSERT INTO sources (id, path, display_path, project_dir, layout) VALUES "
                     "(1, x'61', 'a', '-p-big', 'session'), (2, x'62', 'b', '-p-long', 'session')")
        cid = 0
        for rid, source, vectors in records:
            conn.execute(
                "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, "
                "text, text_len, ts, embed_state) VALUES (?, ?, ?, 0, ?, 's', 'assistant', ?, "
                "10, '2026-01-01T00:00:00.000Z', 1)",
                (rid, source, f"k{rid}", f"u{rid}", f"record {rid}"))
            for seq, v in enumerate(vectors):
                cid += 1
                conn.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 10, ?)",
                             (cid, rid, seq, bits_rows(v)[0]))
                conn.execute("INSERT INTO chunk_vectors VALUES (?, ?)", (cid, int8_rows(v)[0]))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return query


def _many_chunks_pg(url: str, records: list[tuple[int, int, list[np.ndarray]]]) -> None:
    import psycopg

    from ingest.config import PostgresUrl
    from ingest.pg.store import PgStore
    from ingest.pg.vector_text import vector_literal

    async def create() -> None:
        await (await PgStore.open(PostgresUrl(url), MACHINE, {})).close()

    anyio.run(create)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO embedding_model (id, model_id, dim) VALUES (1, %s, 384)",
                     (DEFAULT_MODEL,))
        sources = {n: conn.execute(
            "INSERT INTO sources (machine, path, display_path, project_dir, layout) "
            "VALUES (%s, %s, %s, %s, 'session') RETURNING id",
            (MACHINE, name.encode(), name, project)).fetchone()[0]  # type: ignore[index]
            for n, name, project in ((1, "a", "-p-big"), (2, "b", "-p-long"))}
        with conn.cursor().copy(
                "COPY records (machine, source_id, line_key, part, uuid, session_id, kind, text, "
                "text_len, ts, embed_state) FROM STDIN") as copy:
            for rid, source, _ in records:
                copy.write_row((MACHINE, sources[source], f"k{rid}", 0, f"u{rid}", "s",
                                "assistant", f"record {rid}", 10, "2026-01-01T00:00:00.000Z", 1))
        ids = dict(conn.execute("SELECT uuid, id FROM records").fetchall())
        with conn.cursor().copy("COPY chunks (record_id, seq, char_start, char_end, vec) "
                                "FROM STDIN") as copy:
            for rid, _, vectors in records:
                for seq, v in enumerate(vectors):
                    copy.write_row((ids[f"u{rid}"], seq, 0, 10, vector_literal(v)))


@pytest.fixture(scope="module")
def many_chunk_dbs() -> dict[str, tuple[Target, np.ndarray]]:
    """Each engine's _many_chunk_db and its query vector, made on first use."""
    return {}


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_records_with_many_chunks_do_not_starve_a_filtered_query(
        engine: str, mode: str, many_chunk_dbs: dict[str, tuple[Target, np.ndarray]],
        request: pytest.FixtureRequest) -> None:
    if engine not in many_chunk_dbs:  # one database for both modes: the search only reads
        db: Target = request.getfixturevalue("db_target")
        many_chunk_dbs[engine] = db, _many_chunk_db(db, np.random.default_rng(3))
    target, query = many_chunk_dbs[engine]
    result = anyio.run(lambda: run_search(target, SearchRequest(
        "nothing matches this by keyword", mode=mode, limit=200, project="-p-long"),
        FixedEmbedder(query)))
    assert result.vector_status == "ok"
    assert len(result.hits) == 200  # of 220 matching records


def test_the_in_memory_index_starts_empty_and_grows(tmp_path: Path) -> None:
    """A server starts on a database without vectors: its index is ready and empty,
    then takes the first chunks written."""
    db = tmp_path / "empty.db"
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)

    async def go() -> tuple[int, int, int, list[int]]:
        store = await Store.open(db)
        index = VectorIndex()
        try:
            first = await index.refresh(store.conn)
            empty = len(index) if index.ready else -1
            await store.conn.execute(
                "INSERT INTO sources (id, path, display_path, project_dir, layout) "
                "VALUES (1, x'61', 'a', '-p', 'session')")
            await store.conn.execute(
                "INSERT INTO records (id, source_id, line_key, part, kind, text, text_len) "
                "VALUES (7, 1, 'k', 0, 'assistant', 'x', 1)")
            await store.conn.execute("INSERT INTO chunks VALUES (70, 7, 0, 0, 1, ?)",
                                     (bits_rows(vector)[0],))
            await store.conn.commit()
            added = await index.refresh(store.conn)
            ids, _ = index.candidates(bits_rows(vector)[0], SearchFilters(), 10)
            return first, empty, added, ids
        finally:
            await store.close()

    assert anyio.run(go) == (0, 0, 1, [70])


def test_the_in_memory_index_follows_new_deleted_and_reembedded_chunks(tmp_path: Path) -> None:
    """The server's index: chunks added after its last refresh are found (the SQL
    tail), deleted ones never come back, and deletions or a new model generation
    make the next refresh reload everything."""
    db = tmp_path / "index.db"
    query = _many_chunk_db(db, np.random.default_rng(5))
    n_chunks = 2000 + 220 * 12

    def add_record(conn: Any, rid: int, vector: np.ndarray) -> None:
        conn.execute("INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, "
                     "text, text_len, ts, embed_state) VALUES (?, 1, ?, 0, ?, 's', 'assistant', "
                     "'new', 3, '2026-02-01T00:00:00.000Z', 1)", (rid, f"k{rid}", f"u{rid}"))
        conn.execute("INSERT INTO chunks VALUES (?, ?, 0, 0, 3, ?)", (rid + 100_000, rid,
                                                                     bits_rows(vector)[0]))
        conn.execute("INSERT INTO chunk_vectors VALUES (?, ?)", (rid + 100_000, int8_rows(vector)[0]))

    async def go() -> dict[str, Any]:
        store = await Store.open(db)
        second = await connect(db)
        index = VectorIndex()
        out: dict[str, Any] = {}

        async def top(**filters: Any) -> list[str]:
            result = await search(
                store.conn, SearchRequest("no keyword match", mode="vector", limit=3, **filters),
                Resources(embedder=FixedEmbedder(query),  # type: ignore[arg-type]
                          vector_index=index, vector_conn=second),
                fusion=dataclasses.replace(FUSION, coarse=10_000))
            return [h.uuid for h in result.hits]

        try:
            out["loaded"] = await index.refresh(second)
            out["before"] = await top()
            # A record written after the refresh, nearer the query than any other.
            raw = make_connector(db)()
            add_record(raw, 9001, query)
            raw.commit()
            out["tail"] = await top()
            out["tail_project"] = await top(project="-p-big")
            out["incremental"] = await index.refresh(second)
            out["after_refresh"] = await top()
            # Deleted: gone at once (the exact step reads the database), reloaded on refresh.
            raw.execute("DELETE FROM records WHERE id = 9001")
            raw.commit()
            out["deleted"] = await top()
            out["reloaded"] = await index.refresh(second)
            # Re-embedded under a new generation, reusing chunk ids: reloaded too.
            raw.execute("UPDATE embedding_model SET created_at = '2026-09-09'")
            raw.commit()
            out["regenerated"] = await index.refresh(second)
            out["idle"] = await index.refresh(second)
            raw.close()
            return out
        finally:
            await store.close()
            await second.close()

    out = anyio.run(go)
    assert out["loaded"] == n_chunks
    assert out["tail"][0] == "u9001" and out["tail"][1:] == out["before"][:2]
    assert out["tail_project"][0] == "u9001"
    assert out["incremental"] == 1 and out["after_refresh"][0] == "u9001"
    assert out["deleted"] == out["before"]
    assert out["reloaded"] == n_chunks and out["regenerated"] == n_chunks
    assert out["idle"] == 0

# -- project, time and other filter forms -----------------------------------------------------


def test_project_all_and_unknown(corpus: Corpus) -> None:
    everything = corpus.search("chronomarker OR tomato OR redis", mode="keyword", limit=50)
    assert {h.project for h in everything.hits} >= {"/home/bench/timeline", "/home/bench/rare",
                                                    "/home/demo/shop-api"}
    assert corpus.search("tomato", mode="keyword", project="all").hits
    assert corpus.search("tomato", mode="keyword", project="-home-bench-rare").hits
    assert not corpus.search("tomato", mode="keyword", project="-home-bench-bulk").hits
    unknown = corpus.search("tomato", project="/home/nobody/nothing")
    assert unknown.hits == []


def test_project_as_an_absolute_path_of_an_existing_folder(corpus: Corpus) -> None:
    real = corpus.info["real_project"]
    out = corpus.cli("search", "walrus inventory", "--json", "--project", str(real))
    assert len(out["hits"]) == 2 and {h["project"] for h in out["hits"]} == {str(real)}


def test_project_dot_means_the_current_folder(corpus: Corpus) -> None:
    real = corpus.info["real_project"]
    for cwd in (real, real / "src"):
        proc = deja(corpus.home, "--db", corpus.db, "search", "walrus inventory",
                    "--json", "--mode", "keyword", "--project", ".", cwd=cwd, expect=None)
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["hits"]) == 2, cwd


def test_project_given_as_a_subfolder_of_its_cwd(corpus: Corpus) -> None:
    result = corpus.search("tomato", mode="keyword", project="/home/bench/rare/src/lib")
    assert {h.project for h in result.hits} == {"/home/bench/rare"}


@pytest.mark.parametrize("since,until,labels", [
    ("7d", None, {"3d", "1h"}),
    ("2w", None, {"10d", "3d", "1h"}),
    ("yesterday", None, {"1h"}),
    ("30d", "7d", {"20d", "10d"}),
    ("2w", "yesterday", {"10d", "3d"}),
    ("25 days ago", "9d", {"20d", "10d"}),
    (None, "30d", {"40d"}),
])
def test_relative_time_filters(corpus: Corpus, since: str | None, until: str | None,
                               labels: set[str]) -> None:
    for mode in ("keyword", "hybrid"):
        result = corpus.search("chronomarker", mode=mode, limit=20, since=since, until=until,
                               project="/home/bench/timeline")
        want = {corpus.info["timeline"][label] for label in labels}
        assert {h.uuid for h in result.hits} == want, (mode, since, until)


def test_iso_time_filters_include_since_and_exclude_until(corpus: Corpus) -> None:
    def uuids(**kw: Any) -> list[str]:
        r = corpus.search("fjords rain cabin ferry map", mode="keyword", limit=20,
                          session_id="oldsess0-0000-0000-0000-000000000000", **kw)
        return sorted(h.timestamp for h in r.hits)

    assert len(uuids()) == 5
    assert uuids(since="2025-06-15T10:02", until="2025-06-15T10:04:00Z") == [
        "2025-06-15T10:02:00.000Z", "2025-06-15T10:03:00.000Z"]
    assert uuids(since="2025-06-15T10:02:00+00:00") == [
        f"2025-06-15T10:0{m}:00.000Z" for m in (2, 3, 4)]
    assert uuids(until="2025-06-15") == []
    assert len(uuids(since="2025-06-15", until="2025-06-16")) == 5


def test_cli_relative_and_iso_dates(corpus: Corpus) -> None:
    out = corpus.cli("search", "chronomarker", "--json", "--since", "2w", "--until", "yesterday")
    want = {corpus.info["timeline"][k] for k in ("10d", "3d")}
    assert {h["uuid"] for h in out["hits"]} == want
    out = corpus.cli("search", "fjords", "--json", "--mode", "keyword", "--since", "2025-06-01",
                     "--until", "2025-07-01")
    assert out["hits"] and all(h["timestamp"].startswith("2025-06-15") for h in out["hits"])


@pytest.mark.parametrize("args,message", [
    (["--since", "last tuesday"], "cannot read the time"),
    (["--until", "2026-13-45"], "cannot read the time"),
    (["--kind", "bogus"], "unknown kind"),
    (["--limit", "0"], "limit"),
    (["--limit", "100000"], "limit"),
    (["--max-tokens", "5"], "max_tokens"),
])
def test_bad_values_are_clear_errors(corpus: Corpus, args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """In-process for speed (keyword mode loads no model); exit code 1, one line on stderr."""
    from mcp_server.cli import main

    code = main(["--db", corpus.db, "search", "tomato", "--json", "--mode", "keyword", *args])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("deja: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and out == ""


def test_bad_value_through_the_process_boundary(corpus: Corpus) -> None:
    proc = deja(corpus.home, "--db", corpus.db, "search", "tomato", "--json",
                "--since", "last tuesday", expect=None)
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("deja: ") and "cannot read the time 'last tuesday'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_values_raise_invalid_query_in_the_library(corpus: Corpus) -> None:
    for kw in ({"since": "soonish"}, {"kinds": ["nope"]}, {"limit": 0}, {"mode": "fuzzy"},
               {"max_tokens": 1}):
        with pytest.raises(InvalidQuery):
            corpus.search("tomato", **kw)


# -- bounded results: limit, budget, snippets, scores, handles --------------------------------


def test_limit_bounds_the_hits(corpus: Corpus) -> None:
    for limit in (1, 7, 40):
        assert len(corpus.search(QUERY, limit=limit).hits) == limit


def test_max_tokens_bounds_the_output_and_says_so(corpus: Corpus) -> None:
    full = corpus.search(QUERY, limit=40).to_dict()
    assert len(full["hits"]) == 40 and full["truncated_by_budget"] is False
    out = corpus.cli("search", QUERY, "--json", "--limit", "40", "--max-tokens", "300")
    assert out["truncated_by_budget"] is True
    assert 1 <= len(out["hits"]) < 40
    assert sum(len(h["snippet"]) for h in out["hits"]) / 4 <= 300
    # The budget keeps the best hits, in order.
    assert [h["uuid"] for h in out["hits"]] == [h["uuid"] for h in full["hits"][: len(out["hits"])]]


def test_hits_have_snippets_with_the_match_scores_and_handles(corpus: Corpus) -> None:
    out = corpus.cli("search", QUERY, "--json", "--limit", "20")
    hits = out["hits"]
    assert len(hits) == 20
    words = QUERY.split()
    both = 0
    for h in hits:
        scores = h["scores"]
        assert "bm25_rank" in scores or "vector_rank" in scores
        for key in ("bm25_rank", "vector_rank"):
            if key in scores:
                assert isinstance(scores[key], int) and scores[key] >= 1
        both += "bm25_rank" in scores and "vector_rank" in scores
        if scores.get("bm25_match") == "text":  # a word (maybe stemmed) matched: it shows
            assert any(w[:5] in h["snippet"].lower() for w in words), h["snippet"]
        elif "bm25_rank" in scores:  # matched through the record before it
            assert scores["bm25_match"] == "previous"
            before = corpus.sql("SELECT p.text FROM records r JOIN records p ON p.source_id = "
                                "r.source_id AND p.id < r.id WHERE r.id = ? ORDER BY p.id DESC "
                                "LIMIT 1", (h["record_id"],))
            assert any(w[:5] in before[0][0].lower() for w in words)
        assert h["handle"].startswith("rec:")
    assert both >= 5
    assert len({h["handle"] for h in hits}) == 20
    again = corpus.search(QUERY, limit=20)
    assert [h.handle for h in again.hits] == [h["handle"] for h in hits]


def test_snippet_shows_a_stemmed_match(corpus: Corpus) -> None:
    hits = corpus.search("refuelling", mode="keyword").hits
    assert len(hits) == 1
    assert "refuel" in hits[0].snippet.lower()
    # Every word is indexed, stopwords too (FTS5 keeps them): "the" alone finds records.
    assert len(corpus.search("the", mode="keyword", limit=3).hits) == 3


def test_a_prefix_query_matches_longer_words(corpus: Corpus) -> None:
    assert not corpus.search("zanzibar", mode="keyword").hits
    hits = corpus.search("zanzibar*", mode="keyword").hits
    assert len(hits) == 1 and "zanzibarquux" in hits[0].snippet


def test_or_fallback_when_all_words_find_nothing(corpus: Corpus) -> None:
    result = corpus.search("tomatoes xylophonequartz", mode="keyword", limit=5)
    assert result.hits and all("tomato" in h.snippet.lower() for h in result.hits)


def test_the_previous_prompt_counts_in_hybrid_only(corpus: Corpus) -> None:
    """"bicycle" is only in the prompt before the reply that says "kilometres": the reply
    matches both words through its context (the previous record's words), at a low weight;
    in keyword mode only through its own."""
    (reply,), = corpus.sql("SELECT id FROM records WHERE text LIKE 'Oil the chain every few%'")
    with_context = _keyword_ranks(corpus, "bicycle kilometres", 0.25)
    own_words = _keyword_ranks(corpus, "bicycle kilometres", 0.0)
    assert with_context[0][0] == reply
    assert dict(own_words).get(reply, 0.0) < with_context[0][1]
    hybrid = corpus.search("bicycle kilometres", mode="hybrid", limit=3).hits
    assert hybrid[0].id == reply and hybrid[0].scores["bm25_match"] == "text"


def _keyword_ranks(corpus: Corpus, query: str, context: float) -> list[tuple[int, float]]:
    """The engine's keyword ranker itself: (record id, score), best first."""
    async def go() -> list[tuple[int, float]]:
        if corpus.on_postgres:
            from ingest.config import PostgresUrl
            from ingest.pg.store import PgStore
            from mcp_server.search.pg.keyword import keyword_ranks_pg

            pg = await PgStore.open(PostgresUrl(corpus.db), MACHINE, {}, create=False)
            try:
                return await keyword_ranks_pg(pg.conn, query, SearchFilters(), 10, context)
            finally:
                await pg.close()
        from mcp_server.search.keyword import keyword_ranks

        async with await Store.open(Path(corpus.target)) as store:
            return await keyword_ranks(store.conn, query, SearchFilters(), 10, context)

    return anyio.run(go)


def test_snippet_shows_a_match_deep_inside_a_long_record(corpus: Corpus) -> None:
    hits = corpus.search("zanzibarquux", mode="keyword").hits
    assert len(hits) == 1
    assert "[zanzibarquux]" in hits[0].snippet
    # A window of the record (the word's brackets and two ellipses beside it), not all of it.
    assert hits[0].snippet.startswith("…") and len(hits[0].snippet) <= SNIPPET_CHARS + 4


def test_handle_names_the_hit(corpus: Corpus) -> None:
    from mcp_server.history import find_record

    hit = corpus.search("bicycle chain", limit=1).hits[0]

    async def go() -> Any:
        if corpus.on_postgres:
            from ingest.config import PostgresUrl
            from ingest.pg.store import PgStore

            pg = await PgStore.open(PostgresUrl(corpus.db), MACHINE, {}, create=False)
            try:
                return await find_record(pg.reads, hit.handle)  # type: ignore[arg-type]
            finally:
                await pg.close()
        async with await Store.open(Path(corpus.target)) as store:
            return await find_record(store.conn, hit.handle)

    row = anyio.run(go)
    assert row[0] == hit.id
    assert corpus.sql("SELECT uuid FROM records WHERE id = ?", (row[0],))[0][0] == hit.uuid


# A hit's keys in `deja search --json`; PostgreSQL's also say the machine.
HIT_KEYS = {"uuid", "session_id", "project", "kind", "timestamp", "snippet", "tool_name",
            "agent_id", "handle", "record_id", "score", "scores"}


def test_json_contract(corpus: Corpus) -> None:
    out = corpus.cli("search", "redis timeout", "--json")
    assert set(out) == {"query", "mode", "hits", "vector_status", "pending_embeddings", "notes",
                        "truncated_by_budget", "elapsed_ms"}
    assert isinstance(out["hits"], list) and out["hits"] and out["vector_status"] == "ok"
    for h in out["hits"]:
        assert set(h) == HIT_KEYS | ({"machine"} if corpus.on_postgres else set())
        assert h.get("machine", MACHINE) == MACHINE
        assert set(h["scores"]) <= {"bm25_rank", "bm25", "bm25_match", "vector_rank", "cosine"}
        assert isinstance(h["snippet"], str) and h["snippet"]
        assert isinstance(h["uuid"], str) and isinstance(h["session_id"], str)
        datetime.fromisoformat(h["timestamp"].replace("Z", "+00:00"))
    top = out["hits"][0]
    assert top["project"] == "/home/demo/shop-api"
    assert top["session_id"] == "7d5c2a4e-1f0b-4c1e-9a51-3b7e2f9d6c10"
    for key in ("vector_status", "notes", "pending_embeddings", "truncated_by_budget"):
        assert key in out
    # Without --json, piped: the plain view, no JSON; a hit's line ends with its machine.
    proc = deja(corpus.home, "--db", corpus.db, "search", "redis timeout", expect=None)
    assert proc.returncode == 0 and "redis" in proc.stdout.lower()
    assert not proc.stdout.lstrip().startswith("{")
    assert proc.stdout.splitlines()[0].endswith(f"  on {MACHINE}") == corpus.on_postgres


# -- degraded: no vectors yet, no model ------------------------------------------------------


def test_without_vectors_search_answers_from_keywords_and_says_so(db_target: Target,
                                                                  home: Path) -> None:
    db = str(db_target)
    out = deja_json(home, "--db", db, "ingest", "--root", str(SAMPLE), "--no-embed", "--json")
    assert out["pending_embeddings"] > 0
    for mode in ("hybrid", "vector"):
        res = deja_json(home, "--db", db, "search", "redis timeout", "--json", "--mode", mode)
        assert res["hits"] and "redis" in res["hits"][0]["snippet"].lower()
        assert res["mode"] == mode
        assert res["vector_status"] != "ok" and "embed" in res["vector_status"]
        assert any("keyword" in n for n in res["notes"])
        assert res["pending_embeddings"] == out["pending_embeddings"]
        assert all("vector_rank" not in h["scores"] for h in res["hits"])


def test_records_awaiting_their_vectors_are_counted_and_found(corpus: Corpus,
                                                              tmp_path: Path) -> None:
    """Embedded, then more transcripts arrive unembedded: hits say how many wait, and a
    waiting record that matches every word stays in the hybrid top."""
    import shutil

    copy = corpus.copy(tmp_path)
    extra = tmp_path / "more"
    f = SessionFile(extra, "-home-demo-more", "more0000-0000-0000-0000-000000000000",
                    "/home/demo/more", datetime(2026, 5, 1, tzinfo=timezone.utc))
    f.prompt("redis cluster failover drill")
    f.prompt("The staging database migration stayed locked by the zebra batch job.")
    f.save()
    deja_json(copy.home, "--db", copy.db, "ingest", "--root", str(extra), "--no-embed", "--json")
    shutil.rmtree(extra)
    res = copy.cli("search", "redis failover", "--json")
    assert res["vector_status"] == "ok" and res["pending_embeddings"] == 2
    assert any("await" in n for n in res["notes"])
    assert any(h["scores"].get("vector_rank") for h in res["hits"])
    keyword = copy.search("redis failover", mode="keyword")
    assert keyword.hits[0].session_id == "more0000-0000-0000-0000-000000000000"
    hits = copy.search("zebra database migration locked", limit=10).hits
    assert "more0000-0000-0000-0000-000000000000" in {h.session_id for h in hits}


def test_model_that_cannot_load_falls_back_to_keywords(corpus: Corpus) -> None:
    env = {"DEJA_EMBED_MODEL": "/nonexistent/path"}
    for mode in ("hybrid", "vector"):
        proc = deja(corpus.home, "--db", corpus.db, "search", "tomato", "--json",
                    "--mode", mode, env=env, expect=None)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        out = json.loads(proc.stdout)
        assert out["hits"] and "tomato" in out["hits"][0]["snippet"].lower()
        assert all("tomato" in h["snippet"].lower() if h["scores"]["bm25_match"] == "text"
                   else mode == "hybrid" for h in out["hits"])
        assert "/nonexistent/path" in out["vector_status"]
        assert any("keyword" in n for n in out["notes"])


def test_or_query_keeps_the_rarest_terms_by_their_exact_stems(
        sqlite_corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OR fallback's pruning (it runs from 20k records on; forced here):
    document counts come from the index's own stems, so words whose porter
    stem is no prefix of them (libraries -> librari, used -> us) count right,
    and the most common terms are the ones left out. (FTS5's own: records_fts and
    its vocabulary; PostgreSQL's ranker counts through its statistics.)"""
    corpus = sqlite_corpus
    import mcp_server.search.keyword as engine
    from mcp_server.search.terms import build_fts_terms

    words = ["libraries", "used", "database", "migration", "tomato", "the", "zzzunseen"]
    query = " ".join(words)
    terms = build_fts_terms(query)

    def count(word: str) -> int:
        return corpus.sql("SELECT COUNT(*) FROM records_fts WHERE records_fts MATCH ?",
                          (f'text : "{word}"',))[0][0]

    async def go() -> tuple[dict[str, int], str | None, str | None]:
        store = await Store.open(Path(corpus.target))
        try:
            counts = await engine.doc_counts(store.conn, terms)
            monkeypatch.setattr(engine, "OR_PRUNE_FROM", 0)
            monkeypatch.setattr(engine, "OR_MAX_TERMS", 3)
            three = await engine.or_query(store.conn, terms)
            monkeypatch.setattr(engine, "OR_MAX_TERMS", 12)
            monkeypatch.setattr(engine, "OR_MAX_POSTINGS", 1)
            one = await engine.or_query(store.conn, terms)
            return counts, three, one
        finally:
            await store.close()

    counts, three, one = anyio.run(go)
    by_word = {t.words[0]: counts[t.fts] for t in terms}
    for word in words:
        assert by_word[word] == count(word), word
    assert by_word["libraries"] > 0 or by_word["used"] > 0  # the corpus has one of them
    content = sorted((by_word[w], w) for w in words if w != "the")
    assert three == " OR ".join(f'"{w}"' for _, w in content[:3])
    # A budget of one posting: the rarest term always, then only what fits (unseen words).
    unseen = [w for n, w in content if n == 0] or [content[0][1]]
    assert one == " OR ".join(f'"{w}"' for w in unseen)


# -- an empty query is an error, not arbitrary short prompts ---------------------------------


EMPTY = "deja: the query is empty: give words, an error message or a question\n"


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_query_is_a_clear_error(corpus: Corpus, query: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the request is checked before any model loads); the process boundary
    once, in the next test."""
    from mcp_server.cli import main

    for mode in ("hybrid", "keyword"):
        code = main(["--db", corpus.db, "search", query, "--mode", mode])
        out, err = capsys.readouterr()
        assert code == 1, (query, mode, out)
        assert err == EMPTY and out == ""
    with pytest.raises(InvalidQuery, match="the query is empty"):
        corpus.search(query)


def test_an_empty_query_through_the_process_boundary(corpus: Corpus) -> None:
    proc = deja(corpus.home, "--db", corpus.db, "search", " ", expect=None)
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, EMPTY, "")


# -- any text is a query: no operator, quote or control character raises -------------------

HOSTILE = ['"unbalanced quote', 'a:b c::d :', "foo & bar | !baz", "((((", ")) or ((",
           "'; DROP TABLE records; --", "\\", "-", "!", "<->", "*", "tomato*", '"" "',
           "NOT AND OR", "a\x00b", "%s %(x)s {0}", "a <-> b & !(c | d)", "\ud800 lone",
           "NEAR(a b)", "text: tomato", "^tomato", "tomato +basil"]


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_hostile_query_strings_do_not_raise(corpus: Corpus, mode: str) -> None:
    for query in HOSTILE:
        result = corpus.search(query, mode=mode, limit=5)
        assert isinstance(result.hits, list), query
    # The words of a hostile string still count: tomato among the operators.
    assert corpus.search("tomato & | ! (", mode="keyword").hits
    assert corpus.search("text: tomato", mode="keyword").hits
    assert corpus.sql("SELECT COUNT(*) FROM records")[0][0] > 400  # nothing was dropped


def test_hostile_query_through_the_cli(corpus: Corpus) -> None:
    out = corpus.cli("search", "--json", "--mode", "keyword", 'greenhouse: "tomatoes & (water | !')
    assert out["hits"]


# -- the query splits CJK text exactly as the index does ---------------------------------------

# CJK_SAMPLES (fixtures/search_corpus.py): one sample per range of ingest.db.CJK_CHAR.


def test_the_query_treats_every_cjk_range_as_the_index_does() -> None:
    from ingest.db import CJK_CHAR, fts_text
    from mcp_server.search.terms import build_fts_terms, has_cjk

    for script, word, run in CJK_SAMPLES:
        for ch in run:
            assert CJK_CHAR.fullmatch(ch) and fts_text(ch) == f" {ch} ", (script, ch)
        assert has_cjk(run), script
        # A run is cut into overlapping pairs, each a phrase of two indexed tokens.
        pairs = [run[i:i + 2] for i in range(len(run) - 1)]
        assert [t.words[0] for t in build_fts_terms(run)] == list(dict.fromkeys(pairs)), script
        assert build_fts_terms(word)[0].fts == f'"{word[0]}  {word[1]}"', script


def test_a_record_in_each_cjk_range_is_found_by_a_query_in_its_script(corpus: Corpus) -> None:
    """Each record holds a two-character word; the query is a longer run of the same
    script: its character pairs find the record (through the OR fallback) only
    when the query splits the script as the index spaced it out."""
    uuids = corpus.info["cjk"]
    for script, word, run in CJK_SAMPLES:
        for query in (word, run):
            hits = corpus.search(query, mode="keyword", project="/home/cjk").hits
            assert [h.uuid for h in hits] == [uuids[script]], (script, query)
            assert f"[{word}]" in hits[0].snippet, (script, hits[0].snippet)


def test_read_only_connections_keep_a_smaller_page_cache(sqlite_corpus: Corpus) -> None:
    """One server per Claude Code session: a search connection's cache is memory paid per session."""
    from ingest.db import CACHE_KIB, READ_CACHE_KIB

    db = Path(sqlite_corpus.target)
    reader = make_connector(db, readonly=True)()
    writer = make_connector(db)()
    try:
        assert reader.execute("PRAGMA cache_size").fetchone()[0] == -READ_CACHE_KIB
        assert writer.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
        assert READ_CACHE_KIB < CACHE_KIB
    finally:
        reader.close()
        writer.close()
