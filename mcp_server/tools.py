"""deja's MCP tools: what the agent calls, as plain async functions.

Each tool is thin: typed parameters (the JSON schema comes from the hints and
`Field`s, the description from the docstring), the same library calls the CLI
makes, and a JSON-able dict back. A tool's docstring is sent to the agent
verbatim, whitespace included: its continuation lines are indented eight
spaces, as they were when the tools were nested in `build_server`, so that
tools/list stays byte for byte what clients have seen.
`build_server` registers every entry of `TOOLS` (function, annotations), in
this order, through `as_tool`: the one place the database is made ready for a
call (a PostgreSQL database opens on first use, state.py) and the one place a
`DejaError`, or a statement PostgreSQL refused, becomes a `ToolError`: one
line the model can act on, without the password; no traceback crosses the
wire.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from ingest.errors import DejaError
from ingest.memories import MEMORY_KINDS
from ingest.memories import forget_memory as forget_memory_record
from ingest.memories import write_memory as write_memory_record
from ingest.parse import KINDS

from . import history
from .checkpoint import load_checkpoint as assemble_checkpoint
from .projects import memory_project, project_filter, resolve_project
from .search import Resources, SearchRequest, search
from .search.results import SearchResult
from .state import DejaState

__all__ = [
    "TOOLS", "as_tool", "search_memory", "get_context", "list_sessions",
    "write_memory", "forget_memory", "load_checkpoint", "memory_status",
]

Kind = Literal[
    "prompt", "command", "meta", "assistant", "thinking", "tool_call", "tool_result",
    "compaction", "compact_summary", "summary", "system", "error", "attachment",
    "workflow_result", "memory",
]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]
MemoryKind = Literal["note", "decision", "checkpoint", "todo", "fact", "preference"]
assert set(MemoryKind.__args__) == set(MEMORY_KINDS)  # type: ignore[attr-defined]

Tool = Callable[..., Awaitable[dict[str, Any] | CallToolResult]]


def as_tool(tool: Tool) -> Tool:
    """`tool` as the server registers it: the database opened first (a no-op once open),
    a `DejaError` raised as a `ToolError` of the same message, a psycopg error as a
    `ToolError` of its one line (password masked; a lost connection is reopened by the
    next call).

    `functools.wraps` keeps the name, the docstring and (through `__wrapped__`)
    the signature the SDK builds the schemas from; the SDK passes the context as
    `ctx`, every tool's first parameter.
    """

    @functools.wraps(tool)
    async def call(*args: Any, **kwargs: Any) -> dict[str, Any] | CallToolResult:
        state = _state(kwargs["ctx"])
        try:
            await state.open_database()
            return await tool(*args, **kwargs)
        except DejaError as exc:
            raise ToolError(str(exc)) from None
        except Exception as exc:
            message = _pg_message(state, exc)
            if message is None:
                raise
            raise ToolError(message) from None

    return call


def _pg_message(state: DejaState, exc: Exception) -> str | None:
    """The one-line message of a psycopg error on the server's PostgreSQL, else None."""
    target = state.config.pg
    if target is None or type(exc).__module__.partition(".")[0] != "psycopg":
        return None
    from ingest.pg.connect import describe

    return f"PostgreSQL at {target}: {describe(exc, target, state.config.environ)}"


def _state(ctx: Context) -> DejaState:
    return cast(DejaState, ctx.request_context.lifespan_context)


