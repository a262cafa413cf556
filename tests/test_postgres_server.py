"""The MCP server on PostgreSQL only: what has no SQLite counterpart.

`deja serve --db URL` runs as Claude Code runs it (a subprocess over stdio,
the SDK's client). Every tool on both engines is tests/test_tools.py (in
process) and tests/test_server.py (this same process boundary), the hooks
tests/test_hooks.py; here:

- a database the server cannot use (the server is not there, the password
  is refused, the database lacks pgvector): the handshake is still answered
  at once (the database opens after it, on first use), every tool call is an
  error of one line without the password, nothing is written to a local
  SQLite file, and the next call tries again (pgvector created meanwhile:
  the call after that answers);
- a lost connection (the database server ended the sessions) costs one
  call at most: the next one reconnects;
- the issue's load check on one database at once: two machines (two `deja
  ingest` processes with their own DEJA_MACHINE and root) and four servers
  (two per machine, each with its machine's background ingest contending
  for the machine's advisory lock) each writing memories. Afterwards every
  record arrived once (the same records as a clean ingest of each root) and
  every memory of every process is found by search_memory; one server per
  machine ingests, and when it is killed (kill -9) the other server of its
  machine takes its lock over within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_argv, deja_env, deja_json
from fixtures.mcp import CALL_TIMEOUT_S, mcp_session, tool
from fixtures.postgres import PASSWORD_ROLE, PLAIN_ROLE, PgServer
from fixtures.transcripts import conversation, write
from mcp import ClientSession

pytestmark = pytest.mark.anyio

TOOLS = {"search_memory", "get_context", "list_sessions", "write_memory", "forget_memory",
         "load_checkpoint", "memory_status"}


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


def served(db: str, root: Path, home: Path, log: Path, machine: str = "laptop",
           *extra: str) -> Any:
    """`deja serve` on `db` ingesting `root` as `machine`: fixtures/mcp.py's session."""
    argv = deja_argv("--db", db, "serve", "--root", str(root), "--log-file", str(log), *extra)
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


async def failed_call(s: ClientSession, name: str, **arguments: Any) -> str:
    """A tool call that must be an error; its one line of text."""
    with anyio.fail_after(CALL_TIMEOUT_S):
        result = await s.call_tool(name, arguments)
    message = "\n".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, message
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    return message


def no_traceback(*logs: Path) -> str:
    """The text of each log and its .stderr; none may hold a traceback."""
    text = ""
    for log in logs:
        for path in (log, log.with_suffix(".stderr")):
            part = path.read_text(errors="replace") if path.exists() else ""
            assert "Traceback" not in part, f"{path}:\n{part[-3000:]}"
            text += part
    return text


# -- a database the server cannot use -------------------------------------------------------

SECRET = "n0t-the-pw-4711"


@pytest.mark.parametrize("case", ["unreachable", "wrong password", "no pgvector"])
async def test_an_unusable_database_still_answers_the_handshake_with_one_line_errors(
        postgres_server: PgServer, tmp_path: Path, case: str) -> None:
    """Unlike a broken SQLite file (which the lifespan opens before the handshake), a
    PostgreSQL server may be down or misconfigured for a while: the client gets its tools
    at once, each call says why it cannot answer, and no call falls back to a local file."""
    if case == "unreachable":
        url = f"postgresql://deja:{SECRET}@/deja?host={tmp_path / 'nobody-listens'}"
        why = "cannot connect to PostgreSQL"
    elif case == "wrong password":
        url = postgres_server.role_uri(PASSWORD_ROLE, postgres_server.new_database(), SECRET)
        why = "password authentication failed"
    else:
        database = postgres_server.new_database(owner=PLAIN_ROLE)
        url = postgres_server.role_uri(PLAIN_ROLE, database)
        why = "no `vector` extension"
    home, log = tmp_path / "home", tmp_path / "serve.log"
    home.mkdir()
    started = time.monotonic()
    async with served(url, tmp_path / "no-transcripts", home, log) as s:
        handshake_s = time.monotonic() - started
        with anyio.fail_after(CALL_TIMEOUT_S):
            assert {t.name for t in (await s.list_tools()).tools} == TOOLS
        for name, arguments in [("memory_status", {}), ("search_memory", {"query": "x"}),
                                ("write_memory", {"content": "kept nowhere"}),
                                ("list_sessions", {}), ("get_context", {"ref": "rec:1"}),
                                ("load_checkpoint", {}), ("forget_memory", {"id": "x"})]:
            message = await failed_call(s, name, **arguments)
            assert why in message and SECRET not in message, message
        if case == "no pgvector":
            # An administrator puts pgvector in: the next call opens the database.
            with postgres_server.connect(database) as conn:
                conn.execute("CREATE EXTENSION vector")
            status = await tool(s, "memory_status")
            assert status["engine"] == "postgresql" and status["records"] == 0
            assert (await tool(s, "write_memory", content="kept at last"))["created"]
    assert handshake_s < 10, handshake_s
    assert SECRET not in no_traceback(log)
    assert not list(home.rglob("deja.db*")), "a local SQLite file was written"


