"""The PostgreSQL full-text index as ingest's batches write it (schema v6, ingest/pg/fulltext.py).

The batches compute each record's context and its passages in Python and each
tsvector once in SQL, instead of schema v4's triggers; what the keyword ranker
reads must not change. So every test here compares what is stored with what the
v4 triggers' own functions give (`deja_tsv`, `deja_context`) and with the
passages of ingest/indexing.py `passage_spans` (SQLite's): row for row, on a
corpus with long records, after a line read again, for the writers that still go
through the triggers, and after the upgrade of a version 5 database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fixtures.cli import deja_json
from fixtures.engines import clone
from fixtures.paths import SAMPLE
from fixtures.postgres import PgServer
from fixtures.transcripts import assistant, user, write

from ingest.indexing import PASSAGE_FROM, passage_spans
from ingest.pg.schema import SCHEMA_VERSION

# Records whose index is not what the v4 trigger (deja_index_record) computes.
WRONG_RECORDS = """
SELECT r.id, r.text FROM records r
WHERE r.search_tsv IS DISTINCT FROM deja_tsv(r.text, CASE WHEN r.kind = 'memory' THEN NULL
                                                        ELSE deja_context(r.source_id, r.id) END)
   OR r.search_len IS DISTINCT FROM deja_tsv_len(r.search_tsv)
"""
# What versions 7 (the multilingual vectors) and 6 change, undone: version 5's triggers.
UNDO_V6 = f"""
DROP TABLE ml_vectors;
DROP TABLE ml_model;
ALTER TABLE records DROP COLUMN ml_seen;
DROP TRIGGER records_index ON records;
DROP TRIGGER records_index_update ON records;
DROP TRIGGER records_passages ON records;
CREATE TRIGGER records_index BEFORE INSERT OR UPDATE OF text ON records
    FOR EACH ROW EXECUTE FUNCTION deja_index_record();
CREATE TRIGGER records_passages AFTER INSERT ON records
    FOR EACH ROW WHEN (length(NEW.text) > {PASSAGE_FROM}) EXECUTE FUNCTION deja_index_passages();
