"""The server as a process: serve MCP on stdin/stdout until told to stop.

`run_stdio(server)` runs an MCP server over stdio and stops it cleanly on
SIGTERM/SIGINT as on a closed stdin. The SDK reads stdin in a worker thread
that no cancellation reaches, so stdin is replaced by `_InterruptibleStdin`,
which a signal ends like an end of file. Nothing but protocol is written to
stdout.
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

__all__ = ["run_stdio"]

logger = logging.getLogger(__name__)


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
