"""`deja sync --to URL` (issue 11): a local SQLite history moved up into PostgreSQL, once.

Against the run's real PostgreSQL + pgvector (fixtures/postgres.py, a fresh
database per test), the real CLI as a subprocess, and a local SQLite file of
the shared corpus (a copy of the run's ingest, fixtures/engine_corpus.py, plus
one explicit memory); what `deja ingest --db URL` leaves is the run's
PostgreSQL ingest of the same files as the same machine:

- a sync leaves exactly what `deja ingest --db URL` of the same files on this
  machine leaves (sources with their cursors, records, sessions, subagent
  runs, usage), plus the memory; the counts agree with the local file's;
- a second sync adds nothing, and a later `deja ingest --db URL` reads no file
  again: it continues from the copied cursors (lines appended after the sync
  are the only ones read);
- kill -9 during a sync, then a sync to the end, equals a clean sync;
- vectors come along (the int8 copies as unit vectors) when the database has
  no model or the same one, and the records wait for `deja embed` when it
  holds another model's;
- a URL that is not PostgreSQL's, an unreachable server, a wrong password, a
  missing local database: one clear line, no traceback, no password.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja, deja_argv, deja_env, deja_json
from fixtures.engine_corpus import CORPUS_MACHINE, Corpora
from fixtures.paths import REPO
from fixtures.postgres import PASSWORD_ROLE, PgServer
from fixtures.transcripts import PROJECT, conversation, write

MACHINE = CORPUS_MACHINE  # the machine the run's corpus was ingested as
MEMORY = "the gizmo release train leaves on thursdays, quokkaplan"


def _database(url: str) -> str:
    return url.split("/")[3].split("?")[0]


def rows(server: PgServer, url: str, sql: str) -> list[tuple[Any, ...]]:
    with server.connect(_database(url)) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def lite(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def sync(home: Path, db: Path, url: str, *args: str, **kw: Any) -> dict[str, Any]:
    return dict(deja_json(home, "--db", str(db), "sync", "--to", url, "--json", *args,
                          env={"DEJA_MACHINE": MACHINE, **kw.pop("env", {})}, **kw))


def pg_ingest(home: Path, url: str, root: Path) -> dict[str, Any]:
    return dict(deja_json(home, "--db", url, "ingest", "--root", str(root), "--json",
                          "--no-embed", env={"DEJA_MACHINE": MACHINE}))


def write_memory(db: Path, content: str) -> None:
    """An explicit memory in the local file, through the library write_memory uses."""
    from ingest.memories import write_memory as write
    from ingest.store import Store

    async def go() -> None:
        store = await Store.open(db)
        try:
            await write(store, content, project_dir=PROJECT, kind="decision",
                        title="release train")
        finally:
            await store.close()

    anyio.run(go)


# Everything but ids and times, a record by its file's path; memories apart.
_TABLES = {
    "sources": 'SELECT machine, path, display_path, project_dir, layout, session_hint, '
               'session_id, agent_id, dev, ino, size, mtime_ns, "offset", lines, head_len, '
               "head_hash, missing, resets FROM sources WHERE layout <> 'memory'",
    "records": "SELECT s.path, r.machine, r.line_key, r.part, r.uuid, r.parent_uuid, "
               "r.session_id, r.agent_id, r.kind, r.role, r.tool_name, r.tool_use_id, "
               "r.is_error, md5(r.text), r.text_len, r.truncated, r.ts, r.cwd, r.git_branch, "
               "r.model, r.is_sidechain, r.byte_offset, r.meta::text, r.embed_state "
               "FROM records r JOIN sources s ON s.id = r.source_id WHERE r.kind <> 'memory'",
    "sessions": "SELECT * FROM sessions",
    "agent_runs": "SELECT a.session_id, a.agent_id, s.path, a.layout, a.agent_type, "
                  "a.description, a.tool_use_id, a.is_aside "
                  "FROM agent_runs a LEFT JOIN sources s ON s.id = a.source_id",
    "responses": "SELECT * FROM responses",
}


def snapshot(server: PgServer, url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(rows(server, url, sql), key=repr) for name, sql in _TABLES.items()}


class Local:
    def __init__(self, home: Path, db: Path, root: Path) -> None:
        self.home, self.db, self.root = home, db, root


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, corpora: Corpora) -> Iterator[Local]:
    """The shared corpus in a local SQLite file (no vectors), and one memory."""
    corpus = corpora.get("sqlite")
    db = Path(corpus.copy(tmp_path_factory.mktemp("local")))
    write_memory(db, MEMORY)
    yield Local(corpus.home, db, corpora.projects)


@pytest.fixture
def ingested(corpora: Corpora, postgres_server: PgServer) -> str:
    """`deja ingest --db URL` of the shared corpus as MACHINE: the run's (don't change it)."""
    return str(corpora.get("postgres", postgres_server).target)


# -- the whole history, once ------------------------------------------------------------------


def test_sync_leaves_what_ingest_would_and_again_adds_nothing(
        local: Local, postgres_server: PgServer, postgres_url: str, ingested: str) -> None:
    out = sync(local.home, local.db, postgres_url)
    by_kind = dict(lite(local.db, "SELECT kind, COUNT(*) FROM records GROUP BY kind"))
    assert out["machine"] == MACHINE and out["records_by_kind"] == by_kind
    assert out["records_copied"] == sum(by_kind.values()) > 1000
    assert out["records_already_there"] == 0
    assert (out["memories_copied"], out["memories_already_there"]) == (1, 0)
    for key, table in (("sessions_copied", "sessions"), ("agent_runs_copied", "agent_runs"),
                       ("responses_copied", "responses"), ("sources_copied", "sources")):
        assert out[key] == lite(local.db, f"SELECT COUNT(*) FROM {table}")[0][0] > 0, key
    assert out["cursors_copied"] == lite(local.db, 'SELECT COUNT(*) FROM sources '
                                                   'WHERE "offset" > 0')[0][0]
    assert out["vectors"] == "none" and out["pending_embeddings"] > 0

    # Exactly the rows `deja ingest --db URL` of the same files on this machine makes.
    assert snapshot(postgres_server, postgres_url) == snapshot(postgres_server, ingested)
    memory = rows(postgres_server, postgres_url,
                  "SELECT r.machine, s.path, s.layout, r.text, r.embed_state FROM records r "
                  "JOIN sources s ON s.id = r.source_id WHERE r.kind = 'memory'")
    assert memory == [(MACHINE, f"deja:memories/{PROJECT}".encode(), "memory",
                       f"release train\n\n{MEMORY}", 0)]

    again = sync(local.home, local.db, postgres_url)
    assert again["records_copied"] == again["memories_copied"] == 0
    assert again["records_already_there"] == out["records_copied"]
    assert again["memories_already_there"] == 1
    for kind in ("sessions", "agent_runs", "responses", "sources"):
        assert again[f"{kind}_copied"] == 0
        assert again[f"{kind}_already_there"] == out[f"{kind}_copied"], kind
    assert again["cursors_copied"] == 0

    # A later ingest on this machine goes on from the copied cursors: no file read again.
    after = pg_ingest(local.home, postgres_url, local.root)
    assert (after["new_records"], after["files_read"], after["lines_read"]) == (0, 0, 0)
    stats = deja_json(local.home, "--db", postgres_url, "stats", "--json")
    assert stats["records"] == out["records_copied"] and stats["by_kind"] == by_kind
    assert stats["records_by_machine"] == {MACHINE: out["records_copied"]}
    # The memory is found there by the keyword search.
    hits = deja_json(local.home, "--db", postgres_url, "search", "quokkaplan", "--mode",
                     "keyword", "--json")["hits"]
    assert [h["kind"] for h in hits] == ["memory"] and "quokkaplan" in hits[0]["snippet"]


def test_ingest_after_sync_reads_only_the_lines_appended(
        postgres_server: PgServer, postgres_url: str, home: Path, tmp_path: Path) -> None:
    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000d00d"
    lines = conversation(session, 6)
    path = write(root / PROJECT / f"{session}.jsonl", lines[:4])
    db = tmp_path / "lite.db"
    deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--json")
    assert sync(home, db, postgres_url)["records_copied"] == 4
    with path.open("ab") as f:
        f.write(b"".join(lines[4:]))
    after = pg_ingest(home, postgres_url, root)
    assert (after["new_records"], after["lines_read"]) == (2, 2)
    assert rows(postgres_server, postgres_url,
                "SELECT COUNT(*), COUNT(DISTINCT line_key), MIN(machine) FROM records") == [
        (6, 6, MACHINE)]
    # Syncing again after that ingest: nothing doubled, the further cursor kept.
    again = sync(home, db, postgres_url)
    assert (again["records_copied"], again["records_already_there"]) == (0, 4)
    assert again["cursors_copied"] == 0
    assert rows(postgres_server, postgres_url, 'SELECT "offset" FROM sources') == [
        (path.stat().st_size,)]
    # Another machine's sync of its own copy of the file keeps to its own source.
    other = sync(home, db, postgres_url, env={"DEJA_MACHINE": "desktop"})
    assert other["records_copied"] == 4 and other["sources_copied"] == 1
    assert other["sessions_already_there"] == 1
    assert rows(postgres_server, postgres_url,
                "SELECT machine, COUNT(*) FROM records GROUP BY 1 ORDER BY 1") == [
        *sorted([("desktop", 4), (MACHINE, 6)])]


# -- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_during_sync_then_rerun_equals_a_clean_sync(
        local: Local, postgres_server: PgServer, ingested: str) -> None:
    # A clean sync leaves what the ingest leaves (the test above): the crashed one must too.
    total = lite(local.db, "SELECT COUNT(*) FROM records")[0][0]
    crashed = postgres_server.uri(postgres_server.new_database())
    # Small batches (one transaction each) make the sync last long enough to be cut.
    proc = subprocess.Popen(deja_argv("--db", str(local.db), "sync", "--to", crashed, "--json",
                                      "--batch", "5"),
                            env=deja_env(local.home, {"DEJA_MACHINE": MACHINE}), cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _count(postgres_server, crashed) < total // 3:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    have = _count(postgres_server, crashed)
    assert proc.returncode == -signal.SIGKILL and 0 < have < total, (have, total)
    # What committed is whole: every file whose cursor arrived has all its records.
    local_counts = dict(lite(local.db, "SELECT s.path, COUNT(*) FROM records r "
                                       "JOIN sources s ON s.id = r.source_id GROUP BY 1"))
    arrived = rows(postgres_server, crashed, """
        SELECT s.path, COUNT(r.id) FROM sources s LEFT JOIN records r ON r.source_id = s.id
        WHERE s."offset" > 0 GROUP BY 1""")
    assert arrived and all(local_counts[bytes(p)] == n for p, n in arrived), arrived
    rest = sync(local.home, local.db, crashed)
    assert rest["records_copied"] == total - have and rest["records_already_there"] == have
    assert snapshot(postgres_server, crashed) == snapshot(postgres_server, ingested)
    assert rows(postgres_server, crashed, "SELECT COUNT(*) FROM records") == [(total,)]


def _count(server: PgServer, url: str) -> int:
    if not rows(server, url, "SELECT to_regclass('records') IS NOT NULL")[0][0]:
        return 0
    return int(rows(server, url, "SELECT COUNT(*) FROM records")[0][0])


# -- vectors ------------------------------------------------------------------------------------


def test_vectors_come_along_or_wait_for_another_model(
        postgres_server: PgServer, postgres_url: str, home: Path, tmp_path: Path) -> None:
    import numpy as np

    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000feed"
    write(root / PROJECT / f"{session}.jsonl", conversation(session, 8, words="walrus"))
    db = tmp_path / "lite.db"
    deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--json", embed=True)
    local_chunks = {(u, seq): (start, end, np.frombuffer(vec, dtype=np.int8)) for
                    u, seq, start, end, vec in lite(db, """
        SELECT r.uuid, c.seq, c.char_start, c.char_end, v.vec FROM chunks c
        JOIN chunk_vectors v ON v.chunk_id = c.id JOIN records r ON r.id = c.record_id""")}
    assert len(local_chunks) >= 8
    (model,) = lite(db, "SELECT model_id FROM embedding_model")[0]

    out = sync(home, db, postgres_url)
    assert out["vectors"] == "copied" and out["chunks_copied"] == len(local_chunks)
    assert out["pending_embeddings"] == 0 and out["database_model"] == model
    copied = rows(postgres_server, postgres_url, """
        SELECT r.uuid, c.seq, c.char_start, c.char_end, c.vec::text FROM chunks c
        JOIN records r ON r.id = c.record_id""")
    assert len(copied) == len(local_chunks)
    for u, seq, start, end, text in copied:
        want_start, want_end, int8 = local_chunks[(u, seq)]
        vec = np.array([float(x) for x in text.strip("[]").split(",")])
        unit = int8 / np.linalg.norm(int8)
        assert (start, end) == (want_start, want_end)
        assert abs(np.linalg.norm(vec) - 1) < 1e-5 and float(vec @ unit) > 0.99999
    # The copied vectors rank as the local ones do.
    query = "answer 5 mword5x"
    hits = {engine: deja_json(home, "--db", target, "search", query, "--mode", "vector",
                              "--json", embed=True)["hits"][0]["uuid"]
            for engine, target in (("sqlite", str(db)), ("postgresql", postgres_url))}
    assert hits["sqlite"] == hits["postgresql"]

    # A database of another model: the records come, their vectors wait for `deja embed`.
    other = postgres_server.uri(postgres_server.new_database())
    pg_ingest(home, other, tmp_path / "nothing")  # the tables
    with postgres_server.connect(_database(other)) as conn:
        conn.execute("INSERT INTO embedding_model (id, model_id, dim) VALUES (1, 'other/m', 384)")
    out = sync(home, db, other)
    embeddable = lite(db, "SELECT COUNT(*) FROM records WHERE embed_state = 1")[0][0]
    assert (out["vectors"], out["chunks_copied"]) == ("pending", 0)
    assert out["database_model"] == "other/m" and out["pending_embeddings"] == embeddable
    text = deja(home, "--db", str(db), "sync", "--to", other,
                env={"DEJA_MACHINE": "m2"}).stdout
    assert "vectors not copied" in text and "other/m" in text and "embed" in text
    assert rows(postgres_server, other, "SELECT COUNT(*) FROM chunks") == [(0,)]


# -- failures: one clear line -----------------------------------------------------------------


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.stdout == "" and len(lines) == 1 and lines[0].startswith("deja: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_failures_are_one_clear_line_without_the_password(
        local: Local, postgres_server: PgServer, home: Path, tmp_path: Path) -> None:
    db = str(local.db)
    for bad in ("/tmp/team.db", "mysql://u:pw@host/db"):
        one_line(deja(home, "--db", db, "sync", "--to", bad, expect=1), "--to must be a "
                 "PostgreSQL URL")
    url = "postgresql://deja:s3cret-pw-never-shown@127.0.0.1:1/deja"
    line = one_line(deja(home, "--db", db, "sync", "--to", url, expect=1, timeout=60),
                    "cannot connect to PostgreSQL at postgresql://deja@127.0.0.1:1/deja")
    assert "s3cret" not in line
    wrong = "not-the-Password-42"
    target = postgres_server.role_uri(PASSWORD_ROLE, postgres_server.new_database(), wrong)
    line = one_line(deja(home, "--db", db, "sync", "--to", target, expect=1),
                    "password authentication failed")
    assert wrong not in line
    missing = tmp_path / "nowhere" / "deja.db"
    one_line(deja(home, "--db", str(missing), "sync", "--to", target, expect=1),
             f"no database at {missing}")
    assert not missing.parent.exists()
    # The local side must be a file: a PostgreSQL --db (or DEJA_DB) is refused.
    for args, env in ((("--db", target), None), ((), {"DEJA_DB": target})):
        line = one_line(deja(home, *args, "sync", "--to", target, expect=1, env=env),
                        "`deja sync` copies a local SQLite database")
        assert wrong not in line
    assert os.path.exists(db)
