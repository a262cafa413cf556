"""One ingester per machine on a shared database: a PostgreSQL advisory lock.

On SQLite the lock is a file beside the database (ingest/lease.py); on a
server several machines ingest at once, each its own files, so the lock is
per machine: `pg_try_advisory_lock` on a key derived from the machine's name,
held by the ingesting session. The server releases it when that session
ends, however the process dies (kill -9 included), so a crashed ingester
never blocks the next. The holder is found through pg_locks and its
session's application_name ("deja <pid>", connect.py), for the message.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ..errors import IngestBusy
from .connect import APPLICATION_PREFIX

if TYPE_CHECKING:
    import psycopg

__all__ = ["AdvisoryLock", "lock_key", "wait_for_advisory_lock"]


def lock_key(machine: str) -> int:
    """The advisory lock key of `machine`'s ingester: a signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"deja ingest\0{machine}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock:
    """The session-level advisory lock of one machine's ingest, on `conn`'s session."""

    def __init__(self, conn: psycopg.AsyncConnection, machine: str) -> None:
        self.conn = conn
        self.machine = machine
        self.key = lock_key(machine)
        self.held = False

    async def acquire(self) -> bool:
        """Take the lock if it is free; False when another session holds it."""
        if self.held:
            return True
        cur = await self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
        row = await cur.fetchone()
        self.held = bool(row and row[0])
        return self.held

    async def holder_pid(self) -> int | None:
        """The client pid of the deja process holding the lock, when the server says."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        cur = await self.conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFF_FFFF))
        row = await cur.fetchone()
        name = (row[0] or "") if row else ""
        digits = name.removeprefix(APPLICATION_PREFIX)
        return int(digits) if name.startswith(APPLICATION_PREFIX) and digits.isdigit() else None

    async def release(self) -> None:
        """Give the lock back (closing the connection does too)."""
        import psycopg

        if not self.held:
            return
        self.held = False
        try:
            await self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            pass  # the session is gone, and the lock with it


async def wait_for_advisory_lock(lock: AdvisoryLock, wait_seconds: float, *,
                                 on_wait: Callable[[int | None], None] | None = None) -> None:
    """Take `lock`, waiting up to `wait_seconds` for its holder (as ingest/cli.py's
    wait_for_lock does for the file lock). `on_wait(holder_pid)` is called once when
    another process holds it. Raises IngestBusy."""
    if await lock.acquire():
        return
    if on_wait is not None:
        on_wait(await lock.holder_pid())
    deadline = time.monotonic() + wait_seconds
    while not await lock.acquire():
        if time.monotonic() >= deadline:
            raise IngestBusy(
                f"another deja process (pid {await lock.holder_pid()}) is ingesting machine "
                f"{lock.machine!r} into this PostgreSQL database; pass --wait with a longer "
                "time, or stop it")
        await anyio.sleep(0.5)
