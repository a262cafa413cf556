"""The MCP server on both engines, and many machines and servers on one PostgreSQL database.

`deja serve` runs as Claude Code runs it (a subprocess over stdio, the SDK's
client), once against a SQLite file and once against a PostgreSQL database,
with the same test: the background ingest picks up a root of transcripts,
then every tool answers (search_memory, get_context, list_sessions,
write_memory and its duplicate, load_checkpoint, memory_status, forget_memory).

Then the issue's load check on one PostgreSQL database at once: two machines
(two `deja ingest` processes with their own DEJA_MACHINE and root) and four
servers (two per machine, each with its machine's background ingest
contending for the machine's advisory lock) each writing memories. Afterwards
every record arrived once (the same records as a clean ingest of each root)
and every memory of every process is found by search_memory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_argv, deja_env, deja_json
from fixtures.mcp import mcp_session, tool
from fixtures.postgres import PgServer
from fixtures.transcripts import conversation, write
from mcp import ClientSession

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _root(base: Path, name: str, sessions: int, word: str) -> Path:
    root = base / f"projects-{name}"
    for i in range(sessions):
        sid = f"{i:08d}-{name[:4].ljust(4, 'x')}-4000-8000-{i:012d}"
        write(root / f"-work-{name}" / f"{sid}.jsonl", conversation(sid, 12, prefix=name,
                                                                    words=word))
    return root


def served(db: str, root: Path, home: Path, log: Path, machine: str = "laptop") -> Any:
    """`deja serve` on `db` ingesting `root` as `machine`: fixtures/mcp.py's session."""
    argv = deja_argv("--db", db, "serve", "--root", str(root), "--log-file", str(log))
    env = deja_env(home, {"DEJA_MACHINE": machine, "CLAUDE_PROJECT_DIR": f"/work/{root.name}"})
    return mcp_session(argv[1:], env, log.with_suffix(".stderr"))


async def until(s: ClientSession, check: Any, seconds: float = 40.0) -> dict[str, Any]:
    """memory_status polled until `check(status)` holds."""
    with anyio.fail_after(seconds):
        while True:
            status = await tool(s, "memory_status")
            if check(status):
                return status
            await anyio.sleep(0.3)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "deja.db")
    server: PgServer = request.getfixturevalue("postgres_server")
    return server.uri(server.new_database())


async def test_every_tool_over_stdio_on_both_engines(database: str, tmp_path: Path) -> None:
    root = _root(tmp_path, "alpha", 3, "gizmo")
    home = tmp_path / "home"
    home.mkdir()
    async with served(database, root, home, tmp_path / "server.log") as s:
        status = await until(s, lambda st: st["records"] >= 36 and st["this_process_ingests"])
        assert status["sessions"] == 3
        assert status.get("engine", "sqlite") == ("postgresql" if "://" in database else "sqlite")
        assert "secret" not in str(status["database"])
        found = await tool(s, "search_memory", query="alphaword5x", project="all")
        assert found["hits"] and "alphaword5x" in found["hits"][0]["snippet"]
        context = await tool(s, "get_context", ref=found["hits"][0]["handle"], before=2, after=2)
        assert "alphaword5x" in context["hit"]["text"] and len(context["before"]) == 2
        sessions = await tool(s, "list_sessions", project="all")
        assert len(sessions["sessions"]) == 3
        written = await tool(s, "write_memory", content="We chose the quokka cache policy "
                             "because eviction storms hurt", kind="decision", project="all")
        again = await tool(s, "write_memory", content="We chose the quokka cache policy "
                           "because eviction storms hurt", kind="decision", project="all")
        assert written["created"] and not again["created"] and again["id"] == written["id"]
        hits = await tool(s, "search_memory", query="quokka eviction", project="all",
                          kinds=["memory"])
        assert [h["kind"] for h in hits["hits"]] == ["memory"]
        briefing = await tool(s, "load_checkpoint", project="all")
        assert briefing["session"]["session_id"] and "last_requests" in briefing
        await tool(s, "forget_memory", id=written["id"])
        gone = await tool(s, "search_memory", query="quokka eviction", project="all",
                          kinds=["memory"])
        assert gone["hits"] == []


