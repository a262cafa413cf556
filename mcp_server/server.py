"""The MCP stdio server: deja's memory tools for the agent.

`build_server(config)` returns an `MCPServer` whose lifespan opens the
database and starts, in one anyio task group:
- the ingest supervisor: takes the ingest lock when free (one ingesting
  process per database; another takes over within seconds when it dies), then
  watches the transcript roots and embeds what is pending;
- the model loader: loads the embedding model in a worker thread AFTER the
  handshake, for query vectors. Until it is up, search answers from keywords
  and says so.
Failures in either are logged and retried with backoff, never fatal. Both stop
when the client closes stdin or the process gets SIGTERM.

The tools are thin: typed parameters (JSON schema from the hints), the same
library calls the CLI makes, `DejaError` turned into `ToolError` (a message
the model can act on; no traceback crosses the wire). Nothing but protocol is
written to stdout.
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from ingest.db import connect
from ingest.errors import DejaError
from ingest.lease import IngestLock
from ingest.memories import MEMORY_KINDS
from ingest.memories import forget_memory as forget_memory_record
from ingest.memories import write_memory as write_memory_record
from ingest.parse import KINDS
from ingest.runner import IngestSummary, watch
from ingest.store import Store

from . import history
from .checkpoint import load_checkpoint as assemble_checkpoint
from .projects import current_project, memory_project, project_filter, resolve_project
from .search import Resources, SearchRequest, VectorIndex, search

__all__ = ["ServerConfig", "DejaState", "build_server", "run_stdio"]

logger = logging.getLogger(__name__)

Kind = Literal[
    "prompt", "command", "meta", "assistant", "thinking", "tool_call", "tool_result",
    "compaction", "compact_summary", "summary", "system", "error", "attachment",
    "workflow_result", "memory",
]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]
MemoryKind = Literal["note", "decision", "checkpoint", "todo", "fact", "preference"]
assert set(MemoryKind.__args__) == set(MEMORY_KINDS)  # type: ignore[attr-defined]

INSTRUCTIONS = """\
deja is the long-term memory of this machine's Claude Code sessions: every past prompt, answer,
tool call and result, compaction summary and subagent run, plus memories written on purpose.
Use search_memory when the user refers to earlier work ("how did we fix X", "what did we decide
about Y", "last week's error"), then get_context on a hit to read the surrounding turns.
load_checkpoint recovers where a session stood (after a compaction or in a new session).
write_memory stores a decision or note worth finding later."""


@dataclass
class ServerConfig:
    db_path: Path
    roots: list[Path]
    environ: Mapping[str, str]
    ingest: bool = True  # run the background ingest supervisor
    load_model: bool = True
    rescan_seconds: float = 30.0
    embed_poll_seconds: float = 3.0
    index_refresh_seconds: float = 2.0


@dataclass
class DejaState:
    """What the tools share for the life of the server."""

    config: ServerConfig
    store: Store  # the tools' connection (reads and memory writes)
    project: str  # path of the "current" project
    embedder: Any = None
    embedder_error: str | None = "the embedding model is still loading"
    ingesting: bool = False
    last_pass: str | None = None
    background_errors: list[str] = field(default_factory=list)
    # Sign bits of every chunk in memory, refreshed in the background, and the
    # second connection the vector ranker runs on beside the keyword ranker.
    vector_index: VectorIndex = field(default_factory=VectorIndex)
    vector_conn: Any = None

    @property
    def db_path(self) -> Path:
        return self.config.db_path


# -- background work -------------------------------------------------------------


async def _retrying(name: str, job: Callable[[], Awaitable[None]], state: DejaState) -> None:
    """Run `job` forever: a failure is logged and retried with backoff, never fatal."""
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            await job()
            return
        except anyio.get_cancelled_exc_class():
            raise
        except DejaError as exc:
            logger.warning("%s: %s; retrying in %.0f s", name, exc, delay)
            state.background_errors = (state.background_errors + [f"{name}: {exc}"])[-5:]
        except Exception as exc:
            logger.exception("%s failed; retrying in %.0f s", name, delay)
            state.background_errors = (state.background_errors + [f"{name}: {exc!r}"])[-5:]
        if time.monotonic() - started > 60:
            delay = 1.0
        await anyio.sleep(delay)
        delay = min(delay * 2, 60.0)


async def _load_model(state: DejaState) -> None:
    from ingest.cli import load_configured_embedder

    await anyio.sleep(0.05)  # let the handshake go first
    try:
        state.embedder = await anyio.to_thread.run_sync(
            load_configured_embedder, state.config.environ
        )
        state.embedder_error = None
    except DejaError as exc:
        state.embedder_error = str(exc)
        logger.warning("embedding model unavailable: %s (keyword search only)", exc)


async def _index_loop(state: DejaState) -> None:
    """Keep the in-memory vector index current: load it once, then add new chunks.

    Runs on its own connection, so a first load of a large history (seconds
    at a million chunks) never holds up a tool call; searches use the SQL
    scan until it is ready.
    """
    conn = await connect(state.db_path, readonly=True)
    counted = 0.0
    try:
        while True:
            if state.embedder is not None:
                check = time.monotonic() - counted >= 60.0
                await state.vector_index.refresh(conn, check_removed=check)
                if check:
                    counted = time.monotonic()
            await anyio.sleep(state.config.index_refresh_seconds)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def _ingest_supervisor(state: DejaState) -> None:
    """Hold the ingest lock when it is free; ingest and embed while holding it."""
    config = state.config
    lock = IngestLock(config.db_path)
    while True:
        if not lock.acquire():
            await anyio.sleep(2.0)
            continue
        state.ingesting = True
        logger.info("this process ingests %s", ", ".join(map(str, config.roots)))
        store = await Store.open(config.db_path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_retrying, "ingest", lambda: _watch(store, state), state)
                tg.start_soon(_retrying, "embed", lambda: _embed_loop(store, state), state)
        finally:
            state.ingesting = False
            lock.release()
            with anyio.CancelScope(shield=True):
                await store.close()


async def _watch(store: Store, state: DejaState) -> None:
    def on_pass(summary: IngestSummary) -> None:
        state.last_pass = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if summary.new_records:
            logger.info("ingested %d new records so far", summary.new_records)

    await watch(store, state.config.roots, rescan_seconds=state.config.rescan_seconds,
                on_pass=on_pass)


async def _embed_loop(store: Store, state: DejaState) -> None:
    from ingest.vectors import embed_pending, pending_count

    while True:
        await anyio.sleep(state.config.embed_poll_seconds)
        if state.embedder is None or not await pending_count(store):
            continue
        result = await embed_pending(store, state.embedder)
        if result.embedded_records:
            logger.info("embedded %d records (%d pending)", result.embedded_records, result.pending)


# -- the server ----------------------------------------------------------------------


def _state(ctx: Context) -> DejaState:
    return ctx.request_context.lifespan_context  # type: ignore[no-any-return]


def build_server(config: ServerConfig) -> MCPServer[DejaState]:
    """The deja MCP server; nothing happens until it runs (no work at import or build)."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer[DejaState]) -> AsyncIterator[DejaState]:
        store = await Store.open(config.db_path)
        state = DejaState(config=config, store=store,
                          project=current_project(config.environ),
                          vector_conn=await connect(config.db_path, readonly=True))
        try:
            async with anyio.create_task_group() as tg:
                if config.load_model:
                    tg.start_soon(_retrying, "model", lambda: _load_model(state), state)
                    tg.start_soon(_retrying, "vector index", lambda: _index_loop(state), state)
                else:
                    state.embedder_error = "model loading disabled"
                if config.ingest:
                    tg.start_soon(_retrying, "ingest supervisor",
                                  lambda: _ingest_supervisor(state), state)
                try:
                    yield state
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()
                await state.vector_conn.close()

    server: MCPServer[DejaState] = MCPServer(
        name="deja", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING",
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
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
    ) -> dict[str, Any]:
        """Search past Claude Code sessions (prompts, answers, thinking, tool calls and outputs,
        compaction summaries, subagent runs) and written memories. Hybrid keyword + meaning
        search. Returns hits with a snippet, timestamp, session and a handle; pass a hit's
        handle or uuid to get_context to read the surrounding turns."""
        state = _state(ctx)
        scope, notes = await project_filter(state.store.conn, state.project, project)
        try:
            result = await search(
                state.store.conn,
                SearchRequest(query, mode="hybrid", limit=limit, kinds=kinds,
                              session_id=session_id, project=scope, tool=tool, since=since,
                              until=until, max_tokens=max_tokens),
                Resources(embedder=state.embedder, embedder_error=state.embedder_error,
                          vector_index=state.vector_index, vector_conn=state.vector_conn),
            )
        except DejaError as exc:
            raise ToolError(str(exc)) from None
        out = result.to_dict()
        out["notes"] = notes + out["notes"]
        out["project"] = scope or "all"
        last = await state.store.get_meta("last_ingest")
        out["index"] = {"pending_embeddings": result.pending_embeddings, "last_ingest": last,
                        "this_process_ingests": state.ingesting}
        return out

    @server.tool(annotations=read_only)
    async def get_context(
        ctx: Context,
        ref: Annotated[str, Field(min_length=1, description="a hit's handle (rec:123) or uuid")],
        before: Annotated[int, Field(ge=0, le=50, description="records before the hit")] = 5,
        after: Annotated[int, Field(ge=0, le=50, description="records after the hit")] = 5,
        max_tokens: Annotated[int, Field(ge=200, le=30000)] = 4000,
    ) -> dict[str, Any]:
        """The turns around a search hit, in conversation order (prompts, answers, tool calls
        and results), with the session's title, cwd and branch."""
        try:
            return await history.get_context(_state(ctx).store.conn, ref, before=before,
                                              after=after, max_tokens=max_tokens)
        except DejaError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(annotations=read_only)
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
        scope, notes = await project_filter(state.store.conn, state.project, project)
        try:
            out = await history.list_sessions(state.store.conn, project=scope,
                                              since=since, limit=limit)
        except DejaError as exc:
            raise ToolError(str(exc)) from None
        out["project"] = scope or "all"
        out["notes"] = notes
        return out

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=True, open_world_hint=False))
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
        project_dir, cwd = await memory_project(state.store.conn, state.project, project)
        try:
            written = await write_memory_record(
                state.store, content, project_dir=project_dir, cwd=cwd,
                title=title, tags=tags, kind=kind, session_id=session_id,
            )
        except DejaError as exc:
            raise ToolError(str(exc)) from None
        return written.to_dict()

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=True, open_world_hint=False))
    async def forget_memory(
        ctx: Context,
        id: Annotated[str, Field(min_length=1, description="the id write_memory returned")],
    ) -> dict[str, Any]:
        """Delete a memory written with write_memory. Transcript history cannot be deleted."""
        try:
            await forget_memory_record(_state(ctx).store, id)
        except DejaError as exc:
            raise ToolError(str(exc)) from None
        return {"id": id, "deleted": True}

    @server.tool(annotations=read_only)
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
        try:
            dirs = None
            if not session_id and not checkpoint_id:
                scope, _ = await project_filter(state.store.conn, state.project, project)
                dirs = await resolve_project(state.store.conn, scope)
            return await assemble_checkpoint(state.store.conn, session_id=session_id,
                                             project_dirs=dirs, checkpoint_id=checkpoint_id,
                                             max_tokens=max_tokens)
        except DejaError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(annotations=read_only)
    async def memory_status(ctx: Context) -> dict[str, Any]:
        """The state of deja's memory: database path and size, sessions, records, memories,
        records awaiting embedding, the embedding model, whether this server process is the one
        ingesting, and the last ingest time."""
        state = _state(ctx)
        out = await history.status(state.store.conn, state.db_path)
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
        return out

    return server


