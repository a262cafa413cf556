"""Every MCP tool, in process: `build_server` driven by the SDK's in-memory `Client`.

No subprocess, no stdio, no `../shared`: the history is tests/sample/projects
(the shop-api session) plus one synthetic session of another project (gizmo)
with edits, todos and a failed command, ingested once for the module. Each
test serves its own copy of that database with `ingest=False, load_model=False`
(the model is not the point here; test_server.py runs the real process), with
shop-api as the "current" project. Bad arguments must come back as tool errors
(isError, a message naming the parameter or saying what to send, no
traceback), whether pydantic refuses them or the library raises `DejaError`.

Every test runs on both engines (the `engine` fixture): on PostgreSQL the same
history is ingested once per run into a template database (as machine
`fixtures.served.MACHINE`) and each test serves a clone of it, so the same
assertions hold for the same tools on either store; PostgreSQL hits also say
their `machine`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.engines import Target, clone, copy_sqlite, is_postgres
from fixtures.paths import SAMPLE
from fixtures.postgres import PgServer
from fixtures.served import MACHINE, pg_template, server_config, unused_sqlite_path
from fixtures.transcripts import assistant, user, write
from mcp import Client
from mcp.types import CallToolResult

from ingest.config import PostgresUrl
from ingest.runner import ingest_once
from ingest.store import Store
from mcp_server.search.snippets import make_snippet
from mcp_server.server import INSTRUCTIONS, build_server

pytestmark = pytest.mark.anyio

SHOP_CWD = "/home/demo/shop-api"  # tests/sample/projects: the "current" project here
SHOP_SESSION = "7d5c2a4e-1f0b-4c1e-9a51-3b7e2f9d6c10"
GIZMO_SESSION = "61a70000-0000-4000-8000-000000000001"
# The fields a search_memory hit may have without debug (tools.search_memory's docstring).
ANSWER_HIT_KEYS = {"handle", "kind", "tool", "agent_id", "time", "session_id", "project", "snippet"}
TOOLS = ["search_memory", "get_context", "list_sessions", "write_memory", "forget_memory",
         "load_checkpoint", "memory_status"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _gizmo_session() -> list[bytes]:
    """A session of /home/dev/gizmo: a prompt, an edit, a todo list, a failed command."""
    s, ts = GIZMO_SESSION, "2026-09-01T08:00:{:02d}.000Z"
    todos = {"todos": [{"content": "port the wombat importer", "status": "in_progress"},
                       {"content": "write the changelog", "status": "pending"},
                       {"content": "read the spec", "status": "completed"}]}
    return [
        user(s, "g-0001", "please port the wombat importer to the new parser", ts=ts.format(0)),
        assistant(s, "g-0002", [{"type": "tool_use", "id": "toolu_g_todo", "name": "TodoWrite",
                                 "input": todos}], ts=ts.format(1)),
        assistant(s, "g-0003", [{"type": "tool_use", "id": "toolu_g_edit", "name": "Edit",
                                 "input": {"file_path": "/home/dev/gizmo/wombat.py",
                                           "old_string": "a", "new_string": "b"}}],
                  ts=ts.format(2)),
        assistant(s, "g-0004", [{"type": "tool_use", "id": "toolu_g_bash", "name": "Bash",
                                 "input": {"command": "make check"}}], ts=ts.format(3)),
        # Terminal colours, a window title (OSC), a stray ESC and a backspace, as tools print them.
        user(s, "g-0005", [{"type": "tool_result", "tool_use_id": "toolu_g_bash",
                            "is_error": True,
                            "content": "\x1b]0;make\x07\x1b[1;31mmake: *** [check] Error 2\x1b[0m "
                                       "(quokka)\x1b \x08done"}],
             ts=ts.format(4)),
        assistant(s, "g-0006", [{"type": "text", "text": "The check fails in the quokka step."}],
                  ts=ts.format(5)),
        # The first "marmot" is alone; the answer, far below, names all three words.
        assistant(s, "g-0007", [{"type": "text", "text": (
            "A marmot appears in the changelog. " + "Unrelated notes follow. " * 40
            + "Found it: the marmot parser drops the ibex field, so we pin the parser to 2.1.")}],
                  ts=ts.format(6)),
    ]


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample and gizmo sessions, laid out like ~/.claude/projects."""
    root = tmp_path_factory.mktemp("tools") / "projects"
    shutil.copytree(SAMPLE, root)
    write(root / "-home-dev-gizmo" / f"{GIZMO_SESSION}.jsonl", _gizmo_session())
    return root


