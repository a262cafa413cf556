"""The MCP server as Claude Code runs it: a real `deja serve` process over stdio.

Driven with the SDK's own client (`stdio_client` + `ClientSession`) where the
tools are concerned, and with raw pipes where only the process boundary shows
a fault: a stray print on stdout, an exit that hangs, a traceback on stderr.

The history is the shared real corpus, ingested once for the module with
`deja ingest --no-embed`; the tool tests serve it with `--no-ingest` (the
background embedder would only add load here), one test per tool on one
server process for the module (tests/test_tools.py drives the same tools in
process, with the SDK's in-memory client). Live ingest runs on a
temporary root of synthetic transcripts. Every wait is bounded
(`anyio.fail_after`); polls sleep a fraction of a second between tries.

Every test runs on both engines. `engine` is module-scoped here (the same
params as conftest's), so the per-tool tests share one server per engine: on
PostgreSQL the corpus is a clone of the run's shared-corpus template
(fixtures/served.py), served as the machine that template was ingested as,
so a server that ingests finds every cursor at the end, as on SQLite.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_env
from fixtures.engines import ENGINES, Target, clone, is_postgres, sql
from fixtures.mcp import mcp_session
from fixtures.paths import REPO
from fixtures.served import MACHINE, shared_template
from fixtures.shared import ingest_shared
from fixtures.transcripts import assistant, user, write
from mcp.client.session import ClientSession
from mcp.types import CallToolResult

pytestmark = pytest.mark.anyio
TOOLS = {"search_memory", "get_context", "list_sessions", "write_memory", "forget_memory",
         "load_checkpoint", "memory_status"}
AVD_CWD = "/home/cwtrocks/android-avd"  # a project of the shared corpus: "current" in these tests
S_AVD = "3e89eb15-32e7-43f8-8734-8d47310263ea"
CALL_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: the per-tool tests share one server


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """conftest's `engine`, module-scoped: one corpus and one tool server per engine."""
    return str(request.param)


def _bench() -> Any:
    """bench/handshake.py, loaded by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("deja_bench_handshake",
                                                  REPO / "bench" / "handshake.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the server, as a process ---------------------------------------------------------


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """deja_env with the corpus's project as Claude Code's current one, as the machine the
    PostgreSQL corpus was ingested as; the server embeds."""
    return deja_env(home, {"CLAUDE_PROJECT_DIR": AVD_CWD, "DEJA_MACHINE": MACHINE, **extra},
                    embed=True)


def server_args(db: Target, root: Path, home: Path, *extra: str) -> list[str]:
    return ["-m", "mcp_server", "--db", str(db), "--root", str(root),
            "--log-file", str(home / "deja-server.log"), *extra]


@dataclass
class Corpus:
    db: Target
    home: Path
    root: Path


@pytest.fixture(scope="module")
def corpus(engine: str, request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory, shared_projects: Path) -> Corpus:
    """The shared transcripts (keyword index only) in a module database: ingested once into
    SQLite, or a clone of the run's PostgreSQL template of them."""
    base = tmp_path_factory.mktemp("server")
    if engine == "postgres":
        server = request.getfixturevalue("postgres_server")
        home = base / "home"
        home.mkdir()
        return Corpus(db=clone(server, shared_template(server, shared_projects, home)),
                      home=home, root=shared_projects)
    home, db, summary = ingest_shared(base, shared_projects)
    assert summary["new_records"] > 1000
    return Corpus(db=db, home=home, root=shared_projects)


