"""Secrets never reach the database folder.

A synthetic transcript plants freshly generated secrets (the random parts are
new on every run, so no secret-looking literal lives in this repository) in
every place a transcript can carry text: prompts, assistant text, thinking,
tool inputs, tool results, compaction summaries, summaries, titles, subagent
meta files, workflow journals. After `deja ingest`, the raw bytes of every file
in the database folder (the database, its -wal and -shm, the lock) are searched
for each secret and for a distinctive piece of it, case-insensitively (FTS5
stores lowercased tokens).

On PostgreSQL (each test runs on both engines: the module ingests once per
engine) the server's files are searched instead: the database's data files and
the server's write-ahead log, after a CHECKPOINT. So that a grep of them means
something, the test database keeps every text, JSON and tsvector value
uncompressed (`SET STORAGE EXTERNAL`): PostgreSQL would otherwise compress a
long value (pglz), and a secret inside it would hide from the grep.
"""

from __future__ import annotations

import json
import secrets as rnd
import string
from pathlib import Path
from typing import Any

import pytest
import sqlean
from fixtures.cli import deja, deja_json
from fixtures.engines import ENGINES, Target, is_postgres, sql
from fixtures.postgres import PgServer
from fixtures.targets import server_files, wal_position
from fixtures.transcripts import PROJECT, assistant, line, tool_result, user, write

SESSION = "7e2d9c41-0b3a-4f5e-8d6c-1a2b3c4d5e6f"
ALNUM = string.ascii_letters + string.digits


def _r(n: int, alphabet: str = ALNUM) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def make_secrets() -> dict[str, tuple[str, str, str]]:
    """name -> (text to plant, the secret, a distinctive piece of it), all made up now."""
    upper = string.ascii_uppercase + string.digits
    b64 = ALNUM + "+/"
    aws = "AKIA" + _r(16, upper)
    aws_secret = _r(40, b64)
    ghp = "ghp_" + _r(36)
    gh_pat = "github_pat_" + _r(22) + "_" + _r(59)
    anthropic = "sk-ant-api03-" + _r(93, ALNUM + "-_") + "AA"
    openai = "sk-proj-" + _r(64, ALNUM + "-_")
    stripe = "sk_" + "live_" + _r(32)
    key_lines = [_r(64, b64) for _ in range(6)]
    private = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(key_lines) + "\n-----END RSA PRIVATE KEY-----"
    ossh_body = _r(70, b64)
    openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + ossh_body + "\n-----END OPENSSH PRIVATE KEY-----"
    pg_pw = _r(18)
    redis_pw = _r(18)
    django = _r(50, ALNUM + "!#%^&-_+=")
    api_token = _r(32)
    client_secret = _r(30)
    return {
        "aws_access_key": (f"AWS_ACCESS_KEY_ID={aws}", aws, aws[4:16]),
        "aws_secret_key": (f"aws_secret_access_key = {aws_secret}", aws_secret, aws_secret[10:26]),
        "github_token": (f"git push https://{ghp}@github.com/acme/x.git", ghp, ghp[8:24]),
        "github_pat": (f"token {gh_pat}", gh_pat, gh_pat[30:50]),
        "anthropic_key": (f"ANTHROPIC_API_KEY={anthropic}", anthropic, anthropic[40:60]),
        "openai_key": (f"client = OpenAI(api_key=\"{openai}\")", openai, openai[20:40]),
        "stripe_key": (f"stripe.api_key = '{stripe}'", stripe, stripe[12:28]),
        "private_key": (private, private, key_lines[2][10:30]),
        "openssh_key": (openssh, openssh, ossh_body[20:40]),
        "url_password": (f"DATABASE_URL=postgres://app:{pg_pw}@db.internal:5432/shop", pg_pw, pg_pw),
        "redis_password": (f"redis-cli -u redis://:{redis_pw}@cache:6379/0 ping", redis_pw, redis_pw),
        "secret_assignment": (f"DJANGO_SECRET={django}", django, django[15:35]),
        "token_assignment": (f"export GIZMO_API_TOKEN={api_token}", api_token, api_token[8:24]),
        "json_client_secret": (f'{{"client_secret": "{client_secret}"}}', client_secret,
                               client_secret[6:22]),
    }


