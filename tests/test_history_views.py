"""`deja sessions`, `deja show` and `deja search` for people: `--format markdown|json|html`,
`show SESSION --around --context`, and the terminal views, through the CLI as a subprocess
over the shared transcripts (numbers checked against the JSONL files) and one synthetic
session whose tool output holds terminal escape codes. Every test runs on both engines (the
`engine` fixture): the corpus is ingested once per run and engine (fixtures/engine_corpus.py),
the synthetic session once per module and engine.
"""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import pytest
from fixtures.cli import deja, deja_json
from fixtures.engine_corpus import Corpus, new_target, once_per_engine
from fixtures.engines import Target
from fixtures.transcripts import assistant, tool_result, user, write

COMPACTED = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
ANSI_SESSION = "a2510000-0000-4000-8000-00000000a251"
# Terminal codes a tool prints: colour, a window title (OSC), a cursor move.
ANSI_OUTPUT = "\x1b]0;pytest\x07\x1b[1;31mFAILED\x1b[0m test_quokka.py::test_wombat\x1b[2K"


@pytest.fixture
def shared(corpus: Corpus) -> tuple[Path, str]:
    return corpus.home, corpus.db


@pytest.fixture(scope="module")
def _ansi_dbs() -> dict[str, tuple[Path, str]]:
    return {}