async def search_memory(
    ctx: Context,
    query: Annotated[str, Field(min_length=1, max_length=2000,
                                description="what to look for: words, an error message, "
                                            "or a question in plain language")],
    project: Annotated[str | None, Field(description=(
        "'current' (default: the project this session runs in, falling back to all "
        "projects when it has no history), 'all', a project path, or a folder name"))] = None,
    session_id: Annotated[str | None, Field(description="only this session")] = None,
    kinds: Annotated[list[Kind] | None, Field(description=(
        "only these kinds of records, e.g. ['prompt'] for what the user asked, "
        "['tool_result'] for command output, ['memory'] for written memories"))] = None,
    tool: Annotated[str | None, Field(description="only calls/results of this tool, "
                                                  "e.g. 'Bash' or 'Edit'")] = None,
    since: Annotated[str | None, Field(description="ISO date or relative: 7d, 2w, "
                                                   "yesterday")] = None,
    until: Annotated[str | None, Field(description="upper time bound, same forms")] = None,
    limit: Annotated[int, Field(ge=1, le=50, description="hits to return")] = 10,
    max_tokens: Annotated[int, Field(ge=100, le=20000,
                                     description="bound on the size of the answer")] = 2000,
    debug: Annotated[bool, Field(description=(
        "also return every ranker's rank and score, uuids, record ids and index state"))] = False,
) -> Annotated[CallToolResult, dict[str, Any]]:
    """Search past Claude Code sessions (prompts, answers, thinking, tool calls and outputs,
        compaction summaries, subagent runs) and written memories. Hybrid keyword + meaning
        search. Returns hits, best first, each with a handle, kind, tool, time (UTC), session_id
        and a snippet with the query words in [brackets]; `sessions` maps each session_id to its
        project (when all hits are from one session, they leave session_id out). Pass a hit's
        handle to get_context to read the surrounding turns. debug: true adds the scores."""
    state = _state(ctx)
    await state.wait_for_model()  # a quick load under way: vectors in a moment, not keywords
    scope, notes = await project_filter(state.reads, state.project, project)
    request = SearchRequest(query, mode="hybrid", limit=limit, kinds=kinds,
                            session_id=session_id, project=scope, tool=tool, since=since,
                            until=until, max_tokens=max_tokens)
    result = await _search(state, request)
    if not debug:
        return _compact(result.to_answer(scope or "all", notes))
    out = result.to_dict()
    out["notes"] = notes + out["notes"]
    out["project"] = scope or "all"
    last = await state.writer.get_meta("last_ingest")
    out["index"] = {"pending_embeddings": result.pending_embeddings, "last_ingest": last,
                    "this_process_ingests": state.ingesting}
    return _compact(out)


async def _search(state: DejaState, request: SearchRequest) -> SearchResult:
    """The hybrid search on the server's engine: SQLite with the in-memory vector index,
    or PostgreSQL, where pgvector scans in the database (mcp_server/search/pg)."""
    if state.on_postgres:
        from .search.pg import search_pg

        return await search_pg(state.reads.raw, request, embedder=state.embedder,
                               embedder_error=state.embedder_error,
                               ml_embedder=state.ml.embedder if state.ml is not None else None)
    return await search(
        state.reads, request,
        Resources(embedder=state.embedder, embedder_error=state.embedder_error,
                  vector_index=state.vector_index, vector_conn=state.vector_conn,
                  ml_embedder=state.ml.embedder if state.ml is not None else None,
                  ml_index=state.ml_index),
    )


def _compact(out: dict[str, Any]) -> CallToolResult:
    """`out` as structured content, and as its text JSON without the SDK's indentation
    (a fifth of a 10-hit answer was spaces and newlines)."""
    text = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out)


async def get_context(
    ctx: Context,
    ref: Annotated[str, Field(min_length=1, description="a hit's handle (rec:123) or uuid")],
    before: Annotated[int, Field(ge=0, le=50, description="records before the hit")] = 5,
    after: Annotated[int, Field(ge=0, le=50, description="records after the hit")] = 5,
    max_tokens: Annotated[int, Field(ge=200, le=30000)] = 4000,
) -> dict[str, Any]:
    """The turns around a search hit, in conversation order (prompts, answers, tool calls
        and results), with the session's title, cwd and branch."""
    return await history.get_context(_state(ctx).reads, ref, before=before,
                                      after=after, max_tokens=max_tokens)


