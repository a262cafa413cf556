"""The `deja` commands' edges, through the CLI as a subprocess: which commands create a
database and which refuse a missing one, URL-looking `--db`, one database size for
`deja stats` and memory_status, and `deja ingest --watch` loading the model once.

The database tests run on both engines (the `engine` fixture; on PostgreSQL a
"missing" database is one deja never wrote: an empty database has no tables);
the URL refusals and the file sizes of SQLite's WAL are SQLite's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlean
from fixtures.cli import deja_argv, deja_env
from fixtures.engines import Target, is_postgres, sql
from fixtures.paths import REPO, SAMPLE
from fixtures.transcripts import conversation, write

from ingest.config import database_bytes
from ingest.db import connect
from mcp_server.history import status

SESSION = "5e55a0de-0000-4000-8000-00000000cafe"

RunDeja = Callable[..., subprocess.CompletedProcess[str]]


# -- read-only commands never create a database --------------------------------------------


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["search", "redis"],
                                     ["search", "redis", "--mode", "keyword"],
                                     ["show", "rec:1"], ["sessions"]])
def test_read_only_commands_refuse_a_missing_database(deja: RunDeja, tmp_path: Path,
                                                      db_target: Target,
                                                      command: list[str]) -> None:
    db: Target = db_target if is_postgres(db_target) else tmp_path / "typo" / "deja.db"
    proc = deja("--db", str(db), *command, expect=None)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    if is_postgres(db):  # a database deja never wrote: said so, and no table created
        assert proc.stderr.startswith("deja: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "run `deja ingest`" in proc.stderr and "Traceback" not in proc.stderr
        assert sql(db, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
        return
    assert proc.stderr == f"deja: no database at {db}; run `deja ingest` to create one\n"
    assert not (tmp_path / "typo").exists()


def _exists(db: Target) -> bool:
    """Whether deja created its database: the file, or the tables in the database."""
    if is_postgres(db):
        return sql(db, "SELECT to_regclass('records') IS NOT NULL") == [(True,)]
    return Path(db).is_file()


def test_write_commands_still_create_the_database(deja: RunDeja, tmp_path: Path,
                                                  engine: str,
                                                  request: pytest.FixtureRequest) -> None:
    empty_root = tmp_path / "projects"
    empty_root.mkdir()

    def new(name: str) -> Target:
        if engine == "postgres":
            server = request.getfixturevalue("postgres_server")
            return str(server.uri(server.new_database()))
        return tmp_path / name / "deja.db"

    db = new("new")
    deja("--db", str(db), "ingest", "--root", str(empty_root), "--json")
    assert _exists(db)
    # embed opens (and so creates) the database before it loads the model.
    db2 = new("new2")
    proc = deja("--db", str(db2), "embed", expect=None,
                env={"DEJA_EMBED_MODEL": str(tmp_path / "no-such-model")})
    assert proc.returncode == 1 and "embedding model folder not found" in proc.stderr
    assert _exists(db2)
    # Once it exists, the read-only commands read it.
    assert "records: 0" in deja("--db", str(db), "stats").stdout


# -- a URL is not a path -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["stats"], ["ingest", "--no-embed"], ["search", "x"],
                                     ["serve", "--no-ingest"]])
def test_url_db_is_refused_and_nothing_created(deja: RunDeja, command: list[str]) -> None:
    # A URL of another engine than PostgreSQL's (tests/test_postgres.py has those).
    url = "mysql://deja@localhost/memory"
    # As a path, the URL is "mysql:/deja@localhost/memory" under the working folder.
    created = REPO / "mysql:"
    assert not created.exists()
    for args, env in (([*("--db", url), *command], None), (command, {"DEJA_DB": url})):
        proc = deja(*args, expect=None, env=env, stdin=subprocess.DEVNULL, timeout=30)
        assert proc.returncode == 1, proc
        assert "looks like a URL" in proc.stderr and url in proc.stderr, proc.stderr
        assert proc.stderr.startswith("deja: ") and proc.stderr.count("\n") == 1
        assert not created.exists()


def test_python_m_ingest_refuses_a_url_too(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ingest", "--db", "sqlite:///memory.db", "--root", str(SAMPLE)],
        capture_output=True, text=True, timeout=60, env=deja_env(home), cwd=str(tmp_path),
    )
    assert proc.returncode == 1, proc
    assert "looks like a URL" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


# -- one database size -----------------------------------------------------------------------------


def test_stats_and_memory_status_report_the_same_size(deja: RunDeja, db_path: Path) -> None:
    deja("--db", str(db_path), "ingest", "--root", str(SAMPLE), "--json")

    async def main() -> None:
        # An open connection keeps the -wal and -shm files beside the database.
        conn = await connect(db_path)
        try:
            await conn.execute("SELECT COUNT(*) FROM records")
            assert Path(f"{db_path}-shm").exists()
            before = (await status(conn, db_path))["database_bytes"]
            stats = json.loads(deja("--db", str(db_path), "stats", "--json").stdout)
            after = (await status(conn, db_path))["database_bytes"]
            on_disk = sum(os.stat(f"{db_path}{s}").st_size for s in ("", "-wal", "-shm")
                          if os.path.exists(f"{db_path}{s}"))
            main_file = db_path.stat().st_size
        finally:
            await conn.close()
        assert stats["database_bytes"] == before == after
        assert before == on_disk > main_file

    anyio.run(main)
    assert database_bytes(db_path) >= db_path.stat().st_size


# -- the watch loop loads the model once --------------------------------------------------------


class Watch:
    """`deja -v ingest --watch --json` in the background, its stderr gathered as it comes."""

    def __init__(self, tmp_path: Path, root: Path, env: dict[str, str], db: Target) -> None:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        self.db = db
        self.proc = subprocess.Popen(
            deja_argv("-v", "--db", str(self.db), "ingest", "--watch", "--root", str(root),
                      "--json"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=deja_env(home, env, embed=True), cwd=str(REPO),
        )
        self.stderr: list[str] = []
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        self._reader = threading.Thread(target=lambda: self.stderr.extend(stream), daemon=True)
        self._reader.start()

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"watch ended early:\n{''.join(self.stderr)}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{''.join(self.stderr)}"
            time.sleep(0.1)

    def count(self, query: str) -> int:
        """`query`'s number; -1 while the database is not there or not migrated yet."""
        if not is_postgres(self.db):
            try:
                return int(sql(self.db, query)[0][0]) if Path(self.db).exists() else -1
            except sqlean.OperationalError:
                return -1
        import psycopg

        try:
            return int(sql(self.db, query)[0][0])
        except psycopg.errors.UndefinedTable:
            return -1

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self._reader.join(timeout=10)
        assert self.proc.returncode == 0, "".join(self.stderr)
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _grow(transcript: Path, lines: list[bytes], db_records: Callable[[], int],
          watch: Watch, embedded: bool) -> None:
    """Append `lines`, then wait until the watch has ingested (and, if asked, embedded) them."""
    before = db_records()
    with transcript.open("ab") as f:
        f.write(b"".join(lines))
    watch.wait_for("new records", lambda: db_records() >= max(before, 0) + len(lines))
    if embedded:
        watch.wait_for("vectors", lambda: watch.count(
            "SELECT COUNT(*) FROM records WHERE embed_state = 0") == 0)


