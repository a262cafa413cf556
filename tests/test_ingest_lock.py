"""The ingest lock excludes real processes, and a dead holder's lock is taken over.

Every lock method that can run here is tested with real subprocesses: "flock"
(POSIX) and "sqlite" (the method of platforms without fcntl, Windows first,
which runs on Linux too). A holder is a child process that takes the lock,
says so on stdout, and holds it until its stdin closes or it is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fixtures.paths import REPO
from ingest import lease
from ingest.lease import LOCK_METHODS, IngestLock

METHODS = [m for m in LOCK_METHODS if m != "flock" or lease.fcntl is not None]

# Take the lock, print "held <pid>" or "busy", then hold it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from ingest.lease import IngestLock
lock = IngestLock(Path(sys.argv[1]), method=sys.argv[2])
print(f"held {lock.holder_pid()}" if lock.acquire() else "busy", flush=True)
sys.stdin.read()
lock.release()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def _holder(db: Path, method: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process trying the lock; yields it and its first line ("held PID" or "busy")."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), method], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip()
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_cannot_both_hold_it(tmp_path: Path, method: str) -> None:
    db = tmp_path / "data" / "deja.db"
    with _holder(db, method) as (first, said):
        assert said == f"held {first.pid}"
        with _holder(db, method) as (_, second):
            assert second == "busy"
        mine = IngestLock(db, method=method)
        assert not mine.acquire() and not mine.held
        assert mine.holder_pid() == first.pid
    # Released by its holder: the next one takes it.
    with _holder(db, method) as (third, said):
        assert said == f"held {third.pid}"


@pytest.mark.parametrize("method", METHODS)
def test_processes_racing_for_it_get_one_holder(tmp_path: Path, method: str) -> None:
    db = tmp_path / "deja.db"
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(db), method], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
             for _ in range(4)]
    try:
        said = [p.stdout.readline().split()[0] for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()
    assert sorted(said) == ["busy", "busy", "busy", "held"]


@pytest.mark.parametrize("method", METHODS)
def test_a_dead_holders_lock_is_taken_over(tmp_path: Path, method: str) -> None:
    db = tmp_path / "deja.db"
    with _holder(db, method) as (holder, said):
        assert said == f"held {holder.pid}"
        mine = IngestLock(db, method=method)
        assert not mine.acquire()
        holder.kill()  # SIGKILL: no chance to release anything
        holder.wait(timeout=30)
        assert mine.holder_pid() == holder.pid  # the dead holder's note is still there
        assert mine.acquire() and mine.held
        assert mine.holder_pid() == os.getpid()
        with _holder(db, method) as (_, other):
            assert other == "busy"
        mine.release()


def test_without_fcntl_the_lock_is_the_sqlite_one_and_excludes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no fcntl: the default lock must still exclude, not pretend to."""
    assert lease.default_method() == ("flock" if lease.fcntl is not None else "sqlite")
    monkeypatch.setattr(lease, "fcntl", None)
    assert lease.default_method() == "sqlite"
    db = tmp_path / "deja.db"
    mine = IngestLock(db)
    assert mine.method == "sqlite"
    assert mine.acquire()
    try:
        assert not IngestLock(db).acquire()
        with _holder(db, "sqlite") as (_, other):
            assert other == "busy"
    finally:
        mine.release()
    with pytest.raises(OSError):
        IngestLock(db, method="flock")


def test_an_unknown_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flock, sqlite"):
        IngestLock(tmp_path / "deja.db", method="hope")