async def _ingest(store: Any, root: Path) -> None:
    try:
        summary = await ingest_once(store, [root])
    finally:
        await store.close()
    assert summary.new_records >= 15 and not summary.file_errors, summary


@pytest.fixture(scope="module")
def history_db(history_root: Path) -> Path:
    """The history ingested (keyword index only) into a module SQLite database."""
    db = history_root.parent / "deja.db"

    async def ingest() -> None:
        await _ingest(await Store.open(db), history_root)

    anyio.run(ingest)
    return db


@pytest.fixture(scope="module")
def pg_history(history_root: Path, postgres_server: PgServer) -> str:
    """The same history ingested (keyword index only) into a PostgreSQL template, once."""
    from ingest.pg.store import PgStore

    def build(url: str) -> None:
        async def ingest() -> None:
            await _ingest(await PgStore.open(PostgresUrl(url), MACHINE, {}), history_root)

        anyio.run(ingest)

    return pg_template(postgres_server, f"tools:{history_root}", build)


@pytest.fixture
def target(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """This test's own copy of the module's history, in the engine's store."""
    if engine == "postgres":
        return clone(request.getfixturevalue("postgres_server"),
                     request.getfixturevalue("pg_history"))
    return copy_sqlite(request.getfixturevalue("history_db"), tmp_path / "deja.db")


@pytest.fixture
async def client(target: Target, tmp_path: Path) -> AsyncIterator[Client]:
    """An in-memory client of a server on the test's copy of the module history."""
    config = server_config(target, {"CLAUDE_PROJECT_DIR": SHOP_CWD}, tmp_path,
                           ingest=False, load_model=False)
    async with Client(build_server(config)) as connected:
        yield connected
    assert not unused_sqlite_path(tmp_path).parent.exists()  # PostgreSQL: nothing local


async def call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    with anyio.fail_after(20):
        return await client.call_tool(tool, arguments)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await call(client, tool, **arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {_text(result)}"
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def refused(client: Client, tool: str, words: list[str], **arguments: Any) -> str:
    """Call a tool that must fail; its message has `words` and no traceback."""
    result = await call(client, tool, **arguments)
    message = _text(result)
    assert result.is_error, f"{tool}({arguments}) did not fail: {message[:300]}"
    assert message.startswith(f"Error executing tool {tool}: "), message
    missing = [w for w in words if w.lower() not in message.lower()]
    assert not missing, f"{message!r} lacks {missing}"
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def _text(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


# -- the listing -------------------------------------------------------------------------


async def test_the_server_lists_every_tool_with_its_hints_and_instructions(
        client: Client) -> None:
    assert client.instructions == INSTRUCTIONS
    listed = (await client.list_tools()).tools
    assert [t.name for t in listed] == TOOLS
    for tool in listed:
        assert tool.description and tool.input_schema.get("type") == "object", tool
        assert tool.output_schema is not None, tool
        assert "ctx" not in tool.input_schema.get("properties", {}), tool
    hints = {t.name: t.annotations for t in listed}
    assert all(h is not None for h in hints.values())
    read_only = {name for name, h in hints.items() if h is not None and h.read_only_hint}
    assert read_only == set(TOOLS) - {"write_memory", "forget_memory"}
    forget = hints["forget_memory"]
    assert forget is not None and forget.destructive_hint is True


# -- one test per tool ------------------------------------------------------------------


async def test_search_memory(client: Client, target: Target) -> None:
    result = await call(client, "search_memory", query="redis timeout", limit=3)
    found = result.structured_content
    assert not result.is_error and isinstance(found, dict)
    # What the agent reads is that same JSON, unindented.
    assert json.loads(_text(result)) == found and "\n" not in _text(result)
    assert found["project"] == SHOP_CWD
    assert found["sessions"] == {SHOP_SESSION: SHOP_CWD}
    assert 1 <= len(found["hits"]) <= 3
    # On PostgreSQL each hit also says which machine it came from.
    machine = {"machine"} if is_postgres(target) else set()
    for hit in found["hits"]:
        assert {"handle", "kind", "time", "snippet"} | machine <= set(hit) <= \
            ANSWER_HIT_KEYS | machine, hit
        assert hit.get("machine", MACHINE) == MACHINE
        assert None not in hit.values(), hit
        assert hit["handle"].startswith("rec:") and hit["time"].endswith("Z")
    if len(found["hits"]) > 1:  # one session: it is the one key of `sessions`
        assert all("session_id" not in h for h in found["hits"])
    assert not {"query", "mode", "index", "elapsed_ms", "pending_embeddings"} & set(found)

    # Another project: found with project="all" or its path, not from "current".
    assert not (await ok(client, "search_memory", query="quokka"))["hits"]
    everywhere = await ok(client, "search_memory", query="quokka", project="all")
    assert everywhere["project"] == "all"
    assert everywhere["sessions"] == {GIZMO_SESSION: "/home/dev/gizmo"}
    prompts = await ok(client, "search_memory", query="wombat importer",
                       project="/home/dev/gizmo", kinds=["prompt"], debug=True)
    assert [h["uuid"] for h in prompts["hits"]] == ["g-0001"]
    # Hits of several sessions name theirs; the map gives each one's project.
    both = await ok(client, "search_memory", query="quokka OR redis", project="all", limit=20)
    assert set(both["sessions"]) == {SHOP_SESSION, GIZMO_SESSION}
    assert {h["session_id"] for h in both["hits"]} == {SHOP_SESSION, GIZMO_SESSION}
    assert all("project" not in h for h in both["hits"])

    await refused(client, "search_memory", ["last tuesday", "ISO date", "7d"],
                  query="x", since="last tuesday")  # DejaError from the library
    await refused(client, "search_memory", ["limit", "greater than or equal to 1"],
                  query="x", limit=0)  # refused by the schema
    await refused(client, "search_memory", ["query", "required"])


async def test_search_memory_with_debug_gives_every_field_and_score(client: Client) -> None:
    plain = await ok(client, "search_memory", query="redis timeout", limit=3)
    debug = await ok(client, "search_memory", query="redis timeout", limit=3, debug=True)
    assert [h["handle"] for h in debug["hits"]] == [h["handle"] for h in plain["hits"]]
    assert debug["query"] == "redis timeout" and debug["mode"] == "hybrid"
    assert debug["index"]["this_process_ingests"] is False and "elapsed_ms" in debug
    for hit in debug["hits"]:
        assert {"uuid", "record_id", "session_id", "project", "timestamp", "tool_name",
                "agent_id", "score", "scores"} <= set(hit), hit
        assert hit["handle"] == f"rec:{hit['record_id']}" and hit["scores"]["bm25_rank"] >= 1
    assert all("score" not in h and "scores" not in h for h in plain["hits"])
    # Twice as long for the same hits (the JSON text, as the agent gets it).
    assert len(json.dumps(debug)) > 1.5 * len(json.dumps(plain))


async def test_snippets_never_show_terminal_codes(client: Client) -> None:
    found = await ok(client, "search_memory", query="quokka check", project="all",
                     kinds=["tool_result"])
    snippet = found["hits"][0]["snippet"]
    assert "Error 2" in snippet and "done" in snippet
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in snippet), repr(snippet)
    assert "[0m" not in snippet and "1;31m" not in snippet and "0;make" not in snippet
    # The stored text stays as it came.
    debug = await ok(client, "search_memory", query="quokka check", project="all",
                     kinds=["tool_result"], debug=True)
    context = await ok(client, "get_context", ref=debug["hits"][0]["uuid"], before=0, after=0)
    assert "\x1b[1;31mmake" in context["hit"]["text"]

    raw = ("\x1b[38;5;196mred\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "
           "\x9b2Kbell\x07 nul\x00 esc\x1b tab\tend")
    assert make_snippet(raw, ["red"]) == "[red] link bell nul esc tab end"


async def test_the_snippet_window_with_more_query_words_wins(client: Client) -> None:
    found = await ok(client, "search_memory", query="marmot parser ibex", project="all")
    snippet = found["hits"][0]["snippet"]
    assert "[marmot] [parser] drops the [ibex] field" in snippet, snippet
    assert "changelog" not in snippet and snippet.startswith("…")
    # The same rule straight from make_snippet, and `around` only settles a tie.
    text = "alpha one. " + "filler " * 100 + "alpha beta here. " + "filler " * 100 + "alpha beta."
    assert "[alpha] [beta] here" in make_snippet(text, ["alpha", "beta"], width=60)
    assert "[alpha] [beta]." in make_snippet(text, ["alpha", "beta"], around=len(text) - 5,
                                             width=60)
    # Too narrow for two words: every window ties at one, the one nearest `around` wins.
    assert make_snippet(text, ["alpha", "beta"], around=0, width=10) == "[alpha]…"
    assert make_snippet(text, ["alpha", "beta"], around=len(text), width=10) == "…[beta]."


async def test_get_context(client: Client) -> None:
    hit = (await ok(client, "search_memory", query="SCAN pool", limit=1))["hits"][0]
    context = await ok(client, "get_context", ref=hit["handle"], before=2, after=2)
    assert context["hit"]["handle"] == hit["handle"]
    assert context["session"]["session_id"] == SHOP_SESSION
    assert context["session"]["cwd"] == SHOP_CWD
    assert len(context["before"]) == 2 and len(context["after"]) == 2
    uuid = (await ok(client, "search_memory", query="SCAN pool", limit=1,
                     debug=True))["hits"][0]["uuid"]
    by_uuid = await ok(client, "get_context", ref=uuid, before=0, after=0)
    assert by_uuid["hit"]["uuid"] == uuid and by_uuid["hit"]["handle"] == hit["handle"]
    assert by_uuid["before"] == [] and by_uuid["after"] == []

    await refused(client, "get_context", ["rec:999999999", "handle"], ref="rec:999999999")
    await refused(client, "get_context", ["before", "greater than or equal to 0"],
                  ref=hit["handle"], before=-1)


async def test_list_sessions(client: Client) -> None:
    mine = await ok(client, "list_sessions")
    assert mine["project"] == SHOP_CWD and mine["notes"] == []
    assert [s["session_id"] for s in mine["sessions"]] == [SHOP_SESSION]
    assert mine["sessions"][0]["git_branch"] == "fix-redis-timeouts"
    everything = await ok(client, "list_sessions", project="all")
    assert [s["session_id"] for s in everything["sessions"]] == [SHOP_SESSION, GIZMO_SESSION]
    assert [s["session_id"] for s in (await ok(client, "list_sessions", project="all",
                                               limit=1))["sessions"]] == [SHOP_SESSION]
    assert (await ok(client, "list_sessions", project="all", since="2026-09-15"))[
        "sessions"][0]["session_id"] == SHOP_SESSION

    await refused(client, "list_sessions", ["whenever", "ISO date"], since="whenever")
    await refused(client, "list_sessions", ["limit", "greater than or equal to 1"], limit=0)


async def test_write_memory(client: Client) -> None:
    content = "We decided the cart cache uses SCAN with count=500, never KEYS."
    written = await ok(client, "write_memory", content=content, kind="decision",
                       title="redis scan", tags=["redis", "cache"])
    assert written["created"] is True and written["project"] == "-home-demo-shop-api"
    again = await ok(client, "write_memory", content=content, kind="decision",
                     title="redis scan", tags=["cache", "redis"])
    assert again == {**written, "created": False}
    found = await ok(client, "search_memory", query="count=500 KEYS", kinds=["memory"],
                     debug=True)
    assert [h["uuid"] for h in found["hits"]] == [written["id"]]
    # A project with no history yet: filed under the folder Claude Code will name after it.
    elsewhere = await ok(client, "write_memory", content="a note for later",
                         project="/home/dev/new-thing")
    assert elsewhere["project"] == "-home-dev-new-thing"

    await refused(client, "write_memory", ["kind", "'note'", "'decision'"],
                  content="x", kind="bogus")
    await refused(client, "write_memory", ["content", "at least 1 character"], content="")


async def test_forget_memory(client: Client) -> None:
    written = await ok(client, "write_memory", content="the pelican cache is warm at boot")
    assert await ok(client, "forget_memory", id=written["id"]) == {"id": written["id"],
                                                                    "deleted": True}
    gone = await ok(client, "search_memory", query="pelican", kinds=["memory"], project="all")
    assert gone["hits"] == []

    await refused(client, "forget_memory", [written["id"], "write_memory"], id=written["id"])
    await refused(client, "forget_memory", ["transcript record", "write_memory"], id="g-0001")
    await refused(client, "forget_memory", ["id", "required"])


async def test_load_checkpoint(client: Client) -> None:
    latest = await ok(client, "load_checkpoint")  # the current project's latest session
    assert latest["session"]["session_id"] == SHOP_SESSION
    assert latest["files_edited"] == ["/home/demo/shop-api/src/cart/cache.py"]
    assert latest["last_requests"][-1]["text"].startswith("Agreed, use SCAN.")

    gizmo = await ok(client, "load_checkpoint", session_id=GIZMO_SESSION, max_tokens=1000)
    assert gizmo["session"]["cwd"] == "/home/dev/gizmo"
    assert gizmo["open_todos"] == [{"content": "port the wombat importer", "status": "in_progress"},
                                   {"content": "write the changelog", "status": "pending"}]
    assert gizmo["files_edited"] == ["/home/dev/gizmo/wombat.py"]
    assert [e["tool_name"] for e in gizmo["last_errors"]] == ["Bash"]
    assert "quokka" in gizmo["last_errors"][0]["text"]
    assert gizmo["checkpoint"] is None and gizmo["recent_turns"]  # no summary, no checkpoint
    assert gizmo["failed_commands"] == [{"command": "make check", "timestamp": gizmo[
        "failed_commands"][0]["timestamp"], "error": gizmo["failed_commands"][0]["error"]}]
    assert "Error 2" in gizmo["failed_commands"][0]["error"]
    assert "\x1b" not in gizmo["failed_commands"][0]["error"]  # terminal codes left out

    written = await ok(client, "write_memory", content="checkpoint: quokka step still red",
                       kind="checkpoint", project="/home/dev/gizmo", session_id=GIZMO_SESSION)
    briefing = await ok(client, "load_checkpoint", checkpoint_id=written["id"])
    assert briefing["checkpoint"]["id"] == written["id"]
    assert briefing["checkpoint"]["memory_kind"] == "checkpoint"
    assert briefing["session"]["session_id"] == GIZMO_SESSION
    assert [m["id"] for m in briefing["memories"]] == [written["id"]]
    json.dumps(briefing)  # JSON as it stands

    await refused(client, "load_checkpoint", ["no-such-session", "list_sessions"],
                  session_id="no-such-session")
    await refused(client, "load_checkpoint", ["no-such-checkpoint", "write_memory"],
                  checkpoint_id="no-such-checkpoint")
    await refused(client, "load_checkpoint", ["project", "session_id"],
                  project="/no/such/project")
    await refused(client, "load_checkpoint", ["max_tokens", "200"], max_tokens=10)


async def test_memory_status(client: Client, target: Target) -> None:
    status = await ok(client, "memory_status")
    assert status["sessions"] == 2 and status["records"] >= 15 and status["memories"] == 0
    assert status["pending_embeddings"] == status["records"]  # ingested without embedding
    assert status["this_process_ingests"] is False
    assert status["model_loaded"] is False and status["model_error"] == "model loading disabled"
    assert status["vector_index_chunks"] is None
    assert status["current_project"] == SHOP_CWD
    assert status["roots"] == [] and status["background_errors"] == []
    assert status["pid"] > 0
    assert status["database"] == str(target)  # this test's own copy
    assert status.get("engine", "sqlite") == ("postgresql" if is_postgres(target) else "sqlite")
    assert status["database_bytes"] > 0
    await ok(client, "write_memory", content="one more memory")
    assert (await ok(client, "memory_status"))["memories"] == 1


async def test_memory_writes_at_once_are_each_stored(client: Client) -> None:
    """Tool calls run concurrently; the writes share the server's one store connection."""
    written: list[dict[str, Any]] = []

    async def write_one(n: int) -> None:
        written.append(await ok(client, "write_memory", content=f"concurrent note {n}: "
                                f"the {'abcdefgh'[n]}yak flag"))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(write_one, n)
    assert len({w["id"] for w in written}) == 8 and all(w["created"] for w in written)
    assert (await ok(client, "memory_status"))["memories"] == 8
    for w in written[:3]:
        await ok(client, "forget_memory", id=w["id"])
    assert (await ok(client, "memory_status"))["memories"] == 5
