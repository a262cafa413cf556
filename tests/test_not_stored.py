"""What deja does not store: `<private>` text, excluded projects (and, in test_hooks.py,
its own injected context written back into a transcript).

On both engines (the `engine` fixture): on PostgreSQL the private words are looked
for in the server's write-ahead log (all it wrote) as on SQLite in the database
file and its WAL. They are made up afresh on every run,
since the server's log holds what every test of the run wrote.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fixtures.cli import deja, deja_argv, deja_env, deja_json
from fixtures.engines import Target, is_postgres, sql
from fixtures.paths import REPO
from fixtures.targets import server_files, wal_position
from fixtures.transcripts import SessionFile

START = datetime(2026, 4, 1, 9, 0, tzinfo=timezone.utc)


def _session(root: Path, project: str, cwd: str, sid: str, word: str) -> SessionFile:
    s = SessionFile(root, project, sid, cwd, START)
    s.prompt(f"refactor the {word} module")
    s.say(f"The {word} module is refactored.")
    s.save()
    return s


def test_private_text_is_replaced_like_a_secret(home: Path, db_target: Target, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    db = db_target
    wallaby, kinkajou = (f"{word}{secrets.token_hex(4)}" for word in ("wallaby", "kinkajou"))
    root = tmp_path / "projects"
    s = SessionFile(root, "-home-dev-gizmo", "7a000000-0000-4000-8000-000000000001",
                    "/home/dev/gizmo", START)
    s.prompt(f"ship the release today <private>my doctor said {wallaby} syndrome</private> "
             "and tag it v2")
    s.prompt(f"<PRIVATE>the {kinkajou} password story, never closed")
    s.save()
    server = request.getfixturevalue("postgres_server") if is_postgres(db) else None
    since = wal_position(server) if server else None
    summary = deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--json",
                        "--no-embed")
    assert summary["redactions_by_kind"]["private"] == 2
    texts = [t for (t,) in sql(db, "SELECT text FROM records WHERE kind = 'prompt' ORDER BY id")]
    assert texts == ["ship the release today [REDACTED:private] and tag it v2", "[REDACTED:private]"]
    for word in (wallaby, kinkajou):
        found = deja_json(home, "--db", str(db), "search", word, "--mode", "keyword", "--json")
        assert found["hits"] == [], word
    if server:
        # the write-ahead log: everything the server wrote (test_secrets.py reads the
        # data files too)
        raw = b"".join(server_files(server, str(db), since, data_files=False).values())
        assert b"[REDACTED:private]" in raw
    else:
        raw = b"".join(p.read_bytes() for p in Path(db).parent.glob("deja.db*"))
    assert wallaby.encode() not in raw and kinkajou.encode() not in raw

    # A compaction summary handed to the PostCompact hook is redacted the same way.
    hook = subprocess.run(
        deja_argv("--db", str(db), "hook", "post-compact"), capture_output=True, text=True,
        timeout=60, cwd=str(REPO), env=deja_env(home),
        input=json.dumps({"session_id": s.session_id, "transcript_path": str(s.path),
                          "cwd": s.cwd, "trigger": "auto",
                          "compact_summary": f"7. Pending Tasks:\n- tag v2 <private>{wallaby}"
                                             "</private>"}))
    assert hook.returncode == 0 and hook.stderr == "", hook.stderr
    memory = sql(db, "SELECT text FROM records WHERE kind = 'memory'")[0][0]
    assert "[REDACTED:private]" in memory and wallaby not in memory


def test_excluded_projects_are_not_ingested(home: Path, db_target: Target, tmp_path: Path) -> None:
    db = ("--db", str(db_target))
    root = tmp_path / "projects"
    kept = _session(root, "-home-dev-gizmo", "/home/dev/gizmo",
                    "7b000000-0000-4000-8000-000000000001", "pangolin")
    secret = _session(root, "-home-dev-clients-acme", "/home/dev/clients/acme",
                      "7b000000-0000-4000-8000-000000000002", "ocelot")
    # A folder name that does not say the path (renamed): the cwd in its lines does.
    moved = _session(root, "-renamed-folder", "/home/dev/clients/acme/api",
                     "7b000000-0000-4000-8000-000000000003", "tapir")
    config = tmp_path / "deja.toml"
    env = {"DEJA_CONFIG": str(config)}
    config.write_text('exclude = ["~/../../home/dev/clients/acme-never", "/home/dev/clients/*"]\n')
    summary = deja_json(home, *db, "ingest", "--root", str(root), "--json", "--no-embed",
                        env=env)
    assert summary["new_records"] == 2
    sessions = {r[0] for r in sql(db_target, "SELECT session_id FROM sessions")}
    assert sessions == {kept.session_id}
    assert sql(db_target, "SELECT COUNT(*) FROM sources")[0][0] == 1  # not even registered

    # The hooks do nothing for it either: no records, no checkpoint, no context.
    for event in ("pre-compact", "session-end", "session-start"):
        proc = subprocess.run(
            deja_argv(*db, "hook", event), capture_output=True, text=True, timeout=60,
            cwd=str(REPO), env=deja_env(home, env),
            input=json.dumps({"session_id": secret.session_id, "source": "startup",
                              "transcript_path": str(secret.path), "cwd": secret.cwd}))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc.stderr
    assert {r[0] for r in sql(db_target, "SELECT session_id FROM sessions")} == {kept.session_id}

    # An exact path excludes that folder and those below it, not its parent; `~` is HOME.
    (home / "dev").mkdir()
    config.write_text('exclude = ["/home/dev/clients/acme/api", "~/dev"]\n')
    summary = deja_json(home, *db, "ingest", "--root", str(root), "--json", "--no-embed",
                        env=env)
    assert summary["new_records"] == 2
    assert {r[0] for r in sql(db_target, "SELECT session_id FROM sessions")} == {
        kept.session_id, secret.session_id}
    config.write_text("")
    summary = deja_json(home, *db, "ingest", "--root", str(root), "--json", "--no-embed",
                        env=env)
    assert summary["new_records"] == 2  # the last one, once nothing excludes it
    assert moved.session_id in {r[0] for r in sql(db_target, "SELECT session_id FROM sessions")}


def test_the_server_keeps_excluded_projects_out(home: Path, db_target: Target,
                                                tmp_path: Path) -> None:
    db_path = db_target
    root = tmp_path / "projects"
    kept = _session(root, "-home-dev-gizmo", "/home/dev/gizmo",
                    "7c000000-0000-4000-8000-000000000001", "pangolin")
    _session(root, "-home-dev-clients-acme", "/home/dev/clients/acme",
             "7c000000-0000-4000-8000-000000000002", "ocelot")
    config = tmp_path / "deja.toml"
    config.write_text('exclude = ["/home/dev/clients"]\n')
    server = subprocess.Popen(deja_argv("--db", str(db_path), "serve", "--root", str(root)),
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=str(REPO),
                              env=deja_env(home, {"DEJA_CONFIG": str(config)}))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and server.poll() is None
            try:
                if sql(db_path, "SELECT COUNT(*) FROM records")[0][0] >= 2:
                    break
            except Exception:  # noqa: BLE001 - not created yet
                pass
            time.sleep(0.2)
        time.sleep(1.0)  # its pass is over: nothing more comes
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
    assert {r[0] for r in sql(db_path, "SELECT session_id FROM sessions")} == {kept.session_id}


def test_a_bad_settings_file_is_a_clear_error(home: Path, db_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "deja.toml"
    for text, words in (("exclude = [", "not valid TOML"), ("exclude = 3", "exclude"),
                        ("[hooks]\ncontext_chars = 'a'", "context_chars")):
        config.write_text(text)
        proc = deja(home, "ingest", "--root", str(tmp_path), "--no-embed", db=db_path,
                    env={"DEJA_CONFIG": str(config)}, expect=1)
        assert words in proc.stderr and str(config) in proc.stderr, proc.stderr
