"""The PostgreSQL full-text index as ingest's batches write it (schema v6, ingest/pg/fulltext.py).

The batches compute each record's context, its passages and whether it is an
injected copy of a command's arguments in Python and each tsvector once in SQL,
instead of the triggers; what the keyword ranker reads must not change. So every
test here compares what is stored with what the triggers' own function gives
(`deja_record_tsv`, schema v8: `deja_tsv` of the text and `deja_context`, none for
a copy) and with the passages of ingest/indexing.py `passage_spans` (SQLite's): row
for row, on a corpus with long records, escape codes and copies, after a line read
again, for the writers that still go through the triggers, and after the upgrade of
a version 5 and of a version 7 database. Schema v8's SQL twins of SQLite's rules
(the escape codes of ingest/db.py `_ANSI`, ingest/indexing.py `command_args`) are
compared with them on every shape of input, and the copies each engine leaves
unindexed on the same transcripts are the same.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fixtures.cli import deja_json
from fixtures.engines import clone, sql
from fixtures.paths import SAMPLE
from fixtures.postgres import PgServer
from fixtures.transcripts import assistant, tool_result, user, write

from ingest.db import fts_text
from ingest.indexing import FTS_SKIP_SQL, PASSAGE_FROM, command_args, passage_spans
from ingest.pg.schema import SCHEMA_VERSION
from ingest.pg.search_schema import SCHEMA_V4

# Records whose index is not what the trigger (deja_index_record: deja_record_tsv) computes.
WRONG_RECORDS = """
SELECT r.id, r.text FROM records r
WHERE r.search_tsv IS DISTINCT FROM deja_record_tsv(r.source_id, r.id, r.kind, r.text)
   OR r.search_len IS DISTINCT FROM CASE WHEN r.search_tsv IS NOT NULL
                                         THEN deja_tsv_len(r.search_tsv) END
"""


def _v4_function(name: str) -> str:
    """Version 4's CREATE FUNCTION of `name`, as a CREATE OR REPLACE."""
    m = re.search(rf"CREATE FUNCTION {name}\(.*?\$\$;", SCHEMA_V4, re.S)
    assert m is not None
    return m.group().replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


