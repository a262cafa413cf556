"""The PostgreSQL engine, first part (issue 11): `deja ingest` into PostgreSQL, exactly once.

Against a real PostgreSQL 16 + pgvector started by pgserver (fixtures/postgres.py,
one server per run, a fresh database per test), through the real CLI as a
subprocess:

- the shared corpus ingests to the same records, sessions, subagent runs and
  response usage as the SQLite engine, and again adds nothing;
- a half-written last line, completed later, is ingested once (`python -m ingest`);
- kill -9 at random instants during ingest, then a run to the end, leaves exactly
  a clean run's records and cursors;
- two machines (DEJA_MACHINE) with different roots ingest into one database at
  once, each record arrives once; a third machine with the same paths as the
  first gets its own sources;
- one ingester per machine: a held advisory lock makes the second wait, or
  report its holder when the wait runs out; another machine is not held up;
- a planted secret never reaches the server (its tables, nor its files);
- an unreachable server, a wrong password, a database without the `vector`
  extension, a schema of a newer deja each give one clear line, no traceback,
  no password (a hook exits 0 with it; the read commands exit 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja, deja_argv, deja_env, deja_json, json_line
from fixtures.paths import REPO
from fixtures.postgres import PASSWORD_ROLE, PLAIN_ROLE, PgServer
from fixtures.transcripts import PROJECT, conversation, write

from ingest.pg.lock import lock_key


def _database(url: str) -> str:
    return url.split("/")[3].split("?")[0]


def pg_ingest(home: Path, url: str, root: Path, machine: str = "m1", **kw: Any) -> dict[str, Any]:
    """`deja --db URL ingest --root ROOT --json` as `machine`; its summary."""
    return deja_json(home, "--db", url, "ingest", "--root", str(root), "--json",
                     env={"DEJA_MACHINE": machine, **kw.pop("env", {})}, **kw)


def rows(server: PgServer, url: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with server.connect(_database(url)) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def one_clear_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one line on stderr of a failed command, which says `needles`; no traceback."""
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deja: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


_RECORDS = """
SELECT s.display_path, r.line_key, r.part, r.kind, r.role, r.tool_name, r.tool_use_id,
       r.is_error, r.text, r.text_len, r.truncated, r.ts, r.session_id, r.agent_id, r.model,
       r.byte_offset, r.meta::text, r.embed_state
FROM records r JOIN sources s ON s.id = r.source_id
"""


def record_set(server: PgServer, url: str, root: Path) -> Counter[tuple[Any, ...]]:
    """Every record (all columns but id and machine), its file relative to `root`, its text
    as a hash."""
    out: Counter[tuple[Any, ...]] = Counter()
    for r in rows(server, url, _RECORDS):
        text_sha = hashlib.sha1(r[8].encode()).hexdigest()
        out[(os.path.relpath(r[0], root), *r[1:8], text_sha, *r[9:])] += 1
    return out


# -- the shared corpus, as on SQLite --------------------------------------------------------


