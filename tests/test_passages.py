"""Passages of long records, escape codes out of the index, injected command copies unranked.

A long record (a compaction summary, a long tool output or prompt) is also
indexed as overlapping passages (`passages_fts`, migration m007), so one
sentence deep inside it is found and its snippet shows that sentence. The
text FTS indexes has no terminal escape codes ("\\x1b[31mERROR\\x1b[0m" is
found by ERROR). A `meta`/`system` copy of a slash command's arguments gets
no full-text row. A version-6 database gains all of it on upgrade.

The searches run on both engines (the `engine` fixture; PostgreSQL's keyword
index keeps the same passages and the same rules, ingest/pg/search_schema.py and
search_rules.py), on one database
per engine ingested once for the module by the CLI. SQLite's own: the
passages' weight in its ranker, FTS5's vocabulary and rows, the upgrade of
a version-6 file.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_json
from fixtures.engines import Target, is_postgres, sql
from fixtures.search_corpus import run_search
from fixtures.transcripts import PROJECT, assistant, tool_result, user, write

from ingest.db import clean_text, fts_text, make_connector
from ingest.indexing import PASSAGE_CHARS, PASSAGE_FROM, PASSAGE_ROWID, passage_spans
from ingest.migrations import _M005_CONTEXT, MIGRATIONS, SCHEMA_VERSION
from ingest.store import Store
from ingest.vectors import embedding_text
from mcp_server.search import SearchFilters, SearchRequest, search
from mcp_server.search.keyword import keyword_ranks

SESSION = "5e55a6e0-0000-4000-8000-00000000beef"
DEEP = "The flamingo rollout finally listened on port 8443 behind the nginx proxy."
QUERY = "flamingo rollout port 8443 nginx gateway"
ANSI = "\x1b[31mERROR\x1b[0m: quota exceeded on \x1b]8;;https://x.test\x07volume7\x1b]8;;\x07"
ARGS = "check the walrus parser for the unicode regression"


def _filler(n: int) -> str:
    """n characters of plain sentences that share words with the other records."""
    sentences = [
        "We went through the parser changes and the tests passed again.",
        "The proxy configuration was reviewed and left as it was for now.",
        "Another port was considered for the staging box but not chosen.",
        "The rollout checklist grew a step for the database backup.",
    ]
    out: list[str] = []
    size = 0
    i = 0
    while size < n:
        s = sentences[i % len(sentences)] + (" " if i % 5 else "\n")
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out)[:n]


def _summary() -> str:
    """A 20,000-character compaction summary with DEEP at about 14,000."""
    return _filler(14_000) + "\n" + DEEP + "\n" + _filler(6_000)


def _lines() -> list[bytes]:
    s = SESSION
    lines = [user(s, "u-summary", _summary(), isCompactSummary=True)]
    # Short records holding most of the query's words, not the sentence itself.
    for i in range(12):
        lines.append(user(s, f"u-short-{i}",
                          f"the nginx gateway on port {8000 + i} for the flamingo rollout"))
        lines.append(assistant(s, f"a-short-{i}", [{"type": "text", "text": f"port {i} ok"}]))
    lines.append(assistant(s, "a-call", [{"type": "tool_use", "id": "toolu_ansi", "name": "Bash",
                                          "input": {"command": "df -h"}}]))
    lines.append(tool_result(s, "u-ansi", "toolu_ansi", ANSI))
    lines.append(user(s, "u-command", "<command-name>/review</command-name>\n"
                      f"<command-message>review</command-message>\n<command-args>{ARGS}"
                      "</command-args>"))
    lines.append(user(s, "u-meta", f"# Review skill\n\nReview the change.\n\nARGUMENTS: {ARGS}",
                      isMeta=True))
    return lines


@pytest.fixture(scope="module")
def ingested() -> dict[str, Target]:
    """Each engine's database of _lines(), ingested on first use (see `db`)."""
    return {}


@pytest.fixture
def db(engine: str, ingested: dict[str, Target], tmp_path_factory: pytest.TempPathFactory,
       request: pytest.FixtureRequest) -> Target:
    """The test's engine's database of _lines(): `deja ingest --no-embed` once per module;
    the tests only read it."""
    if engine not in ingested:
        base = tmp_path_factory.mktemp(f"passages-{engine}")
        root, home = base / "projects", base / "home"
        home.mkdir()
        write(root / PROJECT / f"{SESSION}.jsonl", _lines())
        if engine == "postgres":
            server = request.getfixturevalue("postgres_server")
            target: Target = server.uri(server.new_database())
        else:
            target = base / "deja.db"
        deja_json(home, "--db", str(target), "ingest", "--root", str(root), "--no-embed",
                  "--json")
        ingested[engine] = target
    return ingested[engine]