def test_watch_loads_the_model_once(tmp_path: Path, db_target: Target) -> None:
    root = tmp_path / "projects"
    (root / "-home-dev-gizmo").mkdir(parents=True)
    transcript = root / "-home-dev-gizmo" / f"{SESSION}.jsonl"
    watch = Watch(tmp_path, root, {}, db_target)
    try:
        # The first pass finds nothing to embed: no model is loaded for it.
        watch.wait_for("database", lambda: watch.count("SELECT COUNT(*) FROM records") == 0)
        time.sleep(1.0)
        records = lambda: watch.count("SELECT COUNT(*) FROM records")  # noqa: E731
        lines = conversation(SESSION, 12, prefix="w")
        write(transcript, lines[:4])
        watch.wait_for("first records", lambda: records() >= 4)
        watch.wait_for("vectors", lambda: watch.count(
            "SELECT COUNT(*) FROM records WHERE embed_state = 0") == 0)
        _grow(transcript, lines[4:8], records, watch, embedded=True)
        _grow(transcript, lines[8:], records, watch, embedded=True)
        out = watch.stop()
    finally:
        watch.kill()
    log = "".join(watch.stderr)
    assert out["passes"] >= 4 and out["new_records"] == 12, out
    assert out["pending_embeddings"] == 0 and "embed_error" not in out, out
    assert watch.count("SELECT COUNT(*) FROM records WHERE embed_state = 1") == 12
    loads = [ln for ln in watch.stderr if "embedding model " in ln and " loaded from " in ln]
    assert len(loads) == 1, log


def test_watch_reports_a_missing_model_once(tmp_path: Path, db_target: Target) -> None:
    root = tmp_path / "projects"
    transcript = root / "-home-dev-gizmo" / f"{SESSION}.jsonl"
    lines = conversation(SESSION, 9, prefix="m")
    write(transcript, lines[:3])
    missing = tmp_path / "no-such-model"
    watch = Watch(tmp_path, root, {"DEJA_EMBED_MODEL": str(missing)}, db_target)
    try:
        records = lambda: watch.count("SELECT COUNT(*) FROM records")  # noqa: E731
        watch.wait_for("first records", lambda: records() >= 3)
        _grow(transcript, lines[3:6], records, watch, embedded=False)
        _grow(transcript, lines[6:], records, watch, embedded=False)
        time.sleep(0.5)  # the last pass's embedding step
        out = watch.stop()
    finally:
        watch.kill()
    log = "".join(watch.stderr)
    assert out["passes"] >= 3 and out["new_records"] == 9, out
    assert "embedding model folder not found" in out["embed_error"]
    assert log.count("embedding model folder not found") == 1, log
    assert watch.count("SELECT COUNT(*) FROM records WHERE embed_state = 0") == 9