def test_shared_corpus_ingests_as_on_sqlite_and_again_adds_nothing(
        shared_projects: Path, postgres_server: PgServer, postgres_url: str, home: Path,
        tmp_path: Path) -> None:
    pg = pg_ingest(home, postgres_url, shared_projects)
    lite_db = tmp_path / "lite.db"
    lite = deja_json(home, "--db", str(lite_db), "ingest", "--root", str(shared_projects),
                     "--json", "--no-embed")
    assert pg["new_records"] > 1000
    for key in ("files", "files_read", "new_records", "records_by_kind", "sessions",
                "subagent_runs", "redactions", "redactions_by_kind", "skipped_lines",
                "ignored_lines", "lines_read", "bytes_read"):
        assert pg[key] == lite[key], key
    assert pg["machine"] == "m1" and pg["embedded"] == 0
    assert pg["pending_embeddings"] > 0 and "password" not in pg["database"]

    # The tables match SQLite's, row for row (sessions, subagent runs, response usage).
    import sqlite3

    lite_conn = sqlite3.connect(lite_db)
    try:
        for table, cols in (
                ("sessions", "session_id, project_dir, cwd, git_branch, title, title_kind, "
                             "agent_name, first_ts, last_ts, version"),
                ("agent_runs", "session_id, agent_id, layout, agent_type, description, "
                               "tool_use_id, is_aside"),
                ("responses", "key, session_id, model, ts, input, output, cache_creation, "
                              "cache_read")):
            sql = f"SELECT {cols} FROM {table}"
            assert sorted(map(tuple, lite_conn.execute(sql))) == sorted(
                rows(postgres_server, postgres_url, sql)), table
        lite_kinds = dict(lite_conn.execute(
            "SELECT kind || '/' || COALESCE(tool_name, ''), COUNT(*) FROM records GROUP BY 1"))
    finally:
        lite_conn.close()
    assert lite_kinds == dict(rows(postgres_server, postgres_url,
                                   "SELECT kind || '/' || COALESCE(tool_name, ''), COUNT(*) "
                                   "FROM records GROUP BY 1"))

    again = pg_ingest(home, postgres_url, shared_projects)
    assert again["new_records"] == 0 and again["files_read"] == 0
    assert again["sessions"] == pg["sessions"]

    stats = deja_json(home, "--db", postgres_url, "stats", "--json")
    assert stats["engine"] == "postgresql" and stats["records"] == pg["new_records"]
    assert stats["by_kind"] == pg["records_by_kind"]
    assert stats["records_by_machine"] == {"m1": pg["new_records"]}
    assert stats["sessions"] == rows(postgres_server, postgres_url,
                                     "SELECT COUNT(*) FROM sessions")[0][0]
    assert stats["files"] == pg["files"] and stats["missing_files"] == 0
    text = deja(home, "--db", postgres_url, "stats").stdout
    assert f"records: {pg['new_records']}" in text
    # pgvector is there, and every record is in the keyword ranker's GIN index.
    assert rows(postgres_server, postgres_url,
                "SELECT COUNT(*) FROM pg_extension WHERE extname = 'vector'") == [(1,)]
    assert rows(postgres_server, postgres_url,
                "SELECT COUNT(*) FROM records WHERE search_tsv IS NULL") == [(0,)]
    assert rows(postgres_server, postgres_url,
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'records_search'"
                )[0][0].endswith("USING gin (search_tsv)")


# -- a line written in two steps ----------------------------------------------------------------


def test_half_written_last_line_is_ingested_once(postgres_server: PgServer, postgres_url: str,
                                                 home: Path, tmp_path: Path) -> None:
    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000abcd"
    lines = conversation(session, 5)
    path = write(root / PROJECT / f"{session}.jsonl", [*lines[:4], lines[4][:40]])
    env = deja_env(home, {"DEJA_MACHINE": "m1"})

    def standalone() -> dict[str, Any]:
        # `python -m ingest`, the standalone command, takes the URL too.
        proc = subprocess.run([sys.executable, "-m", "ingest", "--db", postgres_url, "--root",
                               str(root), "--json"], capture_output=True, text=True, env=env,
                              cwd=str(REPO), timeout=60)
        assert proc.returncode == 0, proc.stderr
        return dict(json_line(proc.stdout))

    assert standalone()["new_records"] == 4
    with path.open("ab") as f:
        f.write(lines[4][40:])
    assert standalone()["new_records"] == 1
    assert standalone()["new_records"] == 0
    assert rows(postgres_server, postgres_url, "SELECT COUNT(*), COUNT(DISTINCT line_key) "
                                               "FROM records") == [(5, 5)]
    size = path.stat().st_size
    assert rows(postgres_server, postgres_url, 'SELECT "offset", size, machine FROM sources') == [
        (size, size, "m1")]