UPDATE deja_schema SET version = 5;
"""


def _name(url: str) -> str:
    return url.split("/")[3].split("?")[0]


def _check_index(server: PgServer, url: str) -> int:
    """Assert that every record and passage is indexed as the triggers index; the number
    of long records checked."""
    with server.connect(_name(url)) as conn:
        assert conn.execute(WRONG_RECORDS).fetchall() == []
        long = conn.execute("SELECT id, text FROM records WHERE length(text) > %s",
                            (PASSAGE_FROM,)).fetchall()
        stored: dict[int, list[int]] = {}
        for rid, start in conn.execute("SELECT record_id, start FROM passages "
                                       "ORDER BY record_id, start").fetchall():
            stored.setdefault(rid, []).append(start)
        assert stored == {rid: [s for s, _ in passage_spans(text)] for rid, text in long}
        # Each passage's tsvector is its own text's, and its length that tsvector's.
        spans = [(rid, s, e - s) for rid, text in long for s, e in passage_spans(text)]
        wrong = conn.execute(
            "SELECT count(*) FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS u(id, s, n) "
            "JOIN records r ON r.id = u.id JOIN passages p ON p.record_id = u.id "
            "AND p.start = u.s WHERE p.tsv IS DISTINCT FROM "
            "deja_tsv(substr(r.text, u.s + 1, u.n), NULL) OR p.len != deja_tsv_len(p.tsv)",
            ([x[0] for x in spans], [x[1] for x in spans], [x[2] for x in spans])).fetchone()
        assert wrong == (0,)
    return len(long)


# Long texts of every shape the passage cutter meets: lines, sentences, words only, one
# word without a space, CJK, punctuation that separates words.
LONG_TEXTS = [
    "\n".join(f"line {i}: the gizmo's cache warmed in {i} ms" for i in range(120)),
    " ".join(f"Sentence {i} says the build was green; the deploy went out!" for i in range(60)),
    " ".join(f"word{i}" for i in range(600)),
    "x" * 2600,
    "缓存预热完成。" * 300 + " done",
    "/".join(f"src/pkg{i}/mod.py:{i}" for i in range(150)),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, postgres_server: PgServer
           ) -> Iterator[tuple[str, Path]]:
    """The sample and a session of long records, ingested once: a template database's
    name, and the home to run deja in."""
    base = tmp_path_factory.mktemp("pgfulltext")
    root, home = base / "projects", base / "home"
    home.mkdir()
    s = "5e5e5e5e-0000-4000-8000-00000000000a"
    lines = []
    for i, text in enumerate(LONG_TEXTS):
        lines.append(user(s, f"u{i}", f"question {i}: show me the logs",
                          parent=f"a{i - 1}" if i else None))
        lines.append(assistant(s, f"a{i}", [{"type": "text", "text": text}], parent=f"u{i}"))
    write(root / "-home-dev-gizmo" / f"{s}.jsonl", lines)
    name = postgres_server.new_database()
    deja_json(home, "--db", postgres_server.uri(name), "ingest", "--root", str(root), "--root",
              str(SAMPLE), "--json", "--no-embed")
    yield name, home


def test_batches_index_every_record_and_passage_as_the_triggers_did(
        postgres_server: PgServer, corpus: tuple[str, Path]) -> None:
    assert _check_index(postgres_server, postgres_server.uri(corpus[0])) >= len(LONG_TEXTS)


def test_other_writers_are_still_indexed_by_the_triggers(postgres_server: PgServer,
                                                         corpus: tuple[str, Path]) -> None:
    url = clone(postgres_server, corpus[0])
    long_text = "A walrus census of the northern coast. " + "Another counted pod. " * 150
    with psycopg.connect(url, autocommit=True) as conn:
        src = conn.execute("SELECT MIN(id) FROM sources").fetchone()[0]
        conn.execute("INSERT INTO records (machine, source_id, line_key, part, kind, text, "
                     "text_len) VALUES ('m', %s, 'by-hand', 0, 'prompt', %s, %s)",
                     (src, long_text, len(long_text)))
        (rid,), = conn.execute("SELECT id FROM records WHERE line_key = 'by-hand'").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM passages WHERE record_id = %s",
                            (rid,)).fetchone()[0] == len(passage_spans(long_text))
    assert _check_index(postgres_server, url) > len(LONG_TEXTS)
    hits = deja_json(corpus[1], "--db", url, "search", "--json", "--mode", "keyword",
                     "walruses census")["hits"]
    assert len(hits) == 1 and "census" in hits[0]["snippet"]


def test_a_line_read_again_leaves_the_next_record_its_own_context(
        postgres_server: PgServer, postgres_url: str, home: Path, tmp_path: Path) -> None:
    """A rewritten file is read again from its start: its old lines add nothing, and a new
    line after an old one has the record before it in the database as context (the new
    line before the old one), not the old line it follows in the file."""
    s = "5e5e5e5e-0000-4000-8000-000000000001"
    path = tmp_path / "projects" / "-home-dev-gizmo" / f"{s}.jsonl"
    old_answer = assistant(s, "b1", [{"type": "text", "text": "Tune the banjo strings."}],
                           parent="a1")
    write(path, [user(s, "a1", "how do I tune a banjo?"), old_answer])
    deja_json(home, "--db", postgres_url, "ingest", "--root", str(tmp_path / "projects"),
              "--json", "--no-embed")
    # The same first line but another timestamp: a changed head, read again from the start.
    write(path, [user(s, "a1", "how do I tune a banjo?", ts="2025-03-01T09:00:00.000Z"),
                 user(s, "x1", "what about a xylophone?", parent="a1"), old_answer,
                 assistant(s, "y1", [{"type": "text", "text": "Mallets, not picks."}],
                           parent="b1")])
    out = deja_json(home, "--db", postgres_url, "ingest", "--root", str(tmp_path / "projects"),
                    "--json", "--no-embed")
    assert out["new_records"] == 2 and out["files_reset"] == 1
    _check_index(postgres_server, postgres_url)
    with postgres_server.connect(_name(postgres_url)) as conn:
        ctx = conn.execute("SELECT ts_filter(search_tsv, '{b}')::text FROM records "
                           "WHERE text LIKE 'Mallets%%'").fetchone()[0]
    assert "xylophon" in ctx and "banjo" not in ctx


def test_a_version_5_database_is_upgraded_and_keeps_its_index(
        postgres_server: PgServer, corpus: tuple[str, Path], tmp_path: Path) -> None:
    url = clone(postgres_server, corpus[0])
    long_text = "Quokka sightings, one per line.\n" * 80
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(UNDO_V6)
        src = conn.execute("SELECT MIN(id) FROM sources").fetchone()[0]
        conn.execute("INSERT INTO records (machine, source_id, line_key, part, kind, text, "
                     "text_len) VALUES ('m', %s, 'v5', 0, 'tool_result', %s, %s)",
                     (src, long_text, len(long_text)))
    s = "5e5e5e5e-0000-4000-8000-000000000002"
    write(tmp_path / "projects" / "-home-dev-gizmo" / f"{s}.jsonl",
          [user(s, "q1", "where were the quokkas?"),
           assistant(s, "q2", [{"type": "text", "text": "On the island. " * 200}],
                     parent="q1")])
    deja_json(corpus[1], "--db", url, "ingest", "--root", str(tmp_path / "projects"), "--json",
              "--no-embed")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM deja_schema").fetchone()[0] == SCHEMA_VERSION
        triggers = dict(conn.execute(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'records'::regclass AND NOT tgisinternal").fetchall())
    assert set(triggers) == {"records_index", "records_index_update", "records_passages",
                             "records_passages_update"}
    assert "search_tsv IS NULL" in triggers["records_index"]
    assert "deja.batch_indexes" in triggers["records_passages"]
    assert _check_index(postgres_server, url) > len(LONG_TEXTS) + 1
    hits = deja_json(corpus[1], "--db", url, "search", "--json", "--mode", "keyword",
                     "quokka")["hits"]
    # The record written under version 5's triggers and the new prompt (the reply holds
    # the word in its context only, which keyword mode leaves out).
    assert sorted(h["kind"] for h in hits) == ["prompt", "tool_result"]


def test_a_passage_scores_against_the_passages_statistics(postgres_server: PgServer,
                                                          corpus: tuple[str, Path]) -> None:
    """As FTS5's bm25() over passages_fts: the idf of a word found in one passage is the
    passages' (their count), not the records', and the length is against the passages' mean."""
    import math

    import anyio

    from ingest.config import PostgresUrl
    from ingest.pg.store import PgStore
    from mcp_server.search.filters import SearchFilters
    from mcp_server.search.pg.keyword import K1, B, keyword_ranks_pg

    url = postgres_server.uri(corpus[0])

    async def ranked() -> list[tuple[int, float]]:
        store = await PgStore.open(PostgresUrl(url), "test", {}, create=False)
        try:
            return await keyword_ranks_pg(store.conn, "word599", SearchFilters(), 10, 0.0)
        finally:
            await store.close()

    (rid, score), = anyio.run(ranked)
    with postgres_server.connect(corpus[0]) as conn:
        (n_passages, mean), = conn.execute("SELECT COUNT(*), AVG(len) FROM passages").fetchall()
        (length,), = conn.execute("SELECT len FROM passages WHERE record_id = %s AND "
                                  "tsv @@ 'word599'::tsquery", (rid,)).fetchall()
        (records,), = conn.execute("SELECT COUNT(*) FROM records").fetchall()
    assert n_passages != records
    tf = 1 / (math.pi ** 2 / 6 - 1) - 0.5  # one occurrence, as ts_rank gives it back
    idf = math.log((n_passages - 1 + 0.5) / 1.5)
    assert score == pytest.approx(
        idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / float(mean))), rel=1e-6)
