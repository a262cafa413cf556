"""Opening the deja database.

Why this module exists: Python's built-in `sqlite3` often cannot load
extensions (this machine's cannot, nor many pyenv and macOS builds), and deja
needs sqlite-vec. So every connection is made by `make_connector()`, which uses
the standard module when it can load extensions and `sqlean` (a drop-in
sqlite3 with FTS5 and extension loading) otherwise, and hands that factory to
aiosqlite. Each aiosqlite connection owns one thread; the event loop never
blocks on SQLite.

Every connection gets the same settings: WAL, a busy timeout, foreign keys,
sqlite-vec loaded, and deja's SQL functions registered (the FTS triggers call
`deja_fts_text` and `deja_passages`). The file is created 0600 inside a 0700 folder.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3 as std_sqlite3
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiosqlite

from .errors import DatabaseError, DatabaseLocked
from .indexing import passages_json

__all__ = [
    "CJK_CHAR",
    "driver",
    "driver_errors",
    "make_connector",
    "connect",
    "clean_text",
    "fts_text",
    "is_locked_error",
    "BUSY_TIMEOUT_MS",
]

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# SQLite's page cache per connection, in KiB. A writer (ingest, write_memory, the
# server's search connection) keeps 32 MB: ingest re-reads the pages it just wrote.
# A read-only connection (the server's vector and index connections, hooks) reads
# pages once per query or once at load, and the OS page cache holds them anyway:
# 8 MB each. Claude Code runs one server per session, so every MB here counts
# several times over (at 100k chunks, 50 searches grew a server by 64 MB with 32 MB
# on every connection).
CACHE_KIB = 32_000
READ_CACHE_KIB = 8_000

_driver: ModuleType | None = None


def driver() -> ModuleType:
    """The sqlite3-compatible module to use: stdlib if it loads extensions and is
    recent enough, else sqlean."""
    global _driver
    if _driver is None:
        # 3.43 brought contentless_delete, which the full-text index uses (m005).
        if (hasattr(std_sqlite3.Connection, "enable_load_extension")
                and std_sqlite3.sqlite_version_info >= (3, 43)):
            _driver = std_sqlite3
        else:
            try:
                import sqlean
            except ImportError as exc:  # pragma: no cover - sqlean is a dependency
                raise DatabaseError(
                    "this Python's sqlite3 cannot load extensions and sqlean.py is not "
                    "installed: pip install sqlean.py"
                ) from exc
            _driver = sqlean
    return _driver


def driver_errors() -> tuple[type[BaseException], ...]:
    """Exception classes of both drivers: sqlean's are not subclasses of sqlite3's."""
    mod = driver()
    classes: list[type[BaseException]] = [std_sqlite3.Error]
    if mod is not std_sqlite3:
        classes.append(mod.Error)
    return tuple(classes)


def is_locked_error(exc: BaseException) -> bool:
    """True when SQLite gave up waiting for another process's lock."""
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


# CJK scripts have no spaces between words, so unicode61 would index a whole
# sentence as one token. Spacing every CJK character out makes each one a token
# and a query phrase of consecutive characters matches exact substrings.
# The one definition of a CJK character: Hiragana and Katakana, CJK Extension A,
# CJK Unified Ideographs, Hangul syllables, CJK Compatibility Ideographs,
# halfwidth Katakana. Search splits queries with the same class
# (mcp_server/search/terms.py): what the index spaced out, the query must too.
CJK_CHAR = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]"
)
_CJK = re.compile(f"({CJK_CHAR.pattern})")


