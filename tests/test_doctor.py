"""`deja doctor`: its JSON structure, its figures against the database, and broken databases.

Each test runs `deja doctor` as a subprocess; the figures it reports (records
awaiting vectors, records of transcripts deleted from disk) are compared with
what the test counts itself, in SQL and on disk. The checks of a working
database and of Claude Code's setup run on both engines (the `engine`
fixture; PostgreSQL's list has the server's checks in place of the file's);
a file that is not a database, or cannot be read, is SQLite's own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fixtures.cli import deja
from fixtures.engines import Target, is_postgres, sql
from fixtures.privileges import permission_bound

from mcp_server.install.entries import Invocation, with_hooks, with_server

NAMES = ["database", "integrity", "schema", "sqlite_vec", "fts5", "model", "onnx_cache",
         "embeddings", "multilingual", "transcripts", "last_ingest", "retention", "mcp", "hooks", "ingest_lock"]
# Also `password` when the URL holds one, `mcp_database` when Claude Code has a deja server.
PG_NAMES = ["connection", "server", "pgvector", "schema", "privileges", "model", "onnx_cache",
            "embeddings", "transcripts", "last_ingest", "retention", "mcp", "hooks",
            "ingest_lock"]
# Two of the shared corpus's projects (13 transcripts): enough for every figure, quick to ingest.
PROJECTS = ("-experiments-worktrees", "-home-cwtrocks-android-avd")


def _doctor(home: Path, db: Target, expect: int) -> dict[str, Any]:
    proc = deja(home, "--db", str(db), "doctor", "--json", expect=expect)
    assert "Traceback" not in proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _doctor_env(home: Path, db: Target, env: dict[str, str]) -> dict[str, Any]:
    proc = deja(home, "--db", str(db), "doctor", "--json", expect=0, env=env)
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_doctor_json_on_the_shared_corpus(tmp_path: Path, shared_projects: Path,
                                          db_target: Target) -> None:
    home = tmp_path / "home"
    projects = home / ".claude" / "projects"
    for name in PROJECTS:
        shutil.copytree(shared_projects / name, projects / name)
    db = db_target
    deja(home, "--db", str(db), "ingest", "--json", "--no-embed")
    # Claude Code's clean-up deletes a transcript: deja keeps its records.
    gone = max(projects.rglob("*.jsonl"), key=lambda p: p.stat().st_size)
    gone.unlink()
    (home / ".claude" / "settings.json").write_text(json.dumps({"cleanupPeriodDays": 7}))

    report = _doctor(home, db, expect=0)
    assert set(report) == {"ok", "database", "summary", "checks"}
    assert report["ok"] is True and report["database"] == str(db)
    assert [c["name"] for c in report["checks"]] == (PG_NAMES if is_postgres(db) else NAMES)
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("ok", "warn", "fail")
        assert check["status"] == "ok" or check["fix"], check
    assert report["summary"] == {s: sum(c["status"] == s for c in report["checks"])
                                 for s in ("ok", "warn", "fail")}
    checks = _by_name(report)
    assert checks["schema"]["status"] == "ok"
    assert checks["integrity" if not is_postgres(db) else "privileges"]["status"] == "ok"
    pending = sql(db, "SELECT COUNT(*) FROM records WHERE embed_state = 0")[0][0]
    assert pending > 0 and checks["embeddings"]["status"] == "warn"
    assert f"{pending} records" in checks["embeddings"]["detail"]
    # Not embedded yet: with the extra, every record is still to be looked at for a
    # multilingual vector; switched off, the check says so and is fine (SQLite's extra).
    if not is_postgres(db):
        if checks["multilingual"]["status"] == "warn":
            assert "0 multilingual vectors" in checks["multilingual"]["detail"]
        else:
            assert "not installed" in checks["multilingual"]["detail"]
        off = _by_name(_doctor_env(home, db, {"DEJA_MULTILINGUAL": "0"}))
        assert off["multilingual"]["status"] == "ok" and \
            "switched off" in off["multilingual"]["detail"]
    held = sql(db, "SELECT COUNT(*) FROM records r JOIN sources s ON s.id = r.source_id "
                   "WHERE s.display_path = ?", (str(gone),))[0][0]
    assert held > 0
    assert "after 7 days" in checks["retention"]["detail"]
    if is_postgres(db):  # a shared database's files are many machines': not counted here
        assert "deja holds" not in checks["retention"]["detail"]
    else:
        assert f"deja holds {held} records of 1 transcripts" in checks["retention"]["detail"]
    files = len(list(projects.rglob("*.jsonl")))
    assert checks["transcripts"]["detail"].startswith(f"{files} transcripts under {projects}")
    assert checks["mcp"]["status"] == "warn" and checks["hooks"]["status"] == "warn"


def test_doctor_recognises_installed_entries(tmp_path: Path, db_target: Target) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    invocation = Invocation("/opt/deja/bin/deja", None, False)
    (home / ".claude" / "settings.json").write_text(
        json.dumps(with_hooks({"hooks": {}}, invocation, "settings.json")))
    (home / ".claude.json").write_text(json.dumps(with_server({}, invocation, ".claude.json")))
    db = db_target if is_postgres(db_target) else tmp_path / "none.db"
    checks = _by_name(_doctor(home, db, expect=1))
    assert checks["mcp"]["status"] == "ok" and checks["hooks"]["status"] == "ok"
    if is_postgres(db):  # an empty database: the server is fine, deja's tables are missing
        assert checks["connection"]["status"] == "ok" and checks["schema"]["status"] == "fail"
        assert "no deja tables" in checks["schema"]["detail"]
    else:
        assert checks["database"]["status"] == "fail"
        assert "no database at" in checks["database"]["detail"]
    assert checks["retention"]["detail"].startswith(
        "Claude Code deletes transcripts after 30 days (the default)")


def test_doctor_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bad = tmp_path / "notes.db"
    bad.write_text("these are my notes, not a database\n" * 20)
    proc = deja(home, "--db", str(bad), "doctor", expect=1)
    assert f"FAIL  database: {bad} is not a SQLite database" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    report = _doctor(home, bad, expect=1)
    assert report["ok"] is False and _by_name(report)["database"]["status"] == "fail"
    # A SQLite header over garbage: quick_check or the open says it is damaged.
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    broken.chmod(0o600)
    checks = _by_name(_doctor(home, broken, expect=1))
    assert checks["integrity"]["status"] == "fail"
    assert "schema" not in checks and "embeddings" not in checks


def test_doctor_on_an_unreadable_database(tmp_path: Path) -> None:
    prefix = permission_bound(tmp_path)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    db = tmp_path / "data" / "deja.db"
    deja(home, "--db", str(db), "ingest", "--root", str(tmp_path / "nothing"), "--json",
         "--no-embed")
    db.chmod(0o000)
    try:
        proc = deja(home, "--db", str(db), "doctor", prefix=prefix, expect=1)
    finally:
        db.chmod(0o600)
    assert f"FAIL  database: cannot read {db}: Permission denied" in proc.stdout
    assert "chmod 600" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