# -- the process ---------------------------------------------------------------------


class _InterruptibleStdin(io.RawIOBase):
    """fd 0, read so that `interrupt()` ends it like an end of file.

    The SDK reads stdin in a worker thread that no cancellation reaches: told
    to stop (SIGTERM), the server would wait until the client closes the pipe
    (python-sdk issue #3551). Reading here waits on fd 0 and a wake-up pipe.
    """

    def __init__(self, fd: int = 0) -> None:
        super().__init__()
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self.interrupted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.interrupted:
            return 0
        ready, _, _ = select.select([self._fd, self._wake_r], [], [])
        if self._wake_r in ready:
            return 0
        data = os.read(self._fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def interrupt(self) -> None:
        self.interrupted = True
        os.write(self._wake_w, b"x")


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve on stdin/stdout until the client closes stdin or SIGTERM/SIGINT arrives.

    A signal ends the input as a closed stdin does: the session ends, the
    lifespan stops the background work and closes the database, the process
    exits 0. A second signal cancels whatever is left.
    """
    stdin: _InterruptibleStdin | None = None
    if sys.platform != "win32":
        stdin = _InterruptibleStdin()
        # stdio_server() serves sys.stdin's buffer in place when it is not fd 0 itself.
        sys.stdin = io.TextIOWrapper(io.BufferedReader(stdin), encoding="utf-8",
                                     errors="replace")
    async with anyio.create_task_group() as tg:
        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    if stdin is not None and not stdin.interrupted:
                        logger.info("signal %d: stopping", sig)
                        stdin.interrupt()
                    else:
                        tg.cancel_scope.cancel()
                        return

        tg.start_soon(stop_on_signal)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()
