"""What only PostgreSQL has, and the two engines' answers compared with each other.

Each command's own behaviour is tested on both engines by the parametrized CLI
tests (test_history_views, test_stats, test_exchange, test_cli_*, test_doctor).
Here: `deja sessions`/`show` answer exactly the same on both (record handles
aside: each engine numbers its own records), a history moves between the
engines through export and import exactly once, a wrong password in doctor,
and a URL in Claude Code's configuration. The shared transcripts are the run's
ingest on each engine (fixtures/engine_corpus.py). No mock: a real server
(fixtures/postgres.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja, deja_json
from fixtures.db import sql
from fixtures.engine_corpus import Corpora
from fixtures.postgres import PASSWORD_ROLE, PgServer

COMPACTED = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
ENGINES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Both:
    """The corpus in each engine; `db(engine)` is what `--db` takes for it."""

    home: Path
    sqlite: Path
    url: str

    def db(self, engine: str) -> str:
        return self.url if engine == "postgresql" else str(self.sqlite)


@pytest.fixture
def both(corpora: Corpora, postgres_server: PgServer) -> Both:
    lite, pg = corpora.get("sqlite"), corpora.get("postgres", postgres_server)
    return Both(lite.home, Path(lite.target), str(pg.target))


def _same(text: str) -> str:
    """An answer without each engine's own record ids and PostgreSQL's `machine` keys (only
    its answers say the machine)."""
    text = re.sub(r', "machine": "[^"]*"|"machine": "[^"]*", ', "", text)
    return re.sub(r"rec:\d+|\"record_id\": \d+", "rec", text)


def test_sessions_and_show_answer_the_same_on_both_engines(both: Both) -> None:
    answers: dict[str, list[str]] = {}
    uuid = sql(both.sqlite, "SELECT uuid FROM records WHERE session_id = ? AND kind = 'prompt' "
               "ORDER BY id LIMIT 1", (COMPACTED,))[0][0]
    for engine in ENGINES:
        db = both.db(engine)
        answers[engine] = [_same(deja(both.home, "--db", db, *args).stdout) for args in (
            ("sessions", "--json"),
            ("sessions",),  # the plain view, piped
            ("sessions", "--project", "all", "--since", "2026-06-03", "--format", "markdown"),
            ("show", COMPACTED[:8], "--json"),
            ("show", COMPACTED, "--around", uuid, "--context", "3", "--json"),
            ("show", uuid, "--json"),  # the turns around a line
            ("show", COMPACTED, "--format", "html"),
        )]
    assert json.loads(answers["postgresql"][0])["sessions"], "no sessions at all"
    for sqlite_answer, pg_answer in zip(answers["sqlite"], answers["postgresql"]):
        assert pg_answer == sqlite_answer
    missing = [deja(both.home, "--db", both.db(e), "show", "0000000000", expect=None)
               for e in ENGINES]
    assert [p.returncode for p in missing] == [1, 1]
    assert missing[0].stderr == missing[1].stderr


def test_stats_analytics_are_the_same_on_both_engines(both: Both) -> None:
    """Beyond what test_stats checks on each engine against the transcripts: every figure,
    filtered, equal on both."""
    filters = ("--since", "2026-06-03", "--top", "5")
    lite, pg = (deja_json(both.home, "--db", both.db(e), "stats", "--json", *filters)
                for e in ENGINES)
    # Snowball stems (tsvector) against Porter stems (FTS5): the same walk, other terms.
    assert pg.pop("top_terms") and lite.pop("top_terms")
    for key in ("database", "database_bytes", "engine", "machine", "records_by_machine",
                "last_ingest"):
        pg.pop(key, None)
        lite.pop(key, None)
    assert pg == lite
    assert pg["tools"] and pg["tokens"]["output"] > 0


def test_export_round_trips_between_engines_exactly_once(both: Both, tmp_path: Path,
                                                         postgres_url: str) -> None:
    home = both.home
    pg_file, lite_file = tmp_path / "pg.jsonl", tmp_path / "lite.jsonl"
    deja(home, "--db", both.url, "export", "--format", "jsonl", str(pg_file))
    deja(home, "--db", str(both.sqlite), "export", "--format", "jsonl", str(lite_file))
    pg_lines = [json.loads(line) for line in pg_file.read_text().splitlines()]
    assert pg_lines[0]["engine"] == "postgresql"
    machines = {o.get("machine") for o in pg_lines[1:] if o["type"] in ("source", "record")}
    assert len(machines) == 1 and None not in machines  # each file and record knows its machine
    (ingest_machine,) = machines

    # PostgreSQL -> SQLite: the same history the SQLite ingest made (importing twice adds
    # nothing on either engine: test_exchange).
    back = tmp_path / "back.db"
    first = deja_json(home, "--db", str(back), "import", str(pg_file), "--json")["added"]
    assert first["records"] == len([o for o in pg_lines if o["type"] == "record"])
    back_file = tmp_path / "back.jsonl"
    deja(home, "--db", str(back), "export", "--format", "jsonl", str(back_file))
    strip = _lines_without_machine
    assert strip(back_file) == strip(lite_file) == strip(pg_file)

    # SQLite -> PostgreSQL, as another machine: its own sources.
    env = {"DEJA_MACHINE": "laptop-b"}
    added = deja_json(home, "--db", postgres_url, "import", str(lite_file), "--json",
                      env=env)["added"]
    assert added == first
    # It reads as the history it came from.
    assert _same(deja(home, "--db", postgres_url, "show", COMPACTED, "--json").stdout) == \
        _same(deja(home, "--db", str(both.sqlite), "show", COMPACTED, "--json").stdout)
    # The PostgreSQL export keeps its machine: the same paths, another machine's files.
    deja_json(home, "--db", postgres_url, "import", str(pg_file), "--json", env=env)
    stats = deja_json(home, "--db", postgres_url, "stats", "--json")
    assert stats["records_by_machine"] == {"laptop-b": first["records"],
                                           ingest_machine: first["records"]}
    assert stats["sessions"] == first["sessions"]  # one session, seen from two machines


def _lines_without_machine(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    for obj in lines:
        obj.pop("machine", None)
    return lines


def test_doctor_with_a_wrong_password_fails_the_connection_without_it(
        both: Both, postgres_server: PgServer) -> None:
    # A wrong password: a failed connection, worded, the password nowhere (the checks of a
    # working server and of an empty database: test_doctor, on both engines).
    secret = "not-the-password-42"
    url = postgres_server.role_uri(PASSWORD_ROLE, "postgres", secret)
    wrong = deja(both.home, "--db", url, "doctor", "--json", expect=1)
    checks = {c["name"]: c for c in json.loads(wrong.stdout)["checks"]}
    assert checks["connection"]["status"] == "fail"
    assert "password authentication failed" in checks["connection"]["detail"]
    assert checks["password"]["status"] == "warn"
    assert secret not in wrong.stdout + wrong.stderr and "Traceback" not in wrong.stderr


def test_install_with_a_url_keeps_it_in_the_environment(both: Both, tmp_path: Path,
                                                        postgres_server: PgServer) -> None:
    home = tmp_path / "home"
    home.mkdir()
    secret = "pw-in-the-url-7"
    url = postgres_server.role_uri(PASSWORD_ROLE, "deja", secret)
    shown = deja(home, "--db", url, "install", "--no-claude-cli", "--yes")
    assert secret not in shown.stdout + shown.stderr
    assert "holds a password" in shown.stdout and "***" in shown.stdout
    server = json.loads((home / ".claude.json").read_text())["mcpServers"]["deja"]
    assert server["args"] == ["serve"] and server["env"] == {"DEJA_DB": url}
    hooks = (home / ".claude" / "settings.json").read_text()
    assert hooks.count("DEJA_DB=") == 5 and "--db" not in hooks

    # Without the password, from DEJA_DB: the entry is updated; again changes nothing.
    plain = both.url
    deja(home, "install", "--no-claude-cli", "--yes", env={"DEJA_DB": plain})
    server = json.loads((home / ".claude.json").read_text())["mcpServers"]["deja"]
    assert server["env"] == {"DEJA_DB": plain}
    assert "nothing to change" in deja(home, "install", "--no-claude-cli", "--yes",
                                       env={"DEJA_DB": plain}).stdout
    checks = {c["name"]: c for c in deja_json(home, "--db", plain, "doctor", "--json",
                                              expect=None)["checks"]}
    assert checks["mcp"]["status"] == checks["hooks"]["status"] == "ok"
    assert checks["mcp_database"]["status"] == "ok"
    # Back to the SQLite default: no URL left in the server's environment.
    deja(home, "install", "--no-claude-cli", "--yes")
    server = json.loads((home / ".claude.json").read_text())["mcpServers"]["deja"]
    assert server["env"] == {} and "DEJA_DB" not in (home / ".claude" / "settings.json").read_text()
    deja(home, "--db", plain, "install", "--no-claude-cli", "--yes")
    deja(home, "uninstall", "--no-claude-cli", "--yes", env={"DEJA_DB": plain})
    assert not (home / ".claude.json").exists()