async def list_sessions(
    ctx: Context,
    project: Annotated[str | None, Field(description="'current' (default), 'all', a path "
                                                     "or a folder name")] = None,
    since: Annotated[str | None, Field(description="ISO date or relative (7d, 2w)")] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """Recent Claude Code sessions, newest first: title, git branch, time span, size,
        number of prompts and subagent runs."""
    state = _state(ctx)
    scope, notes = await project_filter(state.reads, state.project, project)
    out = await history.list_sessions(state.reads, project=scope, since=since, limit=limit)
    out["project"] = scope or "all"
    out["notes"] = notes
    return out


async def write_memory(
    ctx: Context,
    content: Annotated[str, Field(min_length=1, max_length=32000,
                                  description="the memory, self-contained: it will be read "
                                              "weeks later without this conversation")],
    title: Annotated[str | None, Field(max_length=200)] = None,
    tags: Annotated[list[str] | None, Field(max_length=20)] = None,
    project: Annotated[str | None, Field(description="'current' (default) or a project "
                                                     "path")] = None,
    kind: Annotated[MemoryKind, Field(description="note, decision, checkpoint, todo, fact "
                                                  "or preference")] = "note",
    session_id: Annotated[str | None, Field(description="the session it belongs to, if "
                                                        "known")] = None,
) -> dict[str, Any]:
    """Store an explicit memory (a decision, a note, a checkpoint of where work stands) so
        that later sessions find it with search_memory and load_checkpoint. Exact duplicates are
        stored once. Returns the memory's id."""
    state = _state(ctx)
    project_dir, cwd = await memory_project(state.reads, state.project, project)
    async with state.write_lock:
        written = await write_memory_record(
            state.writer, content, project_dir=project_dir, cwd=cwd,
            title=title, tags=tags, kind=kind, session_id=session_id,
        )
    return written.to_dict()


async def forget_memory(
    ctx: Context,
    id: Annotated[str, Field(min_length=1, description="the id write_memory returned")],
) -> dict[str, Any]:
    """Delete a memory written with write_memory. Transcript history cannot be deleted."""
    state = _state(ctx)
    async with state.write_lock:
        await forget_memory_record(state.writer, id)
    return {"id": id, "deleted": True}


async def load_checkpoint(
    ctx: Context,
    session_id: Annotated[str | None, Field(description="the session to brief on; default: "
                                                        "the project's latest")] = None,
    project: Annotated[str | None, Field(description="'current' (default), 'all', a path "
                                                     "or a folder name")] = None,
    checkpoint_id: Annotated[str | None, Field(description="a checkpoint memory's id")] = None,
    max_tokens: Annotated[int, Field(ge=200, le=30000)] = 4000,
) -> dict[str, Any]:
    """Where a session stood: its latest compaction summary and what happened after it, the
        user's last requests, files edited, open todos, last errors, and checkpoints and
        memories. Use it to resume work after a compaction or in a new session."""
    state = _state(ctx)
    dirs = None
    if not session_id and not checkpoint_id:
        scope, _ = await project_filter(state.reads, state.project, project)
        dirs = await resolve_project(state.reads, scope)
    return await assemble_checkpoint(state.reads, session_id=session_id,
                                     project_dirs=dirs, checkpoint_id=checkpoint_id,
                                     max_tokens=max_tokens)


async def memory_status(ctx: Context) -> dict[str, Any]:
    """The state of deja's memory: database path and size, sessions, records, memories,
        records awaiting embedding, the embedding model, whether this server process is the one
        ingesting, and the last ingest time."""
    state = _state(ctx)
    out = await history.status(state.reads, state.db_path)
    if state.on_postgres:
        out.update({"database": str(state.config.pg), "engine": "postgresql",
                    "machine": state.config.machine,
                    "database_bytes": await _pg_size(state.reads)})
    out.update({
        "this_process_ingests": state.ingesting,
        "model_loaded": state.embedder is not None,
        "model_error": state.embedder_error,
        "vector_index_chunks": len(state.vector_index) if state.vector_index.ready else None,
        "current_project": state.project,
        "roots": [str(r) for r in state.config.roots],
        "background_errors": state.background_errors,
        "pid": os.getpid(),
    })
    if state.ml is not None and state.ml.enabled and state.on_postgres:
        from .search.pg.multilingual import ml_status_pg

        out["multilingual"] = await ml_status_pg(state.reads.raw, state.ml.embedder,
                                                 state.ml.error)
    elif state.ml is not None and state.ml.enabled:
        from .search.multilingual import ml_status

        out["multilingual"] = await ml_status(state.reads, state.ml.embedder, state.ml.error,
                                              state.ml_index)
    return out


async def _pg_size(reads: Any) -> int:
    rows = await reads.execute_fetchall("SELECT pg_database_size(current_database())")
    return int(rows[0][0])


_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

# Every tool with its hints, in the order tools/list shows them.
TOOLS: tuple[tuple[Tool, ToolAnnotations], ...] = (
    (search_memory, _READ_ONLY),
    (get_context, _READ_ONLY),
    (list_sessions, _READ_ONLY),
    (write_memory, ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                   idempotent_hint=True, open_world_hint=False)),
    (forget_memory, ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                    idempotent_hint=True, open_world_hint=False)),
    (load_checkpoint, _READ_ONLY),
    (memory_status, _READ_ONLY),
)