# Terminal escape codes in tool output ("\x1b[31mERROR\x1b[0m"): unicode61
# would glue a code's parameters to the word after it ("31merror"), so no
# query for ERROR found it. Removed from what is indexed and embedded (the
# record keeps its raw text): CSI sequences (ESC [ or the C1 byte 0x9b), OSC
# sequences (ESC ] ... BEL or ESC \), other two-byte ESC sequences, then any
# control character left (tab and newline kept) becomes a space.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"          # CSI: colours, cursor moves, modes
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"         # OSC: titles, hyperlinks
    r"|\x1b[ -/]*[0-~]"                          # other ESC sequences (charset, keypad)
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str, *, keep_length: bool = False) -> str:
    """`text` without terminal escape codes and control characters (see _ANSI).

    keep_length: escape codes become spaces instead, so offsets into the
    result are offsets into `text` (the embedder's chunks keep theirs)."""
    if "\x1b" in text or "\x9b" in text:
        text = _ANSI.sub((lambda m: " " * len(m.group())) if keep_length else "", text)
    return _CONTROL.sub(" ", text)


def fts_text(text: str | None) -> str:
    """The text FTS5 indexes for a record: escape codes out (clean_text), CJK spaced out."""
    if not text:
        return ""
    if text.isascii():
        return clean_text(text) if "\x1b" in text else text  # the common case: as is
    return _CJK.sub(r" \1 ", clean_text(text))


def _ensure_private_file(path: Path) -> None:
    """Create the folder 0700 and the file 0600 before SQLite touches them."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def make_connector(path: Path, *, readonly: bool = False) -> Callable[[], Any]:
    """A zero-argument factory returning a configured sqlite3-compatible connection."""
    mod = driver()

    def connector() -> Any:
        if readonly:
            conn = mod.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
        else:
            # SQLite creates -wal and -shm with the main file's mode; a umask keeps
            # them private too if the main file was made by someone else.
            old_umask = os.umask(0o077)
            try:
                _ensure_private_file(path)
                conn = mod.connect(str(path), check_same_thread=False, isolation_level=None)
            finally:
                os.umask(old_umask)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is crash-safe in WAL mode: a killed process loses nothing
                # committed; only a power cut may lose the last transactions.
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB if readonly else CACHE_KIB}")
            if not readonly:
                # Each checkpoint syncs the file: every 40 MB of WAL rather than
                # every 4 MB (the default) saved ~2 s of an 18 s, 211 MB ingest.
                conn.execute("PRAGMA wal_autocheckpoint = 10000")
            conn.execute("PRAGMA temp_store = MEMORY")
            _load_vec(conn)
            conn.create_function("deja_fts_text", 1, fts_text, deterministic=True)
            conn.create_function("deja_passages", 1, passages_json, deterministic=True)
        except BaseException:
            conn.close()
            raise
        return conn

    return connector


_vec_path: str | None = None


def _vec_extension() -> str:
    """Where sqlite-vec's loadable extension is, found without importing the package:
    its __init__ imports numpy (0.15-0.5 s here), which would delay the MCP handshake."""
    global _vec_path
    if _vec_path is None:
        import importlib.util

        spec = importlib.util.find_spec("sqlite_vec")
        if spec is None or not spec.submodule_search_locations:
            raise DatabaseError("sqlite-vec is not installed: pip install sqlite-vec")
        _vec_path = os.path.join(next(iter(spec.submodule_search_locations)), "vec0")
    return _vec_path


def _load_vec(conn: Any) -> None:
    conn.enable_load_extension(True)
    try:
        conn.load_extension(_vec_extension())
    finally:
        conn.enable_load_extension(False)


async def connect(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    """Open the database at `path` through aiosqlite (no migration; see store.open_store).

    Raises DatabaseLocked or DatabaseError with a readable message.
    """
    try:
        conn = aiosqlite.Connection(make_connector(path, readonly=readonly), iter_chunk_size=256)
        await conn
    except driver_errors() as exc:
        if is_locked_error(exc):
            raise DatabaseLocked(
                f"database {path} is locked by another process (waited {BUSY_TIMEOUT_MS} ms)"
            ) from exc
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    except OSError as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    conn.row_factory = driver().Row
    return conn
