"""One write transaction on the deja database: BEGIN IMMEDIATE ... COMMIT.

Rolled back on any error, a cancelled task included (the rollback is
shielded, so the connection never stays inside a transaction), and a lock
turned into DatabaseLocked with a message a person can act on.
`Store.transaction()` hands one out; every writer runs its statements inside
one, so what belongs together (a batch's rows and its cursor) commits together.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import anyio

from .db import driver_errors, is_locked_error
from .errors import DatabaseError, DatabaseLocked

__all__ = ["Transaction"]


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error, locks made readable."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    async def __aenter__(self) -> None:
        try:
            await self.conn.execute("BEGIN IMMEDIATE")
        except driver_errors() as exc:
            if is_locked_error(exc):
                raise DatabaseLocked(
                    f"database {self.path} is locked by another process; try again"
                ) from exc
            raise DatabaseError(str(exc)) from exc

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                await self.conn.execute("COMMIT")
                return
            except driver_errors() as commit_exc:
                await _rollback(self.conn)
                if is_locked_error(commit_exc):
                    raise DatabaseLocked(f"database {self.path} is locked") from commit_exc
                raise DatabaseError(str(commit_exc)) from commit_exc
        await _rollback(self.conn)
        if exc is not None and isinstance(exc, driver_errors()) and is_locked_error(exc):
            raise DatabaseLocked(f"database {self.path} is locked by another process") from exc


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Shielded: a cancelled task must still leave the connection out of its transaction.
    with anyio.CancelScope(shield=True):
        try:
            await conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction left to roll back
            pass
