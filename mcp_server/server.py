"""The MCP stdio server: deja's memory tools for the agent.

`build_server(config)` returns an `MCPServer` with the tools of tools.py
registered and a lifespan that opens the database (the tools' connection and
a second, read-only one for the vector ranker) and starts the background
work of background.py in one anyio task group: the ingest supervisor and the
model loader (see there). Failures in either are logged and retried with
backoff, never fatal. Both stop when the client closes stdin or the process
gets SIGTERM (stdio.py's `run_stdio`, re-exported here for the CLI).

Nothing happens at import or build: the database is opened when the server
runs, so the handshake is never held up. A SQLite file opens in the
lifespan; a PostgreSQL database on first use, after the handshake
(state.py's `open_database` says why), so a server that is down, a refused
password or a missing pgvector is each tool call's one-line error, never a
failed handshake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import MCPServer

from ingest.db import connect
from ingest.store import Store

from .background import start_background
from .projects import current_project
from .state import DejaState, ServerConfig
from .stdio import run_stdio
from .tools import TOOLS, as_tool

__all__ = ["ServerConfig", "DejaState", "INSTRUCTIONS", "build_server", "run_stdio"]

INSTRUCTIONS = """\
deja is the long-term memory of this machine's Claude Code sessions: every past prompt, answer,
tool call and result, compaction summary and subagent run, plus memories written on purpose.
Use search_memory when the user refers to earlier work ("how did we fix X", "what did we decide
about Y", "last week's error"), then get_context on a hit to read the surrounding turns.
load_checkpoint recovers where a session stood (after a compaction or in a new session).
write_memory stores a decision or note worth finding later."""


def build_server(config: ServerConfig) -> MCPServer[DejaState]:
    """The deja MCP server; nothing happens until it runs (no work at import or build)."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer[DejaState]) -> AsyncIterator[DejaState]:
        state = await _open_state(config)
        try:
            async with anyio.create_task_group() as tg:
                start_background(tg, state)
                try:
                    yield state
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await state.close_database()
                if state.vector_conn is not None:
                    await state.vector_conn.close()

    server: MCPServer[DejaState] = MCPServer(
        name="deja", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING",
    )
    for tool, hints in TOOLS:
        server.add_tool(as_tool(tool), annotations=hints)
    return server


async def _open_state(config: ServerConfig) -> DejaState:
    """The state the tools share. On SQLite with the database open: the store and the
    vector ranker's read-only connection. On PostgreSQL with nothing open yet: the store
    (memory writes) and a second connection for every read (search included: pgvector
    scans in the database) open on first use (DejaState.open_database)."""
    project = current_project(config.environ)
    if config.pg is not None:
        return DejaState(config=config, store=None, project=project)
    store = await Store.open(config.db_path)
    return DejaState(config=config, store=store, project=project,
                     vector_conn=await connect(config.db_path, readonly=True))