async def test_two_machines_and_four_servers_on_one_database(
        postgres_server: PgServer, tmp_path: Path) -> None:
    url = postgres_server.uri(postgres_server.new_database())
    home = tmp_path / "home"
    home.mkdir()
    roots = {"mach-a": _root(tmp_path, "mach-a", 6, "wombat"),
             "mach-b": _root(tmp_path, "mach-b", 6, "numbat")}
    # What each root is alone: a clean ingest into SQLite.
    clean = {m: deja_json(home, "--db", str(tmp_path / f"{m}.db"), "ingest", "--root", str(r),
                          "--no-embed", "--json")["new_records"] for m, r in roots.items()}
    ingests = [subprocess.Popen(
        deja_argv("--db", url, "ingest", "--root", str(r), "--no-embed", "--json",
                  "--wait", "60"),
        env=deja_env(home, {"DEJA_MACHINE": m}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for m, r in roots.items()]
    written: list[str] = []

    async def server(n: int, machine: str) -> None:
        async with served(url, roots[machine], home, tmp_path / f"s{n}.log", machine) as s:
            for k in range(4):
                out = await tool(s, "write_memory", project="all",
                                 content=f"server {n} note {k}: the kiwi{n}x{k} flag")
                assert out["created"]
                written.append(f"kiwi{n}x{k}")

    async with anyio.create_task_group() as tg:
        for n, machine in enumerate(["mach-a", "mach-b", "mach-a", "mach-b"]):
            tg.start_soon(server, n, machine)
    for proc in ingests:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 75), err  # 75: the machine's servers held the lock
    # Every record once, and every memory found.
    async with served(url, roots["mach-a"], home, tmp_path / "last.log", "mach-a") as s:
        status = await until(s, lambda st: st["records"] >= sum(clean.values()) + 16)
        assert status["records"] == sum(clean.values()) + 16 and status["memories"] == 16
        for word in written:
            hits = await tool(s, "search_memory", query=word, project="all", kinds=["memory"])
            assert len(hits["hits"]) == 1 and word in hits["hits"][0]["snippet"], word
    by_machine = deja_json(home, "--db", url, "stats", "--json")["records_by_machine"]
    assert by_machine == {"mach-a": clean["mach-a"] + 8, "mach-b": clean["mach-b"] + 8}
    assert len(written) == 16


# -- the hooks on PostgreSQL ------------------------------------------------------------------


def test_hooks_on_postgresql_ingest_checkpoint_and_brief(postgres_server: PgServer,
                                                         tmp_path: Path) -> None:
    """session-end ingests the transcript and records one checkpoint, pre-compact replaces
    it, post-compact stores the summary, session-start briefs the next session, all as
    on SQLite (tests/test_hooks.py), on a PostgreSQL URL."""
    import json

    from fixtures.transcripts import SessionFile
    from test_hooks import budget_s, hook, payload

    url = postgres_server.uri(postgres_server.new_database())
    home = tmp_path / "home"
    home.mkdir()
    from datetime import datetime, timezone

    s = SessionFile(tmp_path / "projects", "-home-dev-gizmo",
                    "9a000000-0000-4000-8000-00000000000a", "/home/dev/gizmo",
                    datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc))
    s.prompt("teach the gizmo parser about the axolotl format")
    s.tool("Bash", {"command": "pytest -q tests/test_axolotl.py"}, "1 failed: AxolotlError")
    s.say("The axolotl reader needs a header check.")
    s.save()
    env = {"DEJA_MACHINE": "laptop"}
    proc, seconds = hook(home, url, "session-end",  # type: ignore[arg-type]
                         payload(s.path, s.session_id, s.cwd, reason="other"), env=env)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr
    assert seconds < budget_s()
    found = deja_json(home, "--db", url, "search", "axolotl header check", "--mode",
                      "keyword", "--json")["hits"]
    assert any("header" in h["snippet"] for h in found)
    s.prompt("and the salamander format too")
    s.save()
    hook(home, url, "pre-compact", payload(s.path, s.session_id, s.cwd, trigger="auto"),  # type: ignore[arg-type]
         env=env)
    memories = deja_json(home, "--db", url, "search", "salamander checkpoint", "--kind",
                         "memory", "--mode", "keyword", "--json")["hits"]
    assert len(memories) == 1 and "salamander" in memories[0]["snippet"]
    summary = "Summary:\n7. Pending Tasks:\n   - wire the quetzal reader into the CLI\n"
    proc, _ = hook(home, url, "post-compact", payload(  # type: ignore[arg-type]
        s.path, s.session_id, s.cwd, trigger="manual", compact_summary=summary), env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert deja_json(home, "--db", url, "search", "quetzal reader", "--kind", "memory",
                     "--mode", "keyword", "--json")["hits"]
    proc, seconds = hook(home, url, "session-start", payload(  # type: ignore[arg-type]
        None, "9b000000-0000-4000-8000-00000000000b", s.cwd, source="startup"), env=env)
    assert proc.returncode == 0 and proc.stderr == "" and seconds < budget_s(), proc.stderr
    context = json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]
    assert "axolotl" in context or "salamander" in context or "gizmo" in context, context