EXPECTED_KINDS = {"aws_access_key", "github_token", "anthropic_key", "openai_key", "stripe_key",
                  "private_key", "url_password", "secret_assignment"}


def _plant(root: Path, s: dict[str, tuple[str, str, str]]) -> int:
    """Write transcripts carrying every secret in every kind of place; returns the plantings."""
    t = {k: v[0] for k, v in s.items()}
    everything = "\n".join(t.values())
    planted = 0
    lines: list[bytes] = []

    def add(b: bytes, n: int) -> None:
        nonlocal planted
        lines.append(b)
        planted += n

    n_all = len(t)
    # Prompts: a typed string, and text blocks.
    add(user(SESSION, "p-1", f"Here is my config, please check it:\n{everything}"), n_all)
    add(user(SESSION, "p-2", [{"type": "text", "text": t["openai_key"]},
                              {"type": "text", "text": t["url_password"]}]), 2)
    # Thinking, assistant text and tool inputs.
    add(assistant(SESSION, "a-1", [
        {"type": "thinking", "thinking": f"The user pasted secrets: {everything}", "signature": "c2ln"},
        {"type": "text", "text": f"I found these credentials: {t['aws_access_key']} and {t['stripe_key']}"},
        {"type": "tool_use", "id": "toolu_01Write", "name": "Write",
         "input": {"file_path": "/home/dev/gizmo/.env", "content": everything}},
        {"type": "tool_use", "id": "toolu_01Bash", "name": "Bash",
         "input": {"command": t["redis_password"], "description": "ping redis"}},
    ]), n_all + 2 + n_all + 1)
    # Tool results: a string, text blocks, and an empty content with the output in toolUseResult.
    add(tool_result(SESSION, "r-1", "toolu_01Write", f"cat .env\n{everything}\n"), n_all)
    add(tool_result(SESSION, "r-2", "toolu_01Bash",
                    [{"type": "text", "text": t["private_key"]},
                     {"type": "text", "text": t["github_pat"]}]), 2)
    add(tool_result(SESSION, "r-3", "toolu_01Env", "",
                    toolUseResult={"stdout": t["anthropic_key"], "stderr": "", "interrupted": False}), 1)
    # A huge result: a secret straddling the 64 KB cap, and one far beyond it (cut off, never stored).
    add(tool_result(SESSION, "r-4", "toolu_01Big", "x" * (64 * 1024 - 40) + " " + t["openssh_key"] + " " +
                    "y" * 100_000 + t["github_token"]), 1)
    # Compaction summary, summary line, system error, attachment, titles, agent name.
    add(user(SESSION, "c-1", "This session is being continued from a previous conversation. " +
             t["secret_assignment"], isCompactSummary=True), 1)
    add(line({"type": "summary", "summary": f"Rotated {t['token_assignment']}", "leafUuid": "leaf-1"}), 1)
    add(line({"type": "system", "subtype": "api_error", "uuid": "e-1", "sessionId": SESSION,
              "timestamp": "2025-03-01T10:00:09.000Z", "level": "error",
              "content": f"request failed for {t['json_client_secret']}"}), 1)
    add(line({"type": "attachment", "uuid": "f-1", "sessionId": SESSION, "timestamp": "2025-03-01T10:00:09Z",
              "attachment": {"type": "file", "filename": "/home/dev/gizmo/.env",
                             "content": {"type": "text", "file": {"content": t["aws_secret_key"]}}}}), 1)
    add(line({"type": "ai-title", "aiTitle": f"Fix {t['github_token']}", "sessionId": SESSION}), 1)
    add(line({"type": "custom-title", "customTitle": f"keys {t['aws_access_key']}", "sessionId": SESSION}), 1)
    write(root / PROJECT / f"{SESSION}.jsonl", lines)

    # A 2.1.x subagent, its meta file, a workflow journal.
    sub = root / PROJECT / SESSION / "subagents"
    write(sub / "agent-a1b2c3d4e5f6a7b8c.jsonl", [
        user(SESSION, "s-1", f"Check {t['url_password']}", isSidechain=True, agentId="a1b2c3d4e5f6a7b8c"),
        assistant(SESSION, "s-2", [{"type": "text", "text": f"Connected with {t['anthropic_key']}"}]),
    ])
    planted += 2
    (sub / "agent-a1b2c3d4e5f6a7b8c.meta.json").write_text(json.dumps(
        {"agentType": "Explore", "description": f"Verify {t['github_pat']}", "toolUseId": "toolu_01Spawn"}))
    planted += 1
    wf = sub / "workflows" / "wf_1234abcd-567"
    write(wf / "journal.jsonl", [
        line({"type": "started", "agentId": "a9f8e7d6c5b4a3210", "ts": "2025-03-01T10:00:00Z"}),
        line({"type": "result", "agentId": "a9f8e7d6c5b4a3210", "result": {"report": t["stripe_key"]}}),
    ])
    planted += 1
    # 1.0.x: a sidechain whose first prompt (kept as the run's description) holds a secret.
    legacy = "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"
    prompt = f"Audit these: {t['aws_access_key']}"
    write(root / "-home-dev-legacy" / f"{legacy}.jsonl", [
        assistant(legacy, "l-1", [{"type": "tool_use", "id": "toolu_01Task", "name": "Task",
                                   "input": {"description": "audit", "prompt": prompt}}]),
        user(legacy, "l-2", prompt, isSidechain=True),
        line({"type": "agent-name", "agentName": f"deploy {t['stripe_key']}", "sessionId": legacy}),
    ])
    planted += 3
    return planted


