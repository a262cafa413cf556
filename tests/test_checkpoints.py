"""Checkpoints: compaction summaries by section, and load_checkpoint on the real compacted
session c0dddd8d (its pending tasks first, its branch, within max_tokens).

The load_checkpoint tests run on both engines (the `engine` fixture): the
session is ingested by the PreCompact hook once per module into a SQLite file,
and once per run into a PostgreSQL template that each test clones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_argv, deja_env, deja_json
from fixtures.engines import Target, clone, copy_sqlite, sql
from fixtures.paths import REPO
from fixtures.served import MACHINE, pg_template, server_config
from mcp import Client

from ingest.summary import by_priority, sections
from mcp_server.cli.hook import BUDGET_S
from mcp_server.server import build_server

C0 = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
C0_CWD = "/Users/dumitruvulpe/uw/telecom-mobile"
C0_BRANCH = "dv-sd-contract-expiration-tmt-1818"

SUMMARY = """This session is being continued from a previous conversation.

Summary:
1. Primary Request and Intent:
   The user wants the ibex importer ported.
2. Key Technical Concepts:
   - streaming parsers
3. Files and Code Sections:
   1. Parser setup:
      the new reader
4. Errors and fixes:
   - IbexError on empty files: fixed by a guard.
7. Pending Tasks:
   - port the ibex writer
8. Current Work:
   Writing the ibex writer test.
9. Optional Next Step:
   Run the writer test.
"""


def test_sections_are_found_by_heading() -> None:
    found = sections(SUMMARY)
    assert [s.key for s in found] == ["other", "intent", "concepts", "files", "errors_and_fixes",
                                      "pending_tasks", "current_work", "next_step"]
    files = next(s for s in found if s.key == "files")
    assert "Parser setup" in files.text  # an indented numbered item is body, not a heading
    ordered = [s.key for s in by_priority(found)]
    assert ordered[:4] == ["pending_tasks", "current_work", "next_step", "errors_and_fixes"]
    assert ordered[-1] == "other"

    markdown = sections("## Pending Tasks\n- a\n## Current Work\nb\n")
    assert [(s.key, s.text) for s in markdown] == [("pending_tasks", "- a"), ("current_work", "b")]
    assert [s.key for s in sections("just some prose\nwith lines")] == ["other"]
    assert sections("  ") == []


def _precompact(target: Target, transcript: Path, home: Path) -> None:
    """The compacted session c0dddd8d ingested into `target` by PreCompact hooks, with its
    checkpoint."""
    # On a loaded machine one hook may stop at its 0.8 s budget with the file half read; the
    # next one goes on from the cursor and records the checkpoint, as in a real session (or
    # finds the lock still held by the one that stopped, records a checkpoint of what is
    # there and leaves the rest to the ingesting process: here, the next hook).
    for _ in range(8):
        proc = subprocess.run(deja_argv("--db", str(target), "hook", "pre-compact"),
                              capture_output=True, text=True, timeout=60, cwd=str(REPO),
                              env=deja_env(home, {"DEJA_MACHINE": MACHINE}),
                              input=json.dumps({"session_id": C0, "transcript_path": str(transcript),
                                                "cwd": C0_CWD, "trigger": "auto"}))
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout
        if proc.stderr == "" and _read_to_the_end(target, transcript):
            break
        assert proc.stderr in ("", f"deja hook pre-compact: gave up at its {BUDGET_S} s budget\n"), \
            proc.stderr
    assert proc.stderr == "" and _read_to_the_end(target, transcript), proc.stderr


def _read_to_the_end(target: Target, transcript: Path) -> bool:
    rows = sql(target, 'SELECT "offset" FROM sources WHERE display_path = ?', (str(transcript),))
    return bool(rows) and int(rows[0][0]) == transcript.stat().st_size


@pytest.fixture(scope="module")
def c0_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("c0") / "home"
    home.mkdir()
    return home


@pytest.fixture(scope="module")
def c0_transcript(shared_projects: Path) -> Path:
    return shared_projects / "-Users-dumitruvulpe-uw-telecom-mobile" / f"{C0}.jsonl"


@pytest.fixture(scope="module")
def c0_db(c0_home: Path, c0_transcript: Path) -> Path:
    """The session in a module SQLite file."""
    db = c0_home.parent / "deja.db"
    _precompact(db, c0_transcript, c0_home)
    return db


@pytest.fixture
def c0_target(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """The test's own copy of the ingested session, on its engine."""
    if engine == "postgres":
        server = request.getfixturevalue("postgres_server")
        home, transcript = (request.getfixturevalue(f) for f in ("c0_home", "c0_transcript"))
        return clone(server, pg_template(server, f"c0:{transcript}",
                                         lambda url: _ingest_then_precompact(url, transcript,
                                                                             home)))
    return copy_sqlite(request.getfixturevalue("c0_db"), tmp_path / "deja.db")