def _search(db: Target, query: str, limit: int = 5) -> Any:
    """The engine's keyword search (SearchResult)."""
    return anyio.run(lambda: run_search(db, SearchRequest(query, mode="keyword", limit=limit)))


def _query(db: Path, fn: Any) -> Any:
    async def go() -> Any:
        async with await Store.open(db) as store:
            return await fn(store.conn)

    return anyio.run(go)


async def _keyword(conn: Any, query: str, limit: int = 5) -> Any:
    return await search(conn, SearchRequest(query, mode="keyword", limit=limit))


async def _uuid_ranks(conn: Any, query: str, passages: float) -> list[str]:
    ranks = await keyword_ranks(conn, query, SearchFilters(), 10, 0.0, passages=passages)
    rows = {rid: uuid for rid, uuid in await conn.execute_fetchall("SELECT id, uuid FROM records")}
    return [rows[rid] for rid, _ in ranks]


def test_passages_cover_a_long_text_at_line_and_sentence_ends() -> None:
    text = _summary()
    spans = passage_spans(text)
    assert passage_spans(text[:PASSAGE_FROM]) == []
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (start, end), (nxt, _) in itertools.pairwise(spans):
        assert start < nxt <= end + 1  # overlapping (or touching), always moving on
        assert end - start <= PASSAGE_CHARS * 5 // 4
        assert text[end - 1] in ".\n " and text[nxt - 1] in ".\n "
    assert any(DEEP in text[s:e] for s, e in spans)


def test_a_sentence_deep_in_a_long_summary_is_found_and_shown(db: Target) -> None:
    result = _search(db, QUERY)
    assert result.hits[0].uuid == "u-summary"
    assert "[flamingo]" in result.hits[0].snippet and "8443" in result.hits[0].snippet
    # The snippet of a word found everywhere still centres on the passage that matched.
    hit = _search(db, "flamingo proxy").hits[0]
    assert hit.uuid == "u-summary" and "[flamingo]" in hit.snippet
    if not is_postgres(db):
        # By its own bm25 alone the 20,000 characters bury the sentence under the short
        # records (SQLite's ranker weighs its passages; PostgreSQL's always counts them).
        assert _query(db, lambda conn: _uuid_ranks(conn, QUERY, 1.0))[0] == "u-summary"
        assert _query(db, lambda conn: _uuid_ranks(conn, QUERY, 0.0))[0] != "u-summary"


def test_escape_codes_never_block_a_match_and_stay_out_of_the_index(db: Target) -> None:
    assert fts_text("\x1b[31mERROR\x1b[0m") == "ERROR"
    assert clean_text("a\x1b]0;title\x07b\x1b(Bc\x07d\x9b1me") == "abc de"
    assert fts_text("错误\x1b[1m加载\x1b[0m") == " 错  误  加  载 "
    # What is embedded: the same words, at the same offsets as in the raw text.
    text, _ = embedding_text("tool_result", ANSI, None)
    assert len(text) == len(ANSI) and re.findall(r"\w+", text) == re.findall(r"\w+", clean_text(ANSI))
    assert "\x1b" not in text
    for query in ("ERROR", "ERROR quota", "volume7"):
        hits = _search(db, query).hits
        assert [h.uuid for h in hits][:1] == ["u-ansi"], query
    if is_postgres(db):  # the lexemes of the keyword index
        terms = sql(db, "SELECT u.lexeme FROM records r, unnest(r.search_tsv) u "
                        "WHERE u.lexeme LIKE '%31m%' OR u.lexeme LIKE '0m%' "
                        "OR u.lexeme LIKE '%8;;%' OR u.lexeme = 'm'")
    else:
        terms = sql(db, "SELECT term FROM records_fts_vocab WHERE term GLOB '*31m*' "
                        "OR term GLOB '0m*' OR term GLOB '*8;;*' OR term = 'm'")
    assert terms == []