def _db_folder_bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


Ingested = tuple[dict[str, Any], dict[str, tuple[str, str, str]], Target, dict[Path, bytes], int]


@pytest.fixture(scope="module", params=ENGINES)
def ingested(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """(summary, secrets, database, its files' bytes by path, plantings), once per engine."""
    s = make_secrets()
    base = tmp_path_factory.mktemp("secrets")
    home = base / "home"
    home.mkdir()
    root = base / "projects"
    planted = _plant(root, s)
    empty = base / "empty"  # an ingest of nothing creates the tables (and migrates a file)
    empty.mkdir()
    if request.param == "postgres":
        server: PgServer = request.getfixturevalue("postgres_server")
        url = server.uri(server.new_database())
        deja_json(home, "--db", url, "ingest", "--root", str(empty), "--json", "--no-embed")
        _store_uncompressed(url)
        since = wal_position(server)
        summary = deja_json(home, "--db", url, "ingest", "--root", str(root), "--json",
                            "--no-embed")
        return summary, s, url, server_files(server, url, since), planted
    db = base / "data" / "deja.db"
    deja_json(home, "--db", str(db), "ingest", "--root", str(empty), "--json", "--no-embed")
    # Hold a read transaction open through the ingest: no checkpoint can move the
    # new pages out of the -wal file, so the WAL holds everything the ingest wrote.
    reader = sqlean.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM sources").fetchall()
        summary = deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed")
        during = _db_folder_bytes(db.parent)
        reader.execute("ROLLBACK")
    finally:
        reader.close()
    # Then let the last connection checkpoint it all into the main file.
    deja_json(home, "--db", str(db), "stats", "--json")
    after = _db_folder_bytes(db.parent)
    files = {**{Path(str(p) + " (during ingest)"): b for p, b in during.items()}, **after}
    return summary, s, db, files, planted


def _store_uncompressed(url: str) -> None:
    """Every text, JSON and tsvector column of deja's tables stored without compression."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'tsvector') "
            "AND is_generated = 'NEVER'").fetchall()
        assert columns
        for table, column in columns:
            conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET STORAGE EXTERNAL')


def test_no_secret_reaches_any_file_of_the_database_folder(ingested: Ingested) -> None:
    summary, s, db, files, _ = ingested
    assert summary["skipped_lines"] == 0 and summary["file_errors"] == []
    # The grep below means something only if the records did pass through these files.
    if is_postgres(db):
        assert any(b"[REDACTED:" in data for path, data in files.items()
                   if path.parent.name == "pg_wal"), "expected the WAL to hold the records"
        assert any(b"[REDACTED:" in data for path, data in files.items()
                   if path.parent.name != "pg_wal"), "expected the data files to hold them"
    else:
        wal = Path(str(db) + "-wal (during ingest)")
        assert wal in files and b"[REDACTED:" in files[wal], \
            "expected the WAL to hold the ingest's pages"
        assert b"[REDACTED:" in files[Path(db)], \
            "expected the main file to hold the records after a checkpoint"
        assert Path(str(db) + "-shm (during ingest)") in files
    leaks = []
    for path, data in files.items():
        low = data.lower()
        for name, (_, secret, piece) in s.items():
            for needle in {secret, piece}:
                if needle.encode() in data or needle.lower().encode() in low:
                    leaks.append(f"{name} ({needle[:12]}...) in {path.name}")
    assert not leaks, "\n".join(leaks)


def test_redactions_are_counted_and_marked_by_kind(ingested: Ingested) -> None:
    summary, _, db, _, planted = ingested
    assert summary["redactions"] >= planted
    assert sum(summary["redactions_by_kind"].values()) == summary["redactions"]
    assert EXPECTED_KINDS <= set(summary["redactions_by_kind"]), summary["redactions_by_kind"]
    texts = "\n".join(r[0] for r in sql(db, "SELECT text FROM records"))
    for kind in EXPECTED_KINDS:
        assert f"[REDACTED:{kind}]" in texts, kind
    # Only the secret is replaced: the text around it stays readable.
    assert "DATABASE_URL=postgres://app:[REDACTED:url_password]@db.internal:5432/shop" in texts
    assert "export GIZMO_API_TOKEN=[REDACTED:secret_assignment]" in texts


def test_every_kind_of_place_was_ingested_and_redacted(ingested: Ingested) -> None:
    """The leak test means something only if the planted texts were all ingested."""
    _, _, db, _, _ = ingested
    kinds = {r[0] for r in sql(db, "SELECT DISTINCT kind FROM records")}
    assert {"prompt", "thinking", "assistant", "tool_call", "tool_result", "compact_summary", "summary",
            "error", "attachment", "workflow_result"} <= kinds
    for kind in ("prompt", "thinking", "assistant", "tool_call", "tool_result"):
        texts = [r[0] for r in sql(db, "SELECT text FROM records WHERE kind = ?", (kind,))]
        assert any("[REDACTED:" in t for t in texts), kind
    big = sql(db, "SELECT truncated, text_len FROM records WHERE uuid = 'r-4'")
    assert big and big[0][0] == 1
    titles = dict(sql(db, "SELECT session_id, title FROM sessions"))
    assert titles[SESSION] == "keys AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key]"
    names = [r[0] for r in sql(db, "SELECT agent_name FROM sessions WHERE agent_name IS NOT NULL")]
    assert names == ["deploy stripe.api_key = '[REDACTED:stripe_key]'"]
    described = sql(db, "SELECT description FROM agent_runs WHERE description IS NOT NULL")
    assert len(described) >= 2 and all("[REDACTED:" in d[0] for d in described)


def test_search_output_shows_markers_not_secrets(ingested: Ingested, tmp_path: Path) -> None:
    _, s, db, _, _ = ingested
    proc = deja(tmp_path, "--db", str(db), "search", "DATABASE_URL postgres", "--json", "--mode",
                "keyword", "--limit", "50")
    hits = json.loads(proc.stdout)["hits"]
    assert hits
    for _, secret, piece in s.values():
        assert piece not in proc.stdout and secret not in proc.stdout
