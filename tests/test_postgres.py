"""The PostgreSQL engine's own: what only a shared server has (issue 11).

What both engines do alike is tested on both, parametrized by the `engine`
fixture: exactly once (test_exactly_once.py), bad input (test_bad_input.py),
kill -9 at random instants and the server ending the session
(test_crash.py), planted secrets never reaching the server's files
(test_secrets.py, test_not_stored.py), the shared corpus ingested as on
SQLite (test_shared_corpus.py). Here, against a real PostgreSQL 16 + pgvector
started by pgserver (fixtures/postgres.py, one server per run, a fresh
database per test), through the real CLI as a subprocess:

- `python -m ingest` takes a URL; `ingest --watch` follows a file until SIGTERM;
- three machines (DEJA_MACHINE) ingest into one database at once, two of them
  from the very same paths: each record arrives once per machine, each machine
  has its own sources;
- one ingester per machine: a held advisory lock makes the second wait, or
  report its holder when the wait runs out; another machine is not held up;
- an unreachable server, a wrong password, a database without the `vector`
  extension, a schema of a newer deja each give one clear line, no traceback,
  no password (a hook exits 0 with it; the read commands exit 1).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
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


# -- the standalone command, the watcher --------------------------------------------------------


def test_python_m_ingest_takes_a_url(postgres_server: PgServer, postgres_url: str,
                                     home: Path, tmp_path: Path) -> None:
    """`python -m ingest`, the standalone command, writes to PostgreSQL as `deja ingest` does
    (whose exactly-once tests run on both engines: test_exactly_once.py)."""
    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000abcd"
    path = write(root / PROJECT / f"{session}.jsonl", conversation(session, 4))
    proc = subprocess.run([sys.executable, "-m", "ingest", "--db", postgres_url, "--root",
                           str(root), "--json"], capture_output=True, text=True,
                          env=deja_env(home, {"DEJA_MACHINE": "m1"}), cwd=str(REPO), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json_line(proc.stdout)["new_records"] == 4
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


def _count(server: PgServer, url: str) -> int:
    """The records in the database at `url` (0 before its tables exist)."""
    return int(rows(server, url, "SELECT COUNT(*) FROM records")[0][0]) \
        if _has_tables(server, url) else 0


def _has_tables(server: PgServer, url: str) -> bool:
    """The schema is created in one transaction: all of deja's tables, or none."""
    return bool(rows(server, url, "SELECT to_regclass('deja_schema') IS NOT NULL")[0][0])


# -- two machines, one database ---------------------------------------------------------------


def test_two_machines_ingest_into_one_database_each_record_once(
        shared_projects: Path, postgres_server: PgServer, postgres_url: str, home: Path,
        tmp_path: Path) -> None:
    """Three at once: a laptop, a desktop with a copy of its files, and a server with the very
    paths of the laptop (sources of its own, not the laptop's)."""
    root_b = tmp_path / "b" / "projects"
    shutil.copytree(shared_projects, root_b)
    machines = (("laptop", shared_projects), ("desktop", root_b), ("server", shared_projects))
    procs = [subprocess.Popen(deja_argv("--db", postgres_url, "ingest", "--root", str(root),
                                        "--json", "--no-embed"),
                              env=deja_env(home, {"DEJA_MACHINE": machine}), cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for machine, root in machines]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    summaries = [json_line(o[0]) for o in outs]
    first = summaries[0]
    n = first["new_records"]
    assert n > 1000 and [s["new_records"] for s in summaries] == [n, n, n]
    assert [s["files_read"] for s in summaries] == [first["files"]] * 3
    assert [s["machine"] for s in summaries] == ["laptop", "desktop", "server"]
    by_machine = dict(rows(postgres_server, postgres_url,
                           "SELECT machine, COUNT(*) FROM records GROUP BY machine"))
    assert by_machine == {"laptop": n, "desktop": n, "server": n}
    for machine, root in machines[:2]:
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