async def call(session: ClientSession, tool: str, **arguments: Any) -> CallToolResult:
    with anyio.fail_after(CALL_TIMEOUT):
        return await session.call_tool(tool, arguments)


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def ok(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await call(session, tool, **arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {text_of(result)}"
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def poll(session: ClientSession, tool: str, arguments: dict[str, Any], until: Any,
               *, within: float, every: float = 0.2) -> dict[str, Any]:
    """Call `tool` until `until(result)` holds; fail after `within` seconds."""
    with anyio.fail_after(within):
        while True:
            out = await ok(session, tool, **arguments)
            if until(out):
                return out
            await anyio.sleep(every)


def no_traceback(stderr_path: Path) -> None:
    text = stderr_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]


# -- start-up -----------------------------------------------------------------------


def test_handshake_adds_little_to_a_trivial_server(tmp_path: Path, db_target: Target) -> None:
    """Spawn -> tools/list answered: deja (100k records, ingest on, model not yet loaded)
    against a trivial one-tool MCPServer, alternated. bench/handshake.py measures the
    target (<= +0.3 s with 1M records); this bound is generous for a loaded CI box.
    PostgreSQL: an empty database, since the server opens it after the handshake whatever
    it holds (test_postgres_server: even when it cannot be reached)."""
    bench = _bench()
    cache = REPO / ".pytest_cache" / "deja-bench"
    cache.mkdir(parents=True, exist_ok=True)
    db = db_target if is_postgres(db_target) else bench.make_db(cache / "deja-100000.db",
                                                                 100_000)
    home = tmp_path / "home"
    root = tmp_path / "projects"
    home.mkdir()
    root.mkdir()
    sides = bench.variants(tmp_path, db, root, home)
    del sides["deja --no-ingest"]
    result = bench.compare(sides, bench.server_env(home), rounds=3, exit_grace=0.5)
    trivial, deja = result["sides"]["trivial"], result["sides"]["deja"]
    print(f"\nspawn -> tools/list, median of 3: trivial {trivial['median_s']:.3f} s, "
          f"deja {deja['median_s']:.3f} s ({deja['added_median_s']:+.3f} s)")
    assert set(deja["tools"]) == TOOLS
    assert deja["median_s"] <= trivial["median_s"] + 1.0, result


# -- every tool, one test each, on one server for the module ----------------------------


@dataclass
class Served:
    session: ClientSession
    stderr: Path


@pytest.fixture(scope="module")
async def served(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Served]:
    """One `deja serve --no-ingest` process on the corpus for the per-tool tests; its stderr
    must hold no traceback when they are done."""
    stderr = tmp_path_factory.mktemp("served") / "stderr.txt"
    args = server_args(corpus.db, corpus.root, corpus.home, "--no-ingest")
    async with mcp_session(args, server_env(corpus.home), stderr) as session:
        yield Served(session=session, stderr=stderr)
    no_traceback(stderr)


async def test_tools_are_listed_with_their_hints(served: Served) -> None:
    with anyio.fail_after(10):
        listed = await served.session.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    for tool in listed.tools:
        assert tool.description and tool.input_schema.get("type") == "object", tool
    annotations = {t.name: t.annotations for t in listed.tools}
    search_hints, forget_hints = annotations["search_memory"], annotations["forget_memory"]
    assert search_hints is not None and search_hints.read_only_hint is True
    assert forget_hints is not None and forget_hints.destructive_hint is True


async def test_memory_status(served: Served, corpus: Corpus) -> None:
    status = await ok(served.session, "memory_status")
    assert status["records"] > 1000 and status["sessions"] >= 10
    assert status["database"] == str(corpus.db)
    assert status.get("engine", "sqlite") == ("postgresql" if is_postgres(corpus.db)
                                              else "sqlite")
    assert status["this_process_ingests"] is False  # --no-ingest
    assert status["current_project"] == AVD_CWD
    assert status["pid"] > 0


async def test_search_memory(served: Served) -> None:
    s = served.session
    found = await ok(s, "search_memory", query="emulator root", project="all", limit=5)
    assert 1 <= len(found["hits"]) <= 5, found
    assert found["project"] == "all" and found["sessions"]
    hit = found["hits"][0]
    for key in ("handle", "kind", "time", "snippet"):
        assert key in hit, hit
    assert "scores" not in hit and "uuid" not in hit
    debug = await ok(s, "search_memory", query="emulator root", project="all", limit=5,
                     debug=True)
    assert "index" in debug and [h["handle"] for h in debug["hits"]] == [
        h["handle"] for h in found["hits"]]
    assert all(h["scores"] and h["uuid"] for h in debug["hits"])

    # "current" is the AVD project (CLAUDE_PROJECT_DIR): hits stay in it.
    current = await ok(s, "search_memory", query="emulator", limit=10)
    assert current["project"] == AVD_CWD and current["hits"]
    assert set(current["sessions"]) == {S_AVD}


async def test_get_context(served: Served) -> None:
    s = served.session
    hit = (await ok(s, "search_memory", query="emulator root", project="all", limit=1,
                    debug=True))["hits"][0]
    context = await ok(s, "get_context", ref=hit["handle"], before=2, after=2)
    assert context["hit"]["handle"] == hit["handle"]
    assert context["session"]["session_id"] == hit["session_id"]
    assert len(context["before"]) <= 2 and len(context["after"]) <= 2
    by_uuid = await ok(s, "get_context", ref=hit["uuid"], before=0, after=0)
    assert by_uuid["hit"]["uuid"] == hit["uuid"]


async def test_list_sessions(served: Served) -> None:
    s = served.session
    sessions = await ok(s, "list_sessions", project="all", limit=3)
    assert len(sessions["sessions"]) == 3
    last = [x["last_ts"] for x in sessions["sessions"]]
    assert last == sorted(last, reverse=True)
    mine = await ok(s, "list_sessions")
    assert [x["session_id"] for x in mine["sessions"]] == [S_AVD]


async def test_write_memory(served: Served) -> None:
    s = served.session
    content = "We decided the quillback parser keeps a 64 KiB cap per record."
    written = await ok(s, "write_memory", content=content, kind="decision",
                       title="quillback cap", tags=["parser", "limits"])
    assert written["created"] is True and written["project"] == "-home-cwtrocks-android-avd"
    # (duplicates stored once: tests/test_tools.py)
    memories = await ok(s, "search_memory", query="quillback", kinds=["memory"], debug=True)
    assert [h["uuid"] for h in memories["hits"]] == [written["id"]]
    await ok(s, "forget_memory", id=written["id"])  # the corpus stays as ingested


async def test_load_checkpoint(served: Served) -> None:
    s = served.session
    written = await ok(s, "write_memory", content="Checkpoint: the marmot emulator image boots.",
                       kind="checkpoint")
    checkpoint = await ok(s, "load_checkpoint", checkpoint_id=written["id"])
    assert checkpoint["checkpoint"]["id"] == written["id"]
    assert "marmot" in checkpoint["checkpoint"]["text"]
    briefing = await ok(s, "load_checkpoint", session_id=S_AVD, max_tokens=1000)
    assert briefing["session"]["session_id"] == S_AVD
    assert briefing["last_requests"]
    assert any(m["id"] == written["id"] for m in briefing["memories"])
    latest = await ok(s, "load_checkpoint", project="all")
    assert latest["session"]["session_id"]
    await ok(s, "forget_memory", id=written["id"])


async def test_forget_memory(served: Served) -> None:
    s = served.session
    written = await ok(s, "write_memory", content="The ocelot build cache lives in /var/tmp.")
    found = await ok(s, "search_memory", query="ocelot", kinds=["memory"], project="all",
                     debug=True)
    assert [h["uuid"] for h in found["hits"]] == [written["id"]]
    assert await ok(s, "forget_memory", id=written["id"]) == {"id": written["id"],
                                                              "deleted": True}
    gone = await ok(s, "search_memory", query="ocelot", kinds=["memory"], project="all")
    assert gone["hits"] == []
    await ok(s, "memory_status")


# (tool, arguments, words the error must contain: the parameter, and what to send)
BAD_CALLS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("search_memory", {}, ["query", "required"]),
    ("search_memory", {"query": 123}, ["query", "string"]),
    ("search_memory", {"query": ""}, ["query", "at least 1 character"]),
    ("search_memory", {"query": " "}, ["the query is empty"]),
    ("search_memory", {"query": "\t\n"}, ["the query is empty"]),
    ("search_memory", {"query": "x", "limit": 0}, ["limit", "greater than or equal to 1"]),
    ("search_memory", {"query": "x", "limit": 51}, ["limit", "less than or equal to 50"]),
    ("search_memory", {"query": "x", "limit": "ten"}, ["limit", "integer"]),
    ("search_memory", {"query": "x", "kinds": ["bogus"]}, ["kinds", "'prompt'", "'memory'"]),
    ("search_memory", {"query": "x", "kinds": "prompt"}, ["kinds", "list"]),
    ("search_memory", {"query": "x", "since": "last tuesday"}, ["last tuesday", "ISO date", "7d"]),
    ("search_memory", {"query": "x", "until": "soon"}, ["soon", "ISO date"]),
    ("search_memory", {"query": "x", "max_tokens": 5}, ["max_tokens", "100"]),
    ("get_context", {"ref": "rec:999999999"}, ["rec:999999999", "handle"]),
    ("get_context", {"ref": "no-such-uuid"}, ["no-such-uuid", "handle"]),
    ("get_context", {"ref": "rec:1", "before": -1}, ["before", "greater than or equal to 0"]),
    ("list_sessions", {"since": "whenever"}, ["whenever", "ISO date"]),
    ("list_sessions", {"limit": 0}, ["limit", "greater than or equal to 1"]),
    ("write_memory", {"content": ""}, ["content", "at least 1 character"]),
    ("write_memory", {"content": "x", "kind": "bogus"}, ["kind", "'note'", "'decision'"]),
    ("write_memory", {"content": "x" * 32001}, ["content", "32000"]),
    ("write_memory", {"content": "x", "tags": "a"}, ["tags", "list"]),
    ("forget_memory", {"id": "no-such-memory"}, ["no-such-memory", "write_memory"]),
    ("forget_memory", {}, ["id", "required"]),
    ("load_checkpoint", {"session_id": "no-such-session"}, ["no-such-session", "list_sessions"]),
    ("load_checkpoint", {"checkpoint_id": "no-such-checkpoint"},
     ["no-such-checkpoint", "write_memory"]),
    ("load_checkpoint", {"project": "/no/such/project"}, ["project", "session_id"]),
    ("load_checkpoint", {"max_tokens": 10}, ["max_tokens", "200"]),
]

