"""Four servers and a `deja ingest` on one database at once (issue #4).

What must hold: exactly one process ingests at a time (another takes over
within seconds when it dies), no "database is locked" reaches a client, and
every write_memory of every process is found afterwards.

Claude Code starts one `deja serve` per session, all on the user's one
database; here four of them serve the shared real corpus (read in place) into
a new database, with the background ingest and embedder on, as registered.
While the first server ingests (then embeds), a `deja ingest` waits for the
ingest lock and every server writes memories while searching. Then the
ingesting server is killed with SIGKILL, mid-work, and the others go on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from fixtures.cli import deja_argv, deja_env
from fixtures.db import sql
from fixtures.paths import REPO

pytestmark = pytest.mark.anyio

SERVERS = 4
WRITES = 20  # write_memory calls per server and phase
CALL_TIMEOUT = 30.0  # a write may wait for another process's transaction (busy timeout 10 s)
SEARCHES = ["emulator root", "adb", "memory written by server", "livecd build", "error"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """One `deja serve` process and its client session; every result's text is kept."""

    def __init__(self, index: int, session: ClientSession, stderr: Path) -> None:
        self.index = index
        self.session = session
        self.stderr = stderr
        self.pid = 0
        self.dead = False
        self.ids: list[str] = []
        self.needles: dict[str, str] = {}  # a word unique to each memory -> its id
        self.texts: list[str] = []
        self.errors: list[str] = []

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await self.session.call_tool(tool, arguments)
        text = json.dumps(result.structured_content) if result.structured_content else ""
        text += "".join(getattr(c, "text", "") for c in result.content)
        # What the server says about itself; not the hits, whose transcript text may
        # well hold the word "locked".
        said = {k: v for k, v in (result.structured_content or {}).items() if k != "hits"}
        self.texts.append(text if result.is_error else json.dumps(said))
        if result.is_error:
            self.errors.append(f"server {self.index} {tool}({arguments}): {text[:300]}")
            return {}
        assert isinstance(result.structured_content, dict)
        return result.structured_content

    async def ingests(self) -> bool:
        return bool((await self.call("memory_status"))["this_process_ingests"])


async def _ingesting(servers: list[Server], seen: list[int]) -> list[Server]:
    """The live servers that say they ingest; the count is appended to `seen`."""
    flags = [await s.ingests() for s in servers if not s.dead]
    live = [s for s in servers if not s.dead]
    holders = [s for s, flag in zip(live, flags) if flag]
    seen.append(len(holders))
    return holders


async def _until_one_ingests(servers: list[Server], seen: list[int], *, within: float,
                             stable_polls: int = 3) -> Server:
    """Poll until the same single server has said it ingests `stable_polls` times in a row."""
    streak: list[Server] = []
    with anyio.fail_after(within):
        while True:
            holders = await _ingesting(servers, seen)
            if len(holders) == 1:
                streak = streak + holders if streak and streak[-1] is holders[0] else holders
                if len(streak) >= stable_polls:
                    return holders[0]
            else:
                streak = []
            await anyio.sleep(0.3)


async def _write_and_search(server: Server, phase: str, token: str, done: anyio.Event) -> None:
    """Write memories, each followed by a search, as fast as the server answers: at least
    WRITES of them, then on until `done` is set."""
    j = 0
    while j < WRITES or not done.is_set():
        needle = f"srv{server.index}{phase}n{j}{token}"
        content = (f"memory written by server {server.index} in phase {phase}, number {j}: "
                   f"the {token} flag {needle} stays on")
        out = await server.call("write_memory", content=content, kind="note",
                                tags=[f"server{server.index}", phase])
        if out:
            assert out["created"] is True, out
            server.ids.append(out["id"])
            server.needles[needle] = out["id"]
        await server.call("search_memory", query=SEARCHES[j % len(SEARCHES)], project="all",
                          limit=5)
        j += 1