# What version 8 (SQLite's rules: escape codes out, no copies) changes, undone.
UNDO_V8 = f"""
DROP TRIGGER records_index ON records;
CREATE TRIGGER records_index BEFORE INSERT ON records
    FOR EACH ROW WHEN (NEW.search_tsv IS NULL) EXECUTE FUNCTION deja_index_record();
DROP FUNCTION deja_record_tsv, deja_skipped, deja_command_args;
{_v4_function("deja_words")}
{_v4_function("deja_index_record")}
{_v4_function("deja_index_passages")}
{_v4_function("deja_cut")}
{_v4_function("deja_next_start")}
{_v4_function("deja_passage_spans")}
UPDATE deja_schema SET version = 7;
"""
# What versions 8, 7 (the multilingual vectors) and 6 change, undone: version 5's triggers.
UNDO_V6 = UNDO_V8 + f"""
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
        # Long records have passages, but for the copies (no index at all).
        long = conn.execute("SELECT id, text FROM records WHERE length(text) > %s "
                            "AND search_tsv IS NOT NULL", (PASSAGE_FROM,)).fetchall()
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
    # Binary tool output: whitespace to Python that a locale's \s may not be (schema v8).
    "".join(f"blob{i}\x1fpart\x1c{i}\u00a0nbsp\u202fthin\x85" for i in range(120)),
]


ORCHARD = "inspect the kiwi orchard fence"
VINES = "prune the kiwi vines quickly"
GREEN = "\x1b[32mPASSED\x1b[0m tests/test_kiwi.py::test_ripe\n"


def _command(args: str) -> str:
    return (f"<command-name>/review</command-name>\n<command-message>review</command-message>\n"
            f"<command-args>{args}</command-args>")


def _rule_lines(s: str) -> list[bytes]:
    """A session for SQLite's two rules: escape codes (in a prompt, the context of the
    reply after it, and in a long tool output, cut in passages) and the copies of a
    command's arguments (one long, with the command just before it; one four records
    after its command, too far to be a copy)."""
    ask = "\x1b[1mwhy\x1b[0m did the kiwi build fail? \x1b]8;;https://ci.test\x07log\x1b]8;;\x07"
    return [
        user(s, "r-ask", ask),
        assistant(s, "r-reply", [{"type": "text", "text": "A flaky orchard test."}]),
        assistant(s, "r-call", [{"type": "tool_use", "id": "toolu_kiwi", "name": "Bash",
                                 "input": {"command": "pytest"}}]),
        tool_result(s, "r-green", "toolu_kiwi", GREEN * 60),
        user(s, "r-command", _command(ORCHARD)),
        user(s, "r-copy", "# Review skill\n\n" + "Review it with care. " * 80
             + f"\n\nARGUMENTS: {ORCHARD}", isMeta=True),
        user(s, "r-command2", _command(VINES)),
        *(assistant(s, f"r-ok{i}", [{"type": "text", "text": f"ok {i}"}]) for i in range(3)),
        user(s, "r-far", f"# Review skill\n\nARGUMENTS: {VINES}", isMeta=True),
    ]


@pytest.fixture(scope="module")
def rule_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transcripts of the rules' session."""
    root = tmp_path_factory.mktemp("pgrules") / "projects"
    s = "5e5e5e5e-0000-4000-8000-00000000000b"
    write(root / "-home-dev-kiwi" / f"{s}.jsonl", _rule_lines(s))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, postgres_server: PgServer,
           rule_root: Path) -> Iterator[tuple[str, Path]]:
    """The sample, a session of long records and the rules' session, ingested once: a
    template database's name, and the home to run deja in."""
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
              str(SAMPLE), "--root", str(rule_root), "--json", "--no-embed")
    yield name, home


def test_batches_index_every_record_and_passage_as_the_triggers_did(
        postgres_server: PgServer, corpus: tuple[str, Path]) -> None:
    assert _check_index(postgres_server, postgres_server.uri(corpus[0])) >= len(LONG_TEXTS)


def test_other_writers_are_still_indexed_by_the_triggers(postgres_server: PgServer,
                                                         corpus: tuple[str, Path]) -> None:
    url = clone(postgres_server, corpus[0])
    long_text = ("A walrus census of the \x1b[1mnorthern\x1b[0m coast. "
                 + "Another\x1fcounted\u00a0pod. " * 150)
    copy = f"# Review skill\n\n{'Be thorough. ' * 150}\nARGUMENTS: {ORCHARD}"
    with psycopg.connect(url, autocommit=True) as conn:
        src = conn.execute("SELECT MIN(id) FROM sources").fetchone()[0]
        for key, kind, text in [("by-hand", "prompt", long_text),
                                ("command", "command", _command(ORCHARD)),
                                ("copy", "meta", copy)]:
            conn.execute("INSERT INTO records (machine, source_id, line_key, part, kind, text, "
                         "text_len) VALUES ('m', %s, %s, 0, %s, %s, %s)",
                         (src, key, kind, text, len(text)))
        (rid,), = conn.execute("SELECT id FROM records WHERE line_key = 'by-hand'").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM passages WHERE record_id = %s",
                            (rid,)).fetchone()[0] == len(passage_spans(long_text))
        # The copy of the command's arguments just before it: no index, no passages.
        assert conn.execute("SELECT r.search_tsv, r.search_len, COUNT(p.start) FROM records r "
                            "LEFT JOIN passages p ON p.record_id = r.id "
                            "WHERE r.line_key = 'copy' GROUP BY r.id").fetchall() == [
                                (None, None, 0)]
        # A changed text is indexed again by the same rules: no longer a copy, now one.
        conn.execute("UPDATE records SET text = 'the kiwi orchard, its fence' "
                     "WHERE line_key = 'copy'")
        assert conn.execute("SELECT search_tsv IS NOT NULL FROM records "
                            "WHERE line_key = 'copy'").fetchone() == (True,)
        conn.execute("UPDATE records SET text = %s WHERE line_key = 'copy'", (copy,))
    assert _check_index(postgres_server, url) > len(LONG_TEXTS)
    assert deja_json(corpus[1], "--db", url, "search", "--json", "--mode", "keyword",
                     "northern walrus")["hits"]
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