# Text that means something to FTS5's query syntax, or nothing searchable at all.
FTS_QUERIES = ['"', '""', '"unterminated phrase', "*", "**", "a*b", "*a", "emulator*", "NEAR(",
               "NEAR(a b, 2)", "AND OR", "a AND", "OR", "NOT", "NOT x", "a OR", "a.b()", "foo-bar",
               "-foo", "+", "(", ")", "((a)", "{a b}", "[x]", "^x", "col:foo", "text:emulator",
               "records_fts:x", "'", "\\", "%_", ":", ";", "-", "🙂", "中文 检索",
               "a\u0000b", "rank MATCH x", "x" * 2000, "how did we fix the adb root emulator?"]


async def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(
        corpus: Corpus, tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.txt"
    args = server_args(corpus.db, corpus.root, corpus.home, "--no-ingest")
    transcript = await _a_transcript_uuid(corpus)
    async with mcp_session(args, server_env(corpus.home), stderr) as s:
        problems = []
        for tool, arguments, words in [
                *BAD_CALLS,
                ("forget_memory", {"id": transcript}, ["transcript record", "write_memory"])]:
            result = await call(s, tool, **arguments)
            message = text_of(result)
            if not result.is_error:
                problems.append(f"{tool}({arguments}) did not fail: {message[:200]}")
                continue
            missing = [w for w in words if w.lower() not in message.lower()]
            if missing or "Traceback" in message:
                problems.append(f"{tool}({arguments}): {message!r} lacks {missing}")
            # Still serving, and answering correctly.
            assert (await ok(s, "memory_status"))["records"] > 1000
        assert not problems, "\n".join(problems)
        for query in FTS_QUERIES:
            for extra in ({}, {"kinds": ["prompt", "tool_result"], "since": "2000-01-01"}):
                result = await call(s, "search_memory", query=query, project="all", **extra)
                assert not result.is_error, f"{query!r}: {text_of(result)}"
                assert isinstance(result.structured_content["hits"], list)
        # Searched as text: the words of a hyphenated or dotted query are found.
        found = await ok(s, "search_memory", query="adb-root", project="all")
        assert found["hits"]
    no_traceback(stderr)


async def _a_transcript_uuid(corpus: Corpus) -> str:
    return str(sql(corpus.db, "SELECT uuid FROM records WHERE kind = 'prompt' AND uuid IS NOT "
                              "NULL LIMIT 1")[0][0])


# -- live ingest ------------------------------------------------------------------------

SESSION_A = "5e55a000-0000-4000-8000-00000000000a"
SESSION_B = "5e55b000-0000-4000-8000-00000000000b"


def _turns(session: str, word: str, n: int = 6, ts: str = "2026-03-01T10:00") -> list[bytes]:
    out = []
    for i in range(n):
        uuid = f"{session[:8]}-{word}-{i:04d}"
        stamp = f"{ts}:{i:02d}.000Z"
        if i % 2 == 0:
            out.append(user(session, uuid, f"prompt {i}: please look at the {word} module",
                            ts=stamp))
        else:
            out.append(assistant(session, uuid, [{"type": "text", "text": f"done with {word}"}],
                                 ts=stamp))
    return out


async def test_a_growing_history_becomes_searchable_within_5_s(tmp_path: Path,
                                                              db_target: Target) -> None:
    root = tmp_path / "projects"
    project = root / "-home-dev-gizmo"
    first = write(project / f"{SESSION_A}.jsonl", _turns(SESSION_A, "kestrel"))
    home = tmp_path / "home"
    home.mkdir()
    db = db_target
    stderr = tmp_path / "stderr.txt"
    async with mcp_session(server_args(db, root, home), server_env(home), stderr) as s:
        # The first pass: this (only) server takes the ingest lock and reads the root.
        await poll(s, "search_memory", {"query": "kestrel", "project": "all"},
                   lambda r: r["hits"], within=15)
        assert (await ok(s, "memory_status"))["this_process_ingests"] is True

        # A new session file appears.
        write(project / f"{SESSION_B}.jsonl", _turns(SESSION_B, "ptarmigan"))
        started = time.monotonic()
        hits = await poll(s, "search_memory", {"query": "ptarmigan", "project": "all"},
                          lambda r: r["hits"], within=5)
        new_file_s = time.monotonic() - started
        assert set(hits["sessions"]) == {SESSION_B}

        # A line is appended to a session that was already read.
        with open(first, "ab") as f:
            f.write(user(SESSION_A, "5e55a000-appended", "and now the wombat importer",
                         ts="2026-03-01T11:00:00.000Z"))
        started = time.monotonic()
        hits = await poll(s, "search_memory", {"query": "wombat", "project": "all",
                                                "debug": True},
                          lambda r: r["hits"], within=5)
        appended_s = time.monotonic() - started
        assert [h["uuid"] for h in hits["hits"]] == ["5e55a000-appended"]
        sessions = await ok(s, "list_sessions", project="all")
        assert {x["session_id"] for x in sessions["sessions"]} == {SESSION_A, SESSION_B}

        # The background embedder gives every line its vectors and the server's
        # in-memory vector index takes them in (refreshed every 2 s; PostgreSQL has no
        # index in memory: pgvector scans the chunks in the database).
        def indexed(status: dict[str, Any]) -> bool:
            chunks = sql(db, "SELECT COUNT(*) FROM chunks")[0][0]
            in_memory = status["vector_index_chunks"] if not is_postgres(db) else chunks
            return status["pending_embeddings"] == 0 and bool(chunks) and in_memory == chunks

        await poll(s, "memory_status", {}, indexed, within=45, every=0.5)
        found = await ok(s, "search_memory", query="bird of prey importer", project="all",
                         debug=True)
        assert found["vector_status"] == "ok"
        assert any("vector_rank" in h["scores"] for h in found["hits"])
    print(f"searchable after: new file {new_file_s:.2f} s, appended line {appended_s:.2f} s")
    no_traceback(stderr)


# -- the process boundary ---------------------------------------------------------------


class RawServer:
    """The server on plain pipes: every byte of stdout is kept and checked."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self.lines: list[bytes] = []
        self._buffer = b""
        self._next_id = 1

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send((json.dumps(message) + "\n").encode())

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method,
                         **({"params": params} if params is not None else {})})
        with anyio.fail_after(CALL_TIMEOUT):
            while True:
                message = await self._next_message()
                if message.get("id") == request_id:
                    return message

    async def _next_message(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            self._buffer += await self.proc.stdout.receive()
        raw, self._buffer = self._buffer.split(b"\n", 1)
        self.lines.append(raw)
        return json.loads(raw)

    async def drain(self) -> None:
        """Read stdout to its end (the process closed it)."""
        assert self.proc.stdout is not None
        try:
            while True:
                self._buffer += await self.proc.stdout.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        self.lines.extend(self._buffer.split(b"\n"))
        self._buffer = b""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        answer = await self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in answer, answer
        return answer["result"]


@asynccontextmanager
async def raw_server(args: list[str], env: dict[str, str], stderr_path: Path
                     ) -> AsyncIterator[RawServer]:
    with open(stderr_path, "wb") as errlog:
        proc = await anyio.open_process([sys.executable, *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=errlog, env=env,
                                        cwd=str(REPO))
        try:
            server = RawServer(proc)
            init = await server.request("initialize", {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "deja-test", "version": "0"}})
            assert init["result"]["serverInfo"]["name"] == "deja"
            await server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield server
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
                await proc.aclose()


def _check_protocol_only(lines: list[bytes]) -> None:
    """Every line the server wrote is one JSON-RPC 2.0 message."""
    for raw in lines:
        if not raw.strip():
            continue
        try:
            message = json.loads(raw)
        except ValueError:
            pytest.fail(f"not JSON-RPC on stdout: {raw[:300]!r}")
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", raw[:300]
        assert "id" in message or "method" in message, raw[:300]


async def _exercise(server: RawServer) -> None:
    """Calls that log, load the model and fail, so that stray output would show."""
    listed = await server.request("tools/list")
    assert {t["name"] for t in listed["result"]["tools"]} == TOOLS
    await server.request("ping")
    with anyio.fail_after(30):
        while not (await server.call_tool("memory_status", {}))["structuredContent"][
                "model_loaded"]:
            await anyio.sleep(0.2)
    found = await server.call_tool("search_memory", {"query": "emulator", "project": "all"})
    assert not found["isError"]
    written = await server.call_tool("write_memory", {"content": "stdout stays clean"})
    assert not written["isError"]
    assert (await server.call_tool("search_memory", {"query": "x", "limit": 0}))["isError"]
    assert (await server.call_tool("get_context", {"ref": "rec:0"}))["isError"]


@pytest.mark.parametrize("ingest", [True, False], ids=["ingest", "no-ingest"])
async def test_stdout_is_protocol_only_and_closing_stdin_exits_cleanly(
        corpus: Corpus, tmp_path: Path, ingest: bool) -> None:
    stderr = tmp_path / "stderr.txt"
    args = server_args(corpus.db, corpus.root, corpus.home, *([] if ingest else ["--no-ingest"]))
    async with raw_server(args, server_env(corpus.home), stderr) as server:
        await _exercise(server)
        assert server.proc.stdin is not None
        await server.proc.stdin.aclose()
        started = time.monotonic()
        with anyio.move_on_after(5):
            await server.drain()
            await server.proc.wait()
        exited_s = time.monotonic() - started
        assert server.proc.returncode == 0, (
            f"still running {exited_s:.1f} s after stdin closed" if server.proc.returncode is None
            else f"exit code {server.proc.returncode}")
        _check_protocol_only(server.lines)
    no_traceback(stderr)


@pytest.mark.parametrize("ingest", [True, False], ids=["ingest", "no-ingest"])
async def test_sigterm_stops_the_server_cleanly(corpus: Corpus, tmp_path: Path,
                                                ingest: bool) -> None:
    """Claude Code's client closes stdin, then SIGTERMs after 2 s: SIGTERM alone must do."""
    stderr = tmp_path / "stderr.txt"
    args = server_args(corpus.db, corpus.root, corpus.home, *([] if ingest else ["--no-ingest"]))
    async with raw_server(args, server_env(corpus.home), stderr) as server:
        listed = await server.request("tools/list")
        assert len(listed["result"]["tools"]) == len(TOOLS)
        status = (await server.call_tool("memory_status", {}))["structuredContent"]
        assert status["this_process_ingests"] is ingest
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        with anyio.move_on_after(5):
            await server.proc.wait()
        exited_s = time.monotonic() - started
        assert server.proc.returncode == 0, (
            f"still running {exited_s:.1f} s after SIGTERM" if server.proc.returncode is None
            else f"exit code {server.proc.returncode}")
        await server.drain()
        _check_protocol_only(server.lines)
    no_traceback(stderr)