async def test_a_lost_connection_costs_one_call_at_most(postgres_server: PgServer,
                                                        postgres_url: str,
                                                        tmp_path: Path) -> None:
    """The database server ends every session of the database (as a restart does): the
    tools reconnect on the next call, and the ingest supervisor starts over on a new
    connection, takes the machine's lock again and ingests what came meanwhile."""
    home, log = tmp_path / "home", tmp_path / "serve.log"
    home.mkdir()
    root = _root(tmp_path, "heron", 1, "heron")
    async with served(postgres_url, root, home, log) as s:
        await until(s, lambda st: st["this_process_ingests"] and st["records"] >= 12)
        written = await tool(s, "write_memory", content="the egret cache survives restarts")
        database = postgres_url.split("?")[0].rsplit("/", 1)[1]
        with postgres_server.connect() as conn:
            ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (database,)).fetchall()
        assert len(ended) >= 3  # the tools' two connections and the ingest's
        answers = []
        for _ in range(3):
            with anyio.fail_after(CALL_TIMEOUT_S):
                answers.append(await s.call_tool("search_memory", {
                    "query": "egret", "project": "all", "kinds": ["memory"]}))
        assert not answers[1].is_error and not answers[2].is_error, answers
        if answers[0].is_error:
            text = answers[0].content[0].text  # type: ignore[union-attr]
            assert "PostgreSQL" in text and len(text.splitlines()) == 1, text
        hits = answers[2].structured_content["hits"]  # type: ignore[index]
        assert hits and "egret" in hits[0]["snippet"]
        # A session written now is ingested by the restarted supervisor.
        sid = "00000009-egre-4000-8000-000000000009"
        write(root / "-work-heron" / f"{sid}.jsonl", conversation(sid, 4, prefix="late",
                                                                 words="egret"))
        await until(s, lambda st: st["records"] >= 12 + 4 + 1 and st["this_process_ingests"],
                    seconds=30)
        assert (await tool(s, "forget_memory", id=written["id"]))["deleted"]
    no_traceback(log)


# -- two machines, four servers ---------------------------------------------------------


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
    written: dict[str, str] = {}  # word -> memory id
    machines = ["mach-a", "mach-b", "mach-a", "mach-b"]
    logs = [tmp_path / f"s{n}.log" for n in range(4)]

    async def writes(n: int, s: ClientSession) -> None:
        for k in range(4):
            out = await tool(s, "write_memory", project="all",
                             content=f"server {n} note {k}: the kiwi{n}x{k} flag")
            assert out["created"]
            written[f"kiwi{n}x{k}"] = out["id"]

    async def holders(servers: list[ClientSession]) -> dict[str, list[int]]:
        """The pids of each machine's servers that ingest now."""
        out: dict[str, list[int]] = {"mach-a": [], "mach-b": []}
        for machine, s in zip(machines, servers):
            status = await tool(s, "memory_status")
            if status["this_process_ingests"]:
                out[machine].append(status["pid"])
        return out

    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(served(url, roots[m], home, logs[n], m))
                   for n, m in enumerate(machines)]
        async with anyio.create_task_group() as tg:
            for n, s in enumerate(servers):
                tg.start_soon(writes, n, s)
        for proc in ingests:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 75), err  # 75: the machine's servers held the lock
        # The CLI ingests are done: one server of each machine holds its machine's lock...
        with anyio.fail_after(20):
            while True:
                now = await holders(servers)
                assert all(len(p) <= 1 for p in now.values()), now
                if all(len(p) == 1 for p in now.values()):
                    break
                await anyio.sleep(0.3)
        # ... and when mach-a's dies (kill -9), the other server of mach-a takes it over.
        dead = now["mach-a"][0]
        pids = [(await tool(s, "memory_status"))["pid"] for s in servers]
        other = next(s for m, s, pid in zip(machines, servers, pids)
                     if m == "mach-a" and pid != dead)
        os.kill(dead, signal.SIGKILL)
        killed = time.monotonic()
        await until(other, lambda st: st["this_process_ingests"], seconds=15)
        takeover_s = time.monotonic() - killed
        alive = [s for s, pid in zip(servers, pids) if pid != dead]
        # Every record once, and every memory found, by each server alive.
        status = await until(alive[0], lambda st: st["records"] >= sum(clean.values()) + 16)
        assert status["records"] == sum(clean.values()) + 16 and status["memories"] == 16
        for s in alive:
            for word, memory_id in written.items():
                hits = await tool(s, "search_memory", query=word, project="all",
                                  kinds=["memory"], debug=True)
                # First, not alone: once the model is up, the vector ranker adds the nearest
                # other memories (and the keyword ranker those after it, by their context).
                assert hits["hits"][0]["uuid"] == memory_id, (word, hits["hits"][:2])
                assert word in hits["hits"][0]["snippet"], word
        for s in alive:  # the killed one's session is closed by the stack as a dead pipe
            await tool(s, "memory_status")
    by_machine = deja_json(home, "--db", url, "stats", "--json")["records_by_machine"]
    assert by_machine == {"mach-a": clean["mach-a"] + 8, "mach-b": clean["mach-b"] + 8}
    assert len(written) == 16
    print(f"\nkill -9 of mach-a's ingesting server: the other took over in {takeover_s:.1f} s")
    no_traceback(*(log for log, pid in zip(logs, pids) if pid != dead))