def test_a_copy_of_a_command_in_an_earlier_batch_is_not_indexed(
        postgres_server: PgServer, postgres_url: str, home: Path, tmp_path: Path) -> None:
    """The records a batch's first ones may copy are the file's last ones stored."""
    s = "5e5e5e5e-0000-4000-8000-000000000003"
    root = tmp_path / "projects"
    path = root / "-home-dev-kiwi" / f"{s}.jsonl"
    lines = [user(s, "c1", _command(ORCHARD)),
             user(s, "c2", f"ARGUMENTS: {ORCHARD}", isMeta=True)]
    for n in (1, 2):  # the command, then the copy appended
        write(path, lines[:n])
        deja_json(home, "--db", postgres_url, "ingest", "--root", str(root), "--json",
                  "--no-embed")
    assert sql(postgres_url, "SELECT uuid, search_tsv IS NULL FROM records ORDER BY id") == [
        ("c1", False), ("c2", True)]
    _check_index(postgres_server, postgres_url)


def test_both_engines_leave_the_same_records_unindexed(
        postgres_server: PgServer, corpus: tuple[str, Path], rule_root: Path,
        tmp_path: Path) -> None:
    """SQLite's copies (no records_fts row) are PostgreSQL's (search_tsv NULL), on the
    sample and the rules' session."""
    db = tmp_path / "deja.db"
    deja_json(corpus[1], "--db", str(db), "ingest", "--root", str(SAMPLE), "--root",
              str(rule_root), "--json", "--no-embed")
    lite = sql(db, "SELECT r.uuid, r.kind FROM records r WHERE NOT EXISTS "
                   "(SELECT 1 FROM records_fts f WHERE f.rowid = r.id) ORDER BY 1, 2")
    pg = sql(postgres_server.uri(corpus[0]),
             "SELECT uuid, kind FROM records WHERE search_tsv IS NULL ORDER BY 1, 2")
    assert ("r-copy", "meta") in pg and ("r-far", "meta") not in pg
    assert pg == lite


def _random_texts(pieces: list[str], n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 8))) for _ in range(n)]


def test_escape_codes_leave_the_same_words_as_sqlites_fts_text(
        postgres_server: PgServer, corpus: tuple[str, Path]) -> None:
    """deja_words (ANSI_RE in SQL) keeps the words ingest.db.fts_text (_ANSI) keeps, on
    every shape of escape sequence, whole, cut short or run together."""
    pieces = ["\x1b[", "\x9b", "31", ";1", "m", "?25h", " ", "!", "K", "\x1b]", "0;title",
              "8;;https://x.test/a", "\x07", "\x1b\\", "\x1b(", "B", "\x1b", "=", "~",
              "ERROR", "word", "错误", "\x01", "é"]
    texts = [*_random_texts(pieces, 3000, 11), GREEN, "\x1b[31mERROR\x1b[0m"]
    with postgres_server.connect(corpus[0]) as conn:
        wrong = conn.execute(
            "SELECT u.raw FROM unnest(%s::text[], %s::text[]) AS u(raw, clean) "
            "WHERE to_tsvector('deja', deja_words(u.raw)) "
            "IS DISTINCT FROM to_tsvector('deja', deja_words(u.clean))",
            (texts, [fts_text(t) for t in texts])).fetchall()
    assert wrong == []