def _ingest_then_precompact(url: str, transcript: Path, home: Path) -> None:
    """PostgreSQL: the session read by `deja ingest` (as its server would have read it),
    then the PreCompact hook, which finds it read and records the checkpoint. A hook alone
    reads too little of a whole real session within its budget on PostgreSQL (its keyword
    index's triggers): see tests/test_hooks.py's real-transcript tests, SQLite's."""
    root = home.parent / "c0-projects"
    copy = root / transcript.parent.name / transcript.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(transcript, copy)
    shutil.copytree(transcript.with_suffix(""), copy.with_suffix(""), dirs_exist_ok=True)
    out = deja_json(home, "--db", url, "ingest", "--root", str(root), "--no-embed", "--json",
                    env={"DEJA_MACHINE": MACHINE})
    assert out["new_records"] > 300, out
    _precompact(url, copy, home)


async def _load(target: Target, base: Path, **arguments: Any) -> dict[str, Any]:
    config = server_config(target, {"CLAUDE_PROJECT_DIR": C0_CWD}, base, ingest=False,
                           load_model=False)
    async with Client(build_server(config)) as client:
        with anyio.fail_after(20):
            result = await client.call_tool("load_checkpoint", arguments)
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


@pytest.mark.parametrize("max_tokens", [600, 4000])
def test_load_checkpoint_of_the_compacted_session(c0_target: Target, tmp_path: Path,
                                                  max_tokens: int) -> None:
    briefing = anyio.run(partial(_load, c0_target, tmp_path, session_id=C0,
                                 max_tokens=max_tokens))
    assert len(json.dumps(briefing)) <= max_tokens * 4
    assert briefing["session"]["git_branch"] == C0_BRANCH
    checkpoint = briefing["checkpoint"]
    assert checkpoint["source"] == "compaction summary" and checkpoint["handle"].startswith("rec:")
    first = checkpoint["sections"][0]
    assert first["heading"] == "Pending Tasks" and "os.Exit(1)" in first["text"]
    assert "ErrConflict" in first["text"]
    headings = [s["heading"] for s in checkpoint["sections"]]
    assert "Key Technical Concepts" not in headings[:3]
    assert "Key Technical Concepts" in checkpoint.get("omitted_sections", []) or \
        headings.index("Key Technical Concepts") > headings.index("Current Work")
    if max_tokens >= 4000:
        assert headings[:3] == ["Pending Tasks", "Current Work", "Optional Next Step"]
        assert briefing["since_checkpoint"] and briefing["last_requests"]
        assert any(p.endswith("storage.go") for p in briefing["files_edited"])
    assert briefing["memories"] == []  # deja's own checkpoint is not shown as a memory


def test_load_checkpoint_prefers_a_later_agent_checkpoint(c0_target: Target,
                                                          tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        config = server_config(c0_target, {"CLAUDE_PROJECT_DIR": C0_CWD}, tmp_path,
                               ingest=False, load_model=False)
        async with Client(build_server(config)) as client:
            written = await client.call_tool("write_memory", {
                "content": "7. Pending Tasks:\n- reconcile with origin first\n"
                           "8. Current Work:\n- reading the jobs tests",
                "kind": "checkpoint", "session_id": C0})
            briefing = await client.call_tool("load_checkpoint", {"project": "current"})
        return (json.loads(written.content[0].text),  # type: ignore[union-attr]
                json.loads(briefing.content[0].text))  # type: ignore[union-attr]

    written, briefing = anyio.run(scenario)
    assert briefing["session"]["session_id"] == C0
    assert briefing["checkpoint"]["id"] == written["id"]
    assert briefing["checkpoint"]["sections"][0]["text"] == "- reconcile with origin first"
