"""Exactly one ingesting process per database: an OS file lock beside it.

Claude Code starts one deja server per session, plus the CLI and hooks; all
may run at once. `fcntl.flock` on `<db>.ingest.lock` is released by the kernel
when its holder dies, however it dies, so a crashed ingester never blocks the
next one and no lease expiry has to be tuned.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["IngestLock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class IngestLock:
    """A non-reentrant, process-wide lock on ingesting into one database."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".ingest.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if readable."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> IngestLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