def test_watch_ingests_as_the_file_grows_until_sigterm(postgres_server: PgServer,
                                                       postgres_url: str, home: Path,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000cafe"
    lines = conversation(session, 6)
    path = write(root / PROJECT / f"{session}.jsonl", lines[:3])
    proc = subprocess.Popen(deja_argv("--db", postgres_url, "ingest", "--watch", "--root",
                                      str(root), "--json"),
                            env=deja_env(home, {"DEJA_MACHINE": "m1"}), cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for want in (3, 6):
            deadline = time.monotonic() + 30
            while _count(postgres_server, postgres_url) < want:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.05)
            if want == 3:
                with path.open("ab") as f:
                    f.write(b"".join(lines[3:]))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    summary = json_line(out)
    assert summary["new_records"] == 6 and summary["passes"] >= 2
    assert _count(postgres_server, postgres_url) == 6


# -- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_during_ingest_then_rerun_equals_a_clean_run(
        shared_projects: Path, postgres_server: PgServer, home: Path, tmp_path: Path) -> None:
    root = shared_projects
    clean = postgres_server.uri(postgres_server.new_database())
    total = pg_ingest(home, clean, root)["new_records"]
    expected = record_set(postgres_server, clean, root)

    seed = int(os.environ.get("DEJA_CRASH_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"DEJA_CRASH_SEED={seed}")
    crashed = postgres_server.uri(postgres_server.new_database())
    env = deja_env(home, {"DEJA_MACHINE": "m1"})
    argv = deja_argv("--db", crashed, "ingest", "--root", str(root), "--json")
    # One kill during start-up (connecting, creating the tables, discovery), then kills at
    # random points of the ingest: early, and late.
    startup = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.05, 0.5))
    startup.send_signal(signal.SIGKILL)
    startup.wait()
    for fraction in (rng.uniform(0.05, 0.4), rng.uniform(0.4, 0.85)):
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and _count(postgres_server, crashed) < fraction * total:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        have = _count(postgres_server, crashed)
        assert proc.returncode == -signal.SIGKILL and 0 < have < total, (seed, have, total)
        _records_match_cursors(postgres_server, crashed, expected, root)

    final = pg_ingest(home, crashed, root)
    assert 0 < final["new_records"] < total
    assert record_set(postgres_server, crashed, root) == expected
    assert rows(postgres_server, crashed,
                'SELECT COUNT(*) FROM sources WHERE "offset" <> size') == [(0,)]

    # The server ends the session mid-ingest: one line, exit 1; the next run completes it.
    cut = postgres_server.uri(postgres_server.new_database())
    proc = subprocess.Popen(deja_argv("--db", cut, "ingest", "--root", str(root), "--json"),
                            env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _count(postgres_server, cut):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    with postgres_server.connect() as conn:
        ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND application_name LIKE 'deja %%'",
                             (_database(cut),)).fetchall()
    assert ended == [(True,)]
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == "", err
    # (psycopg words a connection lost inside a pipeline in more than one way)
    assert err.startswith(("deja: lost the connection to PostgreSQL at ", "deja: PostgreSQL at ")) \
        and err.count("\n") == 1, err
    assert "Traceback" not in err
    pg_ingest(home, cut, root)
    assert record_set(postgres_server, cut, root) == expected


def _count(server: PgServer, url: str) -> int:
    """The records in the database at `url` (0 before its tables exist)."""
    return int(rows(server, url, "SELECT COUNT(*) FROM records")[0][0]) \
        if _has_tables(server, url) else 0


def _has_tables(server: PgServer, url: str) -> bool:
    """The schema is created in one transaction: all of deja's tables, or none."""
    return bool(rows(server, url, "SELECT to_regclass('deja_schema') IS NOT NULL")[0][0])


def _records_match_cursors(server: PgServer, crashed: str, expected: Counter[tuple[Any, ...]],
                           root: Path) -> None:
    """Every file of the killed run holds exactly the clean run's records of the lines before
    its cursor: the cursor committed with its rows."""
    got = record_set(server, crashed, root)
    cursors = {os.path.relpath(p, root): off for p, off in
               rows(server, crashed, 'SELECT display_path, "offset" FROM sources')}
    want = Counter({k: n for k, n in expected.items()
                    if k[-3] is not None and k[-3] < cursors.get(k[0], 0)})
    assert got == want


