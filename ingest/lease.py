"""Exactly one ingesting process per database: an OS lock beside it.

Claude Code starts one deja server per session, plus the CLI and hooks; all
may run at once. The lock is one the operating system releases when its holder
dies, however it dies, so a crashed ingester never blocks the next one and no
lease expiry has to be tuned. Two ways to take it, the same lock to callers:

- "flock" (POSIX, the default there): `fcntl.flock` on `<db>.ingest.lock`.
- "sqlite" (the default where `fcntl` does not exist, i.e. Windows): an
  exclusive transaction held open on `<db>.ingest.lock.sqlite`, an empty
  SQLite file. SQLite's own locking (LockFileEx on Windows, fcntl on POSIX)
  makes the exclusion, so the same code runs and is tested here on Linux,
  which `msvcrt.locking` could not be. SQLite is part of every Python, and
  takes no lock on our behalf that it cannot enforce.

Neither ever says "acquired" without real exclusion: a missing `fcntl` selects
the sqlite lock, never a no-op. Once it holds the lock, the holder writes its
pid into `<db>.ingest.lock`, for messages ("pid N is ingesting").
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Protocol

__all__ = ["IngestLock", "LOCK_METHODS", "default_method"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_METHODS = ("flock", "sqlite")


def default_method() -> str:
    """The lock this platform uses: flock where fcntl exists, else the SQLite lock."""
    return "flock" if fcntl is not None else "sqlite"


class _Exclusion(Protocol):
    def try_lock(self) -> bool: ...

    def unlock(self) -> None: ...


class _Flock:
    """flock(2) on the pid file itself: per open file, released on close or death."""

    def __init__(self, path: Path) -> None:
        if fcntl is None:
            raise OSError(errno.ENOSYS, "fcntl.flock is not available on this platform")
        self.path = path
        self._fd: int | None = None

    def try_lock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._fd = fd
        return True

    def unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _SqliteLock:
    """BEGIN EXCLUSIVE held on a SQLite file that holds nothing.

    In rollback-journal mode an exclusive transaction holds the file's
    EXCLUSIVE lock from BEGIN to its end; nothing is ever written, so there is
    no journal to recover after a crash. `timeout=0`: a held lock answers
    "busy" at once. On POSIX SQLite's locks are fcntl record locks, which a
    process loses when it closes ANY descriptor of the file: only SQLite may
    open this file (it keeps such descriptors open while a lock is held).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def try_lock(self) -> bool:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                               check_same_thread=False)
        try:
            os.chmod(self.path, 0o600)  # private, like the database
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                return False
            raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return True

    def unlock(self) -> None:
        if self._conn is not None:
            self._conn.close()  # ends the transaction: the lock goes with it
            self._conn = None


class IngestLock:
    """A non-reentrant, process-wide lock on ingesting into one database.

    `method` is one of LOCK_METHODS; None picks `default_method()`.
    """

    def __init__(self, db_path: Path, *, method: str | None = None) -> None:
        self.path = Path(str(db_path) + ".ingest.lock")
        self.method = method or default_method()
        if self.method == "flock":
            self._exclusion: _Exclusion = _Flock(self.path)
        elif self.method == "sqlite":
            self._exclusion = _SqliteLock(Path(str(self.path) + ".sqlite"))
        else:
            raise ValueError(f"lock method must be one of {', '.join(LOCK_METHODS)}, "
                             f"not {self.method!r}")
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another holder has it."""
        if self._held:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._exclusion.try_lock():
            return False
        self._held = True
        try:
            self._write_pid()
        except BaseException:
            self.release()
            raise
        return True

    def _write_pid(self) -> None:
        # Only the holder writes, so a reader sees the holder's pid (or, in the
        # instant after a takeover, the dead holder's).
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if readable."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._held:
            self._exclusion.unlock()
            self._held = False

    def __enter__(self) -> IngestLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
