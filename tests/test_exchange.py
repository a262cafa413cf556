"""`deja export` / `deja import`: round-trips one for one, idempotence, Markdown, Parquet.

A database of the shared transcripts (plus memories written through the
library) is exported to JSONL and imported into an empty database of the same
engine; every column that matters is compared record by record, by the
records' unique key (source path, line key, part), independently of deja's
code (fixtures.engines.sql). Every test runs on both engines (the `engine`
fixture); the corpus with its memories is a copy of the run's ingest
(fixtures/engine_corpus.py), made once per module and engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja, deja_json
from fixtures.engine_corpus import CORPUS_MACHINE, Corpus, once_per_engine
from fixtures.engines import Target, is_postgres, sql
from fixtures.shared import in_ci

from ingest.config import PostgresUrl
from ingest.memories import write_memory
from ingest.pg.store import PgStore
from ingest.store import Store

RECORD_COLS = ("line_key", "part", "uuid", "parent_uuid", "session_id", "agent_id", "kind",
               "role", "tool_name", "tool_use_id", "is_error", "text", "text_len", "truncated",
               "ts", "cwd", "git_branch", "model", "is_sidechain", "byte_offset", "meta")
SESSION_COLS = "session_id, project_dir, cwd, git_branch, title, title_kind, agent_name, " \
               "first_ts, last_ts, version"


@pytest.fixture(scope="module")
def _with_memories() -> dict[str, tuple[Path, Target]]:
    return {}


@pytest.fixture
def corpus(_with_memories: dict[str, tuple[Path, Target]], engine: str, corpus: Corpus,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Target]:
    """(home, db): the shared transcripts ingested, plus two memories (once per module and
    engine, on a copy of the run's corpus)."""
    return once_per_engine(_with_memories, engine, lambda: (
        corpus.home, _remember(corpus.copy(tmp_path_factory.mktemp("exchange")))))


def _remember(db: Target) -> Target:
    """Two memories written into `db` through the library the MCP server's write_memory uses."""
    session = sql(db, "SELECT session_id FROM sessions ORDER BY session_id LIMIT 1")[0][0]

    async def remember() -> None:
        store: Any = await PgStore.open(PostgresUrl(str(db)), CORPUS_MACHINE, {}) \
            if is_postgres(db) else await Store.open(Path(db))
        try:
            await write_memory(store, "We chose WAL mode for concurrent readers", kind="decision",
                               project_dir="-home-demo-app", title="WAL", tags=["sqlite"],
                               session_id=session)
            await write_memory(store, "Café naïve ünïcode note", project_dir="-home-demo-app")
        finally:
            await store.close()

    anyio.run(remember)
    return db


def _records(db: Target) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    rows = sql(db, f"SELECT s.path, {', '.join('r.' + c for c in RECORD_COLS)}, "
                   "r.embed_state = 2 FROM records r JOIN sources s ON s.id = r.source_id")
    # meta: JSON text on SQLite, JSONB (a dict already) on PostgreSQL.
    return {(bytes(r[0]), r[1], r[2]): (*r[3:-2], json.loads(r[-2]) if isinstance(r[-2], str)
                                        else r[-2], r[-1]) for r in rows}


def _keyword_index(db: Target) -> list[Any]:
    """The keyword index's size: FTS5's rows on SQLite, the tsvectors and passages on
    PostgreSQL."""
    if is_postgres(db):
        return [sql(db, "SELECT COUNT(*) FROM records WHERE search_tsv IS NOT NULL"),
                sql(db, "SELECT COUNT(*) FROM passages")]
    return [sql(db, f"SELECT COUNT(*) FROM {table}") for table in ("records_fts", "passages_fts")]


def _others(db: Target) -> tuple[list[Any], list[Any], list[Any]]:
    sessions = sql(db, f"SELECT {SESSION_COLS} FROM sessions ORDER BY session_id")
    agents = sql(db, "SELECT a.session_id, a.agent_id, s.path, a.layout, a.agent_type, "
                     "a.description, a.tool_use_id, a.is_aside FROM agent_runs a LEFT JOIN "
                     "sources s ON s.id = a.source_id ORDER BY 1, 2")
    sources = sql(db, "SELECT path, display_path, project_dir, layout, session_hint, session_id, "
                      "agent_id FROM sources ORDER BY path")
    return sessions, agents, sources


def test_jsonl_round_trip_one_for_one(corpus: tuple[Path, Target], tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    home, db = corpus
    out = tmp_path / "history.jsonl"
    summary = deja_json(home, "--db", str(db), "export", "--format", "jsonl", str(out), "--json")
    original = _records(db)
    assert summary["record"] == len(original) > 3000
    assert out.stat().st_mode & 0o077 == 0  # it holds the transcripts
    new_db: Target = str(request.getfixturevalue("postgres_url")) if is_postgres(db) else \
        tmp_path / "new" / "deja.db"
    added = deja_json(home, "--db", str(new_db), "import", str(out), "--json")["added"]
    memories = sum(1 for v in original.values() if v[4] == "memory")
    assert memories == 2
    assert added["records"] + added["memories"] == len(original)
    assert added["memories"] == memories
    imported = _records(new_db)
    assert imported.keys() == original.keys()
    for key, row in original.items():
        assert imported[key] == row, key
    assert _others(new_db) == _others(db)
    # Importing again (or into the database it came from) adds nothing.
    for target in (new_db, db):
        again = deja_json(home, "--db", str(target), "import", str(out), "--json")["added"]
        assert set(again.values()) == {0}, again
    assert len(_records(new_db)) == len(original)
    # The full-text index was filled: keyword search answers the same, hit for hit.
    for words in ("migration sqlite", "WAL concurrent readers", "ünïcode"):
        hits = [deja_json(home, "--db", str(d), "search", words, "--mode", "keyword", "--json",
                          "-n", "10")["hits"] for d in (db, new_db)]
        assert [h["uuid"] for h in hits[0]] == [h["uuid"] for h in hits[1]] and hits[0], words
    assert _keyword_index(new_db) == _keyword_index(db)
    # Token usage (`responses`, what deja stats counts) is rebuilt from the imported records.
    usage = "SELECT key, session_id, model, input, output, cache_creation, cache_read FROM responses "
    assert sql(new_db, usage + "ORDER BY key") == sql(db, usage + "ORDER BY key") != []
    # No vectors are carried: what deserves one waits for `deja embed`.
    assert sql(new_db, "SELECT COUNT(*) FROM chunks") == [(0,)]


def test_export_filters_and_stdout(corpus: tuple[Path, Target], tmp_path: Path) -> None:
    home, db = corpus
    project, = sql(db, "SELECT project_dir FROM sources WHERE layout = 'session' "
                       "GROUP BY project_dir ORDER BY COUNT(*) DESC LIMIT 1")[0]
    proc = deja(home, "--db", str(db), "export", "--format", "jsonl", f"--project={project}", "-")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["filters"]["project"] == project
    want = sql(db, "SELECT COUNT(*) FROM records r JOIN sources s ON s.id = r.source_id "
                   "WHERE s.project_dir = ?", (project,))[0][0]
    assert sum(1 for x in lines if x["type"] == "record") == want
    session, first = sql(db, "SELECT session_id, first_ts FROM sessions "
                             "WHERE first_ts IS NOT NULL ORDER BY first_ts DESC LIMIT 1")[0]
    proc = deja(home, "--db", str(db), "export", "--format", "jsonl", "--session", session[:8],
                "--since", first, "-")
    got = [json.loads(line) for line in proc.stdout.splitlines()[1:]]
    want = sql(db, "SELECT COUNT(*) FROM records WHERE session_id = ? AND ts >= ?",
               (session, first))[0][0]
    assert sum(1 for x in got if x["type"] == "record") == want > 0
    assert {x["session_id"] for x in got if x["type"] == "session"} == {session}
    bad = deja(home, "--db", str(db), "export", "--format", "jsonl", "--session", "nope", "-",
               expect=1)
    assert "no session 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_markdown_export(corpus: tuple[Path, Target]) -> None:
    home, db = corpus
    md = deja(home, "--db", str(db), "export", "--format", "markdown", "-").stdout
    sessions = sql(db, "SELECT DISTINCT session_id FROM records WHERE session_id IS NOT NULL")
    assert md.startswith("# deja history\n")
    for (sid,) in sessions:
        assert f"- session: `{sid}`" in md
    prompt = sql(db, "SELECT text FROM records WHERE kind = 'prompt' ORDER BY id LIMIT 1")[0][0]
    assert "**User** · " in md and prompt in md
    assert "**Tool call** `" in md and "WAL mode for concurrent readers" in md


def test_parquet_schema(corpus: tuple[Path, Target], tmp_path: Path) -> None:
    # CI installs the extra (`.[test,parquet]`): there a missing pyarrow fails.
    pa = pytest.importorskip("pyarrow") if not in_ci() else __import__("pyarrow")
    import pyarrow.compute  # noqa: F401 - pa.compute
    import pyarrow.parquet as pq

    home, db = corpus
    out = tmp_path / "history.parquet"
    summary = deja_json(home, "--db", str(db), "export", "--format", "parquet", str(out), "--json")
    table = pq.read_table(out)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table_md = readme.split("### Parquet schema\n", 1)[1].split("\n\n", 1)[0].strip()
    documented = [line.split("|")[1].strip(" `") for line in table_md.splitlines()[2:]]
    types = [line.split("|")[2].strip() for line in table_md.splitlines()[2:]]
    assert types == [str(f.type).replace("tz=", "") for f in table.schema]
    assert table.schema.names == documented
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("part").type == pa.int32()
    assert table.schema.field("is_error").type == pa.bool_()
    assert table.num_rows == summary["records"] == len(_records(db))
    uuids = set(table.column("uuid").to_pylist())
    assert uuids == {r[1] for r in sql(db, "SELECT id, uuid FROM records")}
    kinds = pa.compute.value_counts(table.column("kind")).to_pylist()
    assert {k["values"]: k["counts"] for k in kinds} == dict(
        sql(db, "SELECT kind, COUNT(*) FROM records GROUP BY kind"))


def test_import_refuses_what_is_not_an_export(tmp_path: Path, db_target: Target) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"type": "user", "message": "hello"}\n')
    proc = deja(home, "--db", str(db_target), "import", str(bad), expect=1)
    assert "not a deja export" in proc.stderr and "Traceback" not in proc.stderr