# -- two machines, one database ---------------------------------------------------------------


def test_two_machines_ingest_into_one_database_each_record_once(
        shared_projects: Path, postgres_server: PgServer, postgres_url: str, home: Path,
        tmp_path: Path) -> None:
    root_b = tmp_path / "b" / "projects"
    shutil.copytree(shared_projects, root_b)
    procs = [subprocess.Popen(deja_argv("--db", postgres_url, "ingest", "--root", str(root),
                                        "--json"),
                              env=deja_env(home, {"DEJA_MACHINE": machine}), cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for machine, root in (("laptop", shared_projects), ("desktop", root_b))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    first, second = (json_line(o[0]) for o in outs)
    n = first["new_records"]
    assert n > 1000 and second["new_records"] == n
    assert (first["machine"], second["machine"]) == ("laptop", "desktop")
    by_machine = dict(rows(postgres_server, postgres_url,
                           "SELECT machine, COUNT(*) FROM records GROUP BY machine"))
    assert by_machine == {"laptop": n, "desktop": n}
    # A third machine with the very paths of the first: sources of its own, not the laptop's.
    third = pg_ingest(home, postgres_url, shared_projects, machine="server")
    assert third["new_records"] == n and third["files_read"] == third["files"]
    for machine, root in (("laptop", shared_projects), ("desktop", root_b)):
        assert pg_ingest(home, postgres_url, root, machine=machine)["new_records"] == 0
    assert rows(postgres_server, postgres_url,
                "SELECT machine, COUNT(*) FROM sources GROUP BY machine ORDER BY machine") == [
        ("desktop", first["files"]), ("laptop", first["files"]), ("server", first["files"])]
    assert rows(postgres_server, postgres_url,
                "SELECT COUNT(*) FROM (SELECT source_id, line_key, part FROM records "
                "GROUP BY 1, 2, 3 HAVING COUNT(*) > 1) d") == [(0,)]
    # Sessions are one row each, whichever machines hold them.
    assert rows(postgres_server, postgres_url, "SELECT COUNT(*) FROM sessions")[0][0] == \
        first["sessions"]


# -- one ingester per machine -------------------------------------------------------------------


def test_one_ingester_per_machine_waits_or_reports_the_holder(
        postgres_server: PgServer, postgres_url: str, home: Path, tmp_path: Path) -> None:
    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000beef"
    write(root / PROJECT / f"{session}.jsonl", conversation(session, 6))
    pg_ingest(home, postgres_url, tmp_path / "nothing")  # creates the tables
    import psycopg

    holder = psycopg.connect(postgres_url, autocommit=True, application_name="deja 4242")
    try:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("m1"),)).fetchone()[0]
        busy = deja(home, "--db", postgres_url, "ingest", "--root", str(root), "--wait", "1",
                    "--json", env={"DEJA_MACHINE": "m1"}, expect=1)
        one_clear_line(busy, "pid 4242", "'m1'", "--wait")
        # Another machine is not held up by m1's lock.
        assert pg_ingest(home, postgres_url, root, machine="m2")["new_records"] == 6
        # A waiting ingest goes on once the holder lets go.
        waiting = subprocess.Popen(deja_argv("--db", postgres_url, "ingest", "--root", str(root),
                                             "--wait", "30"),
                                   env=deja_env(home, {"DEJA_MACHINE": "m1"}), cwd=str(REPO),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert waiting.poll() is None, waiting.communicate()
        holder.execute("SELECT pg_advisory_unlock(%s)", (lock_key("m1"),))
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "(pid 4242) is ingesting machine 'm1'; waiting up to 30 s" in err
        assert "new records: 6" in out
    finally:
        holder.close()
    # A holder killed with -9 leaves no lock behind: the server ends its session.
    killed = subprocess.Popen([sys.executable, "-c", _HOLD_AND_SLEEP, postgres_url,
                               str(lock_key("m3"))], stdout=subprocess.PIPE, text=True)
    assert killed.stdout is not None and killed.stdout.readline().strip() == "held"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close()
    assert pg_ingest(home, postgres_url, root, machine="m3", timeout=60)["new_records"] == 6


_HOLD_AND_SLEEP = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
assert conn.execute("SELECT pg_try_advisory_lock(%s)", (int(sys.argv[2]),)).fetchone()[0]
print("held", flush=True)
time.sleep(60)
"""


# -- secrets ------------------------------------------------------------------------------------


def test_planted_secrets_never_reach_the_server(postgres_server: PgServer, postgres_url: str,
                                                home: Path, tmp_path: Path) -> None:
    from test_secrets import _plant, make_secrets

    planted = make_secrets()
    root = tmp_path / "projects"
    _plant(root, planted)
    summary = pg_ingest(home, postgres_url, root)
    assert summary["redactions"] > 0 and summary["skipped_lines"] == 0
    dumped = "\n".join(str(r) for r in rows(postgres_server, postgres_url, """
        SELECT text || COALESCE(meta::text, '') FROM records
        UNION ALL SELECT COALESCE(title, '') || COALESCE(agent_name, '') FROM sessions
        UNION ALL SELECT COALESCE(description, '') FROM agent_runs
        UNION ALL SELECT display_path FROM sources"""))
    assert "[REDACTED:" in dumped and "[REDACTED:url_password]" in dumped
    low = dumped.lower()
    leaks = [name for name, (_, secret, piece) in planted.items()
             for needle in {secret, piece} if needle.lower() in low]
    assert not leaks, leaks
    # Nor the server's files: its data files and write-ahead log, once checkpointed.
    with postgres_server.connect() as conn:
        conn.execute("CHECKPOINT")
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s",
                           (_database(postgres_url),)).fetchone()[0]
    folder = postgres_server.socket_dir
    files = [p for sub in (folder / "base" / str(oid), folder / "pg_wal")
             for p in sub.rglob("*") if p.is_file()]
    wal_holds_markers = False
    for path in files:
        data = path.read_bytes()
        wal_holds_markers |= path.parent.name == "pg_wal" and b"[REDACTED:" in data
        for name, (_, secret, piece) in planted.items():
            for needle in {secret, piece}:
                assert needle.encode() not in data, f"{name} in {path}"
    assert wal_holds_markers, "expected the write-ahead log to hold the redacted records"


# -- failures: one line each, no password ---------------------------------------------------------


def test_unreachable_server_is_one_clear_line(home: Path, tmp_path: Path) -> None:
    url = "postgresql://deja:s3cret-pw-never-shown@127.0.0.1:1/deja"
    for command in (["ingest", "--root", str(tmp_path)], ["stats"]):
        proc = deja(home, "--db", url, *command, expect=1, timeout=60)
        line = one_clear_line(proc, "cannot connect to PostgreSQL at "
                                    "postgresql://deja@127.0.0.1:1/deja")
        assert "s3cret" not in line
    assert not (REPO / "postgresql:").exists()


def test_wrong_password_is_one_clear_line_without_the_password(
        postgres_server: PgServer, home: Path, tmp_path: Path) -> None:
    database = postgres_server.new_database(owner=PASSWORD_ROLE)
    wrong = "not-the-Password-42"
    url = postgres_server.role_uri(PASSWORD_ROLE, database, wrong)
    proc = deja(home, "--db", url, "ingest", "--root", str(tmp_path), expect=1)
    one_clear_line(proc, "password authentication failed", PASSWORD_ROLE)
    assert wrong not in proc.stderr
    # Nor in the debug log on stderr.
    proc = deja(home, "-vv", "--db", url, "ingest", "--root", str(tmp_path), expect=1)
    assert "password authentication failed" in proc.stderr and wrong not in proc.stderr
    # The password from the environment (libpq's PGPASSWORD) is not shown either.
    env_url = postgres_server.role_uri(PASSWORD_ROLE, database)
    proc = deja(home, "--db", env_url, "ingest", "--root", str(tmp_path), expect=1,
                env={"PGPASSWORD": wrong})
    one_clear_line(proc, "password authentication failed")
    assert wrong not in proc.stderr
    # The right one works, from a password file (PGPASSFILE) as libpq reads it.
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{PASSWORD_ROLE}:{postgres_server.password}\n")
    passfile.chmod(0o600)
    # The role may create the tables (it owns the database), not the extension: a superuser
    # puts pgvector in first, as a team's administrator would.
    with postgres_server.connect(database) as conn:
        conn.execute("CREATE EXTENSION vector")
    summary = deja_json(home, "--db", env_url, "ingest", "--root", str(tmp_path), "--json",
                        env={"PGPASSFILE": str(passfile)})
    assert summary["new_records"] == 0 and postgres_server.password not in json.dumps(summary)


def test_database_without_the_vector_extension_is_one_clear_line(
        postgres_server: PgServer, home: Path, tmp_path: Path) -> None:
    database = postgres_server.new_database(owner=PLAIN_ROLE)
    url = postgres_server.role_uri(PLAIN_ROLE, database)
    proc = deja(home, "--db", url, "ingest", "--root", str(tmp_path), expect=1)
    one_clear_line(proc, "no `vector` extension", "CREATE EXTENSION vector")
    assert rows(postgres_server, postgres_server.uri(database),
                "SELECT to_regclass('records') IS NULL") == [(True,)]


def test_stats_of_a_database_deja_never_wrote_creates_nothing(
        postgres_server: PgServer, postgres_url: str, home: Path) -> None:
    proc = deja(home, "--db", postgres_url, "stats", "--json", expect=1)
    one_clear_line(proc, "no deja tables", "run `deja ingest`")
    assert rows(postgres_server, postgres_url,
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert rows(postgres_server, postgres_url, "SELECT COUNT(*) FROM pg_extension "
                                               "WHERE extname = 'vector'") == [(0,)]


def test_schema_of_a_newer_deja_is_refused(postgres_server: PgServer, postgres_url: str,
                                           home: Path, tmp_path: Path) -> None:
    pg_ingest(home, postgres_url, tmp_path)
    with postgres_server.connect(_database(postgres_url)) as conn:
        conn.execute("UPDATE deja_schema SET version = 99")
    proc = deja(home, "--db", postgres_url, "ingest", "--root", str(tmp_path), expect=1)
    one_clear_line(proc, "schema version 99", "upgrade deja")


def test_a_hook_on_an_unreachable_server_fails_open_in_one_line(home: Path) -> None:
    url = "postgres://deja:pw-not-shown@db.example/memory"
    hook = subprocess.run(deja_argv("--db", url, "hook", "session-start"),
                          input='{"session_id": "s", "cwd": "/tmp"}', capture_output=True,
                          text=True, timeout=60, cwd=str(REPO), env=deja_env(home))
    assert hook.returncode == 0 and hook.stdout == ""  # hooks fail open
    assert "PostgreSQL" in hook.stderr and "pw-not-shown" not in hook.stderr, hook.stderr
    assert len(hook.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [
    ["show", "abc"], ["sessions"], ["stats", "--since", "7d"],
    ["export", "--format", "jsonl", "-"], ["import", "-"]])
def test_read_commands_on_an_unreachable_server_say_so_in_one_line(home: Path,
                                                                    command: list[str]) -> None:
    url = "postgresql://deja:pw-not-shown@/memory?host=/nonexistent-socket-dir"
    proc = deja(home, "--db", url, *command, expect=1, input='{"type":"header"}\n', timeout=30)
    line = one_clear_line(proc, "cannot connect to PostgreSQL", "postgresql://deja@/memory")
    assert "pw-not-shown" not in line