def test_command_arguments_are_sqlites_on_every_engine(
        postgres_server: PgServer, corpus: tuple[str, Path]) -> None:
    """deja_command_args and ingest.indexing.command_args give what FTS_SKIP_SQL's
    expression gives in SQLite, tags missing or out of order included."""
    pieces = ["<command-args>", "</command-args>", " ", "  the kiwi orchard  ", "x", "é",
              "</command", "<command-args", "\n"]
    texts = _random_texts(pieces, 2000, 12)
    expr = FTS_SKIP_SQL[FTS_SKIP_SQL.index("trim("):FTS_SKIP_SQL.index(" AS args")]
    lite = sqlite3.connect(":memory:")
    try:
        want = [lite.execute(f"SELECT CASE WHEN instr(p.text, '</command-args>') > 0 "
                             f"THEN {expr} END FROM (SELECT ? AS text) p", (t,)).fetchone()[0]
                for t in texts]
    finally:
        lite.close()
    assert [command_args(t) for t in texts] == want
    with postgres_server.connect(corpus[0]) as conn:
        got = conn.execute("SELECT deja_command_args(t) FROM unnest(%s::text[]) "
                           "WITH ORDINALITY AS u(t, i) ORDER BY i", (texts,)).fetchall()
    assert [g for g, in got] == want


def test_a_version_7_database_is_upgraded_to_sqlites_rules(
        postgres_server: PgServer, corpus: tuple[str, Path], tmp_path: Path) -> None:
    url = clone(postgres_server, corpus[0])
    ansi = "\x1b[31mERROR\x1b[0m quota exceeded\n" + GREEN * 50
    binary = "".join(f"blob{i}\x1fpart{i}\u00a0" for i in range(200))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(UNDO_V8)
        src = conn.execute("SELECT MIN(id) FROM sources").fetchone()[0]
        for key, kind, text in [("v7-red", "prompt", ansi), ("v7-after", "assistant", "ok"),
                                ("v7-binary", "tool_result", binary),
                                ("v7-command", "command", _command(VINES)),
                                ("v7-copy", "meta", "Be brief. " * 200 + VINES)]:
            conn.execute("INSERT INTO records (machine, source_id, line_key, part, kind, text, "
                         "text_len) VALUES ('m', %s, %s, 0, %s, %s, %s)",
                         (src, key, kind, text, len(text)))
        # Indexed as version 7 did: the escape codes' words, the copy and its passages.
        assert conn.execute("SELECT COUNT(*) FROM records r, unnest(r.search_tsv) u "
                            "WHERE u.lexeme = '31merror'").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM passages p JOIN records r ON r.id = "
                            "p.record_id WHERE r.line_key = 'v7-copy'").fetchone()[0] > 0
        # (C.UTF-8's \s is not Python's: the binary output's passages are cut elsewhere.)
        starts = [r for r, in conn.execute(
            "SELECT p.start FROM passages p JOIN records r ON r.id = p.record_id "
            "WHERE r.line_key = 'v7-binary' ORDER BY 1").fetchall()]
        assert starts != [a for a, _ in passage_spans(binary)]
    deja_json(corpus[1], "--db", url, "ingest", "--root", str(tmp_path), "--json",
              "--no-embed")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM deja_schema").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM records r, unnest(r.search_tsv) u "
                            "WHERE u.lexeme LIKE '%%31m%%' OR u.lexeme LIKE '0m%%' "
                            "OR u.lexeme LIKE '%%32m%%'").fetchone()[0] == 0
        ctx = conn.execute("SELECT ts_filter(search_tsv, '{b}')::text FROM records "
                           "WHERE line_key = 'v7-after'").fetchone()[0]
        assert "'error':" in ctx and "31m" not in ctx
        assert conn.execute("SELECT search_tsv FROM records WHERE line_key = 'v7-copy'"
                            ).fetchone() == (None,)
    _check_index(postgres_server, url)
    hits = deja_json(corpus[1], "--db", url, "search", "--json", "--mode", "keyword",
                     "ERROR quota")["hits"]
    assert [h["kind"] for h in hits][:1] == ["prompt"]


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