async def test_four_servers_and_an_ingest_share_one_database(tmp_path: Path, home: Path,
                                                             db_path: Path,
                                                             shared_projects: Path) -> None:
    db = db_path
    env = deja_env(home, {"CLAUDE_PROJECT_DIR": "/home/cwtrocks/android-avd"}, embed=True)
    token = f"tok{os.getpid()}"
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    seen: list[int] = []  # how many live servers said they ingest, at every poll

    async with AsyncExitStack() as stack:
        servers: list[Server] = []
        for i in range(SERVERS):
            stderr = tmp_path / f"server{i}.stderr"
            errlog = stack.enter_context(open(stderr, "w"))
            params = StdioServerParameters(
                command=sys.executable, cwd=str(REPO), env=env,
                args=["-m", "mcp_server", "--db", str(db), "--root", str(shared_projects),
                      "--log-file", str(tmp_path / f"server{i}.log")])
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            session = await stack.enter_async_context(ClientSession(read, write))
            servers.append(Server(i, session, stderr))
        # The four start (import, open and migrate the new database) at once.
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for s in servers:
                    tg.start_soon(s.session.initialize)
        for s in servers:
            s.pid = (await s.call("memory_status"))["pid"]

        marks["started"] = time.monotonic() - t0
        first = await _until_one_ingests(servers, seen, within=20)

        # `deja ingest` on the same database and roots: it waits for the lock.
        ingest_result: dict[str, Any] = {}

        async def run_ingest() -> None:
            started = time.monotonic()
            proc = await anyio.run_process(
                deja_argv("ingest", "--root", str(shared_projects), "--json", "--no-embed", db=db),
                check=False, env=deja_env(home), cwd=str(REPO))
            ingest_result.update(proc=proc, seconds=time.monotonic() - started)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_ingest)
            # Phase 1: every server writes and searches while `first` ingests, loads the
            # model and embeds: until an embedding batch has been committed.
            started = time.monotonic()
            pending_at_start = (await first.call("memory_status"))["pending_embeddings"]
            done = anyio.Event()
            with anyio.fail_after(90):
                async with anyio.create_task_group() as writers:
                    for s in servers:
                        writers.start_soon(_write_and_search, s, "a", token, done)
                    while True:
                        status = await first.call("memory_status")
                        if status["model_loaded"] and status["records"] > 1000 and (
                                0 < status["pending_embeddings"] < pending_at_start):
                            break
                        pending_at_start = max(pending_at_start, status["pending_embeddings"])
                        await anyio.sleep(0.3)
                    done.set()
            phase1_s = time.monotonic() - started
            assert len(await _ingesting(servers, seen)) == 1
            assert "proc" not in ingest_result, "deja ingest did not wait for the lock"

            # Phase 2: the ingester dies mid-embedding; the three others write on.
            os.kill(first.pid, signal.SIGKILL)
            first.dead = True
            killed_at = time.monotonic()
            survivors = [s for s in servers if not s.dead]
            done = anyio.Event()
            with anyio.fail_after(90):
                async with anyio.create_task_group() as writers:
                    for s in survivors:
                        writers.start_soon(_write_and_search, s, "b", token, done)
                    successor = await _until_one_ingests(servers, seen, within=20)
                    takeover_s = time.monotonic() - killed_at
                    done.set()
            # `deja ingest` took the lock between the kill and the takeover and has run,
            # or a server was quicker: then it waits for as long as that server lives.
            with anyio.move_on_after(10):
                while "proc" not in ingest_result:
                    await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

        marks["phase 2"] = time.monotonic() - t0
        # Every memory every server was told it wrote is in the database...
        all_ids = [i for s in servers for i in s.ids]
        assert len(all_ids) == len(set(all_ids)) >= SERVERS * WRITES + len(survivors) * WRITES
        stored = {row[0] for row in sql(db, "SELECT uuid FROM records WHERE kind = 'memory'")}
        missing = [i for i in all_ids if i not in stored]
        assert not missing, f"{len(missing)} written memories are not in the database"
        # ... and found by search from a survivor, the dead server's too (a sample of each).
        ranks: list[int] = []  # where the one memory holding the word ranks
        for s in servers:
            for needle in list(s.needles)[:: max(1, len(s.needles) // 5)]:
                found = await survivors[0].call("search_memory", query=needle,
                                                kinds=["memory"], project="all", limit=50,
                                                debug=True)
                uuids = [h["uuid"] for h in found["hits"]]
                assert s.needles[needle] in uuids, found
                ranks.append(uuids.index(s.needles[needle]) + 1)
        status = await successor.call("memory_status")
        marks["checked"] = time.monotonic() - t0
    marks["stopped"] = time.monotonic() - t0

    errors = [e for s in servers for e in s.errors]
    assert not errors, "\n".join(errors)
    locked = [t[:300] for s in servers for t in s.texts if "locked" in t.lower()]
    assert not locked, locked
    assert max(seen) == 1, f"two servers said they ingest at once: {seen}"
    assert successor is not first
    assert takeover_s < 10, f"no server took over the ingest within 10 s ({takeover_s:.1f} s)"
    if "proc" in ingest_result:
        proc = ingest_result["proc"]
        assert proc.returncode == 0, proc.stderr.decode()
        assert json.loads(proc.stdout)["files"] > 0
        assert b"locked" not in proc.stderr.lower(), proc.stderr.decode()
        ingest_text = f"deja ingest ran after the kill ({ingest_result['seconds']:.1f} s in all)"
    else:
        ingest_text = "deja ingest still waited for the lock (stopped)"
    assert not [e for e in status["background_errors"] if "locked" in e.lower()], status
    for s in servers:
        text = s.stderr.read_text(errors="replace")
        assert "Traceback" not in text and "database is locked" not in text, text[-3000:]
    print(f"\nphase 1 {phase1_s:.1f} s; takeover {takeover_s:.1f} s after the SIGKILL; "
          f"{ingest_text}; {len(all_ids)} memories, {sum(len(s.texts) for s in servers)} "
          f"tool calls; rank of the memory holding a unique word: {ranks}; at "
          + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()))
