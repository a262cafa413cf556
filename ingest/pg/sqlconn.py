"""An aiosqlite-shaped read connection over psycopg: one set of read queries for both engines.

Why: the modules that read history for the tools and the CLI (get_context,
list_sessions, load_checkpoint, orientation, show, the checkpoint facts) are
plain SQL over tables both engines share, written against aiosqlite's calls.
Rather than a second copy of each query for PostgreSQL, `PgConn` offers the
calls they use (`execute_fetchall`, `execute` awaited or as a context manager,
a cursor's `fetchone`/`fetchall`/async iteration) and runs the same text:

- `?` placeholders become psycopg's `%s` (and a literal `%` becomes `%%`).
  The queries have no `?` or `%` inside string literals (the test of this
  module runs each read module's queries on both engines);
- parameters are bound client-side (psycopg's ClientCursor): a value is a
  literal in the text, so `? IS NULL` with None means what SQLite means by it
  (server-side binding cannot type a bare NULL parameter);
- rows are `Row`s, as sqlite3.Row: by index, by column name, `keys()`;
- `meta` (JSONB on PostgreSQL) comes back as its JSON text, as SQLite's TEXT
  column does, and numeric sums as int or float, not Decimal;
- SQLite's `json_extract(meta, '$.key')` exists on PostgreSQL as a function of
  deja's schema (schema.py, version 3), so those filters run unchanged.

What stays engine-specific: the writes (each engine's store) and the search
rankers (FTS5 and sqlite-vec against tsvector and pgvector).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgConn", "Row", "translate"]

_MARK = re.compile(r"[?%]")


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's placeholders in psycopg's form: `?` to `%s`, a literal `%` doubled."""
    return _MARK.sub(lambda m: "%s" if m.group() == "?" else "%%", sql)


class Row(tuple[Any, ...]):
    """A result row read by position or by column name, as sqlite3.Row."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    """psycopg row factory: Rows that know the cursor's column names."""
    names = tuple(c.name for c in cursor.description or ())
    cls = type("Row", (Row,), {"_names": names})

    def make(values: Sequence[Any]) -> Row:
        return cls(values)

    return make


class PgCursor:
    """The results of one query, read as an aiosqlite cursor is."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def fetchone(self) -> Row | None:
        return await self._cursor.fetchone()

    async def fetchall(self) -> list[Row]:
        return list(await self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def __aiter__(self) -> AsyncIterator[Row]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[Row]:
        async for row in self._cursor:
            yield row

    async def close(self) -> None:
        await self._cursor.close()


class _Pending:
    """What `execute` returns: awaited, the cursor; entered, the cursor, closed on exit."""

    def __init__(self, conn: PgConn, sql: str, params: Iterable[Any]) -> None:
        self._conn, self._sql, self._params = conn, sql, tuple(params)
        self._cursor: PgCursor | None = None

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> PgCursor:
        from psycopg import AsyncClientCursor

        cur = AsyncClientCursor(self._conn.raw, row_factory=_row_factory)
        await cur.execute(translate(self._sql), self._params)
        return PgCursor(cur)

    async def __aenter__(self) -> PgCursor:
        self._cursor = await self._run()
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PgConn:
    """The read calls of aiosqlite over one psycopg connection (see the module docstring)."""

    def __init__(self, raw: psycopg.AsyncConnection) -> None:
        self.raw = raw
        _register_loaders(raw)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Pending:
        return _Pending(self, sql, params)

    async def execute_fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self.execute(sql, params) as cur:
            return await cur.fetchall()

    @property
    def engine(self) -> str:
        return "postgresql"


def _register_loaders(raw: Any) -> None:
    """JSON as its text and numeric as int/float on this connection, as SQLite gives them."""
    from psycopg.adapt import Loader
    from psycopg.types.string import TextLoader

    class NumericLoader(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            return float(text) if any(c in text for c in ".eEnN") else int(text)

    for name in ("json", "jsonb"):
        raw.adapters.register_loader(name, TextLoader)
    raw.adapters.register_loader("numeric", NumericLoader)