@pytest.fixture
def ansi_db(_ansi_dbs: dict[str, tuple[Path, str]], engine: str, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One synthetic session with a tool's escape codes, ingested once per module and engine."""
    def make() -> tuple[Path, str]:
        base = tmp_path_factory.mktemp("ansi")
        return _ingest_ansi(base, new_target(engine, request, base))

    return once_per_engine(_ansi_dbs, engine, make)


def _ingest_ansi(base: Path, db: Target) -> tuple[Path, str]:
    home, root = base / "home", base / "projects"
    home.mkdir()
    s = ANSI_SESSION
    write(root / "-home-dev-gizmo" / f"{s}.jsonl", [
        user(s, "u1", "run the wombat tests please", ts="2026-03-01T10:00:00.000Z"),
        assistant(s, "u2", [{"type": "tool_use", "id": "toolu_a1", "name": "Bash",
                             "input": {"command": "pytest test_quokka.py"}}],
                  parent="u1", ts="2026-03-01T10:00:01.000Z"),
        tool_result(s, "u3", "toolu_a1", ANSI_OUTPUT, parent="u2", ts="2026-03-01T10:00:02.000Z"),
        assistant(s, "u4", [{"type": "text", "text": "The wombat test fails."}], parent="u3",
                  ts="2026-03-01T10:00:03.000Z"),
    ])
    deja(home, "--db", db, "ingest", "--root", str(root), "--json", "--no-embed")
    return home, str(db)


def _main_records(projects: Path, session: str) -> int:
    """Lines of a session's own file that carry a uuid and a message (an upper bound check)."""
    path = next(projects.rglob(f"{session}.jsonl"))
    return sum(1 for line in path.read_text().splitlines() if '"uuid"' in line)


def test_show_session_as_json(shared: tuple[Path, str], shared_projects: Path) -> None:
    home, db = shared
    out = deja_json(home, "--db", db, "show", COMPACTED[:8], "--json")
    s = out["session"]
    assert s["session_id"] == COMPACTED and s["compactions"] == 1
    assert s["resume"].endswith(f"claude --resume {COMPACTED}")
    assert s["resume"].startswith(f"cd {s['cwd']} && ")
    # Turns: the session file's own user prompts (not tool results, not subagents).
    path = next(shared_projects.rglob(f"{COMPACTED}.jsonl"))
    assert out["total"] == len(out["records"]) <= _main_records(shared_projects, COMPACTED) * 4
    # Tokens once per (message id, request id), keeping the largest: computed from the file.
    best: dict[tuple[str, str], dict[str, int]] = {}
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        usage = (obj.get("message") or {}).get("usage") if obj.get("type") == "assistant" else None
        if not usage:
            continue
        key = (obj["message"].get("id"), obj.get("requestId"))
        counts = {k: usage.get(k) or 0 for k in ("input_tokens", "output_tokens")}
        if key not in best or sum(counts.values()) > sum(best[key].values()):
            best[key] = counts
    # The session's tokens include its subagents', so they are at least the main file's.
    assert s["tokens"]["output"] >= sum(c["output_tokens"] for c in best.values()) > 0
    runs = [r for r in out["records"] if "subagent" in r]
    assert runs and all(r["kind"] == "tool_call" for r in runs)
    assert all(x["agent_id"] == r["subagent"]["agent_id"] for r in runs
               for x in r["subagent"]["records"])
    assert any(r["kind"] == "compaction" for r in out["records"])


def test_show_session_around_a_line(shared: tuple[Path, str]) -> None:
    home, db = shared
    whole = deja_json(home, "--db", db, "show", COMPACTED, "--json")
    target = whole["records"][100]
    out = deja_json(home, "--db", db, "show", COMPACTED, "--around", target["uuid"],
                    "--context", "3", "--json")
    assert [r["handle"] for r in out["records"]] == \
        [r["handle"] for r in whole["records"][97:104]]
    assert [r["hit"] for r in out["records"]] == [False] * 3 + [True] + [False] * 3
    assert out["offset"] == 97


def test_show_a_hit_keeps_its_json(shared: tuple[Path, str]) -> None:
    home, db = shared
    whole = deja_json(home, "--db", db, "show", COMPACTED, "--json")
    handle = whole["records"][50]["handle"]
    out = deja_json(home, "--db", db, "show", handle, "-B", "2", "-A", "1", "--json")
    assert set(out) == {"session", "before", "hit", "after"}
    assert out["hit"]["handle"] == handle and len(out["before"]) == 2 and len(out["after"]) == 1


def test_show_session_as_markdown_and_html(shared: tuple[Path, str]) -> None:
    home, db = shared
    md = deja(home, "--db", db, "show", COMPACTED, "--format", "markdown").stdout
    assert md.startswith("# fix-contract-expiry-atomicity\n")
    assert f"claude --resume {COMPACTED}" in md and "*⟲ Conversation compacted" in md
    assert "> **subagent" in md
    page = deja(home, "--db", db, "show", COMPACTED, "--format", "html").stdout
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in \
        page.split("<body>")[0]
    parser = html.parser.HTMLParser()
    parser.feed(page)  # well-formed enough to parse
    assert "class=\"sub\"" in page and "class=\"rec compaction\"" in page


def test_sessions_formats(shared: tuple[Path, str]) -> None:
    home, db = shared
    listed = deja_json(home, "--db", db, "sessions", "-n", "200", "--json")
    as_format = deja_json(home, "--db", db, "sessions", "-n", "200", "--format", "json")
    assert listed == as_format
    md = deja(home, "--db", db, "sessions", "-n", "200", "--format", "markdown").stdout
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == len(listed["sessions"]) + 1
    page = deja(home, "--db", db, "sessions", "--format", "html").stdout
    assert page.count("<tr>") == min(20, len(listed["sessions"])) + 1
    plain = deja(home, "--db", db, "sessions").stdout  # piped: the plain lines
    assert plain.splitlines()[0].split()[1] == listed["sessions"][0]["session_id"]


def test_terminal_views_never_pass_on_a_tools_escape_codes(ansi_db: tuple[Path, str]) -> None:
    home, db = ansi_db
    env = {"FORCE_COLOR": "1", "COLUMNS": "120"}  # rich's colours, as on a terminal
    shown = deja(home, "--db", db, "search", "wombat FAILED", "--mode", "keyword",
                 "--format", "terminal", env=env).stdout
    assert "FAILED" in shown and "\x1b[" in shown  # coloured, by rich
    assert "\x1b]0;" not in shown and "\x1b[2K" not in shown and "\x07" not in shown
    assert "deja show rec:" in shown
    for fmt in ("terminal", "markdown", "html"):
        out = deja(home, "--db", db, "show", ANSI_SESSION, "--format", fmt, "--full",
                   env=env).stdout
        assert "test_quokka.py::test_wombat" in out, fmt
        assert "\x1b]0;" not in out and "\x1b[2K" not in out and "\x07" not in out, fmt
    hits = deja_json(home, "--db", db, "search", "wombat", "--mode", "keyword", "--json")
    assert set(hits) >= {"hits"} and hits["hits"]


def test_search_terminal_view_highlights_the_query_words(ansi_db: tuple[Path, str]) -> None:
    home, db = ansi_db
    shown = deja(home, "--db", db, "search", "wombat", "--mode", "keyword", "--format",
                 "terminal", env={"FORCE_COLOR": "1", "COLUMNS": "120"}).stdout
    assert "\x1b[1;7mwombat\x1b[0m" in shown  # bold reverse, not [wombat]
    assert "[wombat]" not in shown
    piped = deja(home, "--db", db, "search", "wombat", "--mode", "keyword").stdout
    assert "[wombat]" in piped  # the plain lines, as before