def test_an_injected_copy_of_a_commands_arguments_is_not_ranked(db: Target) -> None:
    hits = _search(db, "walrus regression").hits
    assert [h.uuid for h in hits] == ["u-command"]
    # The copy keeps its raw text; only its full-text row is missing.
    if is_postgres(db):
        rows = sql(db, "SELECT kind, COALESCE(length(search_tsv), 0) FROM records "
                       "WHERE uuid = 'u-meta'")
    else:
        rows = sql(db, "SELECT r.kind, (SELECT COUNT(*) FROM records_fts f WHERE "
                       "f.rowid = r.id) FROM records r WHERE r.uuid = 'u-meta'")
    assert rows == [("meta", 0)]


# -- upgrading a version-6 database ------------------------------------------------------------

_V6_RECORDS = [  # (kind, text): what a version-6 deja stored and indexed
    ("compact_summary", _summary()),
    ("prompt", "the nginx proxy port for the rollout"),
    ("tool_call", "Bash {\"command\": \"df -h\"}"),
    ("tool_result", ANSI),
    ("command", f"<command-name>/review</command-name><command-args>{ARGS}</command-args>"),
    ("meta", f"# Review skill\n\nARGUMENTS: {ARGS}"),
    ("tool_result", _filler(5_000) + "\nthe zeppelin sentence\n" + _filler(3_000)),
]


def _build_v6(db: Path) -> None:
    conn = make_connector(db)()
    try:
        for number, migration in enumerate(MIGRATIONS[:6], 1):
            conn.execute("BEGIN IMMEDIATE")
            migration(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO sources (id, path, display_path, project_dir, layout) "
                     "VALUES (1, x'2f66', '/f', '-p', 'session')")
        for i, (kind, text) in enumerate(_V6_RECORDS, 1):
            conn.execute("INSERT INTO records (id, source_id, line_key, part, uuid, session_id, "
                         "kind, text, text_len, embed_state) VALUES (?, 1, ?, 0, ?, 's', ?, ?, ?, 2)",
                         (i, f"k{i}", f"u{i}", kind, text, len(text)))
            # Version 6's writer: every record, its raw text (escape codes included).
            conn.execute("INSERT INTO records_fts (rowid, text, context) SELECT r.id, "
                         f"r.text, {_M005_CONTEXT} FROM records r WHERE r.id = ?", (i,))
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_version_6_database_gains_passages_and_a_cleaner_index(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    _build_v6(db)

    async def go() -> dict[str, Any]:
        async with await Store.open(db) as store:
            conn = store.conn
            q = conn.execute_fetchall
            out: dict[str, Any] = {"version": next(iter(await q("PRAGMA user_version")))[0]}
            out["records"] = [tuple(r) for r in await q("SELECT kind, text FROM records ORDER BY id")]
            out["passages"] = {r[0] // PASSAGE_ROWID for r in await q(
                "SELECT rowid FROM passages_fts")}
            out["deep"] = await _keyword(conn, QUERY)
            out["zeppelin"] = await _keyword(conn, "zeppelin")
            out["error"] = await _keyword(conn, "ERROR quota")
            out["walrus"] = await _keyword(conn, "walrus")
            for table in ("records_fts", "passages_fts"):
                await conn.execute(f"INSERT INTO {table} ({table}, rank) "
                                   "VALUES ('integrity-check', 1)")
            # The triggers keep passages in step: an edit re-cuts them, a delete drops them.
            async with store.transaction():
                await conn.execute("UPDATE records SET text = ? WHERE id = 7",
                                   (_filler(4_000) + " the blimp sentence",))
            out["edited"] = [(await _keyword(conn, w)).hits for w in ("zeppelin", "blimp")]
            async with store.transaction():
                await conn.execute("DELETE FROM records WHERE id = 1")
            out["left"] = next(iter(await q("SELECT COUNT(*) FROM passages_fts WHERE rowid < ?",
                                       (2 * PASSAGE_ROWID,))))[0]
            return out

    out = anyio.run(go)
    assert out["version"] == SCHEMA_VERSION
    assert out["records"] == _V6_RECORDS  # every record kept, raw text and all
    assert out["passages"] == {1, 7}  # the two long records
    assert out["deep"].hits[0].uuid == "u1" and "[flamingo]" in out["deep"].hits[0].snippet
    assert [h.uuid for h in out["zeppelin"].hits] == ["u7"]
    assert "[zeppelin]" in out["zeppelin"].hits[0].snippet
    assert [h.uuid for h in out["error"].hits] == ["u4"]
    assert [h.uuid for h in out["walrus"].hits] == ["u5"]
    assert out["edited"][0] == [] and [h.uuid for h in out["edited"][1]] == ["u7"]
    assert out["left"] == 0
