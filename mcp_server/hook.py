"""What each Claude Code hook event does, within a deadline (`deja hook EVENT`).

- session-start: the orientation text (mcp_server/orientation.py), read-only;
  for source=compact, what the summary likely dropped.
- pre-compact, session-end: ingest the session's transcript and its subagents
  now, then record the session's checkpoint (ingest/checkpoints.py).
- post-compact: store `compact_summary` as the session's checkpoint at once,
  then ingest the transcript's new lines if time is left.
- stop: ingest the transcript's new lines (the cursor makes it cheap).

Only one process ingests a database (ingest/lease.py). When another holds the
lock (the deja server of this session, whose watcher ingests the same lines
within a second), the hook does not wait for the lock: it waits, until its
deadline at most, for that process's cursor to cover the transcript, and
records the checkpoint (any process may write memories). Embedding is never
done here: the server, or the next `deja ingest`, embeds what is pending.

The deadline is a `time.monotonic()` value; SQLite's busy timeout is set to
what remains of it, so a locked database costs the hook its budget, never
more. The process around this (mcp_server/cli/hook.py) fails open.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ingest.checkpoints import record_checkpoint, record_summary
from ingest.config import PostgresUrl
from ingest.db import connect
from ingest.discover import session_files
from ingest.errors import DejaError, InvalidQuery
from ingest.lease import IngestLock
from ingest.runner import ingest_files
from ingest.settings import Settings
from ingest.store import Store

from .projects import claude_project_dir, main_worktree

__all__ = ["EVENTS", "HookInput", "run_event"]

logger = logging.getLogger(__name__)

EVENTS = ("session-start", "pre-compact", "post-compact", "session-end", "stop")
# Time kept back from ingest for the checkpoint write, and the poll interval.
_CHECKPOINT_RESERVE_S = 0.2
_POLL_S = 0.05
# Lines per batch on PostgreSQL. The deadline is checked between batches, and a batch
# there costs far more than on SQLite (the keyword index's triggers): the runner's 2,000
# lines of a real session took longer than a hook's whole budget, so a hook stopped at it
# committed nothing, and the next one started over. 100 lines commit in about 0.1 s here.
_PG_BATCH_LINES = 100


@dataclass(frozen=True)
class HookInput:
    """The fields of a hook's stdin JSON that deja reads (FORMAT.md, "Hooks")."""

    session_id: str | None
    transcript_path: Path | None
    cwd: str | None
    source: str | None = None  # SessionStart
    trigger: str | None = None  # PreCompact, PostCompact
    compact_summary: str | None = None  # PostCompact

    @classmethod
    def from_json(cls, data: Any) -> HookInput:
        """Raises InvalidQuery when `data` is not a JSON object."""
        if not isinstance(data, dict):
            raise InvalidQuery(f"hook input is not a JSON object (a {type(data).__name__})")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value.strip() else None

        path = text("transcript_path")
        return cls(session_id=text("session_id"),
                   transcript_path=Path(path).expanduser() if path else None,
                   cwd=text("cwd"), source=text("source"), trigger=text("trigger"),
                   compact_summary=text("compact_summary"))

    def project(self, environ: Mapping[str, str]) -> str | None:
        """The project path: CLAUDE_PROJECT_DIR, else the cwd; worktrees mapped to their repo."""
        base = environ.get("CLAUDE_PROJECT_DIR") or self.cwd
        return str(main_worktree(Path(base))) if base else None


def _remaining_ms(deadline: float) -> int:
    return max(int((deadline - time.monotonic()) * 1000), 1)


# The database a hook writes: the SQLite file, or a PostgreSQL URL (ingest/pg/).
Target = Path | PostgresUrl


async def _store(target: Target, deadline: float, environ: Mapping[str, str]) -> Any:
    """The store, waiting no longer than the hook's deadline for a lock or a statement."""
    if isinstance(target, PostgresUrl):
        from ingest.config import machine_from
        from ingest.pg.store import PgStore

        pg = await PgStore.open(target, machine_from(environ), environ)
        await pg.conn.execute(f"SET statement_timeout = {_remaining_ms(deadline)}")
        # A hook stopped at its budget exits at once (cli/hook.py's watchdog); the server
        # would go on with its statement, holding this machine's ingest lock, until it
        # next wrote to the socket: have it check for the client meanwhile instead.
        await pg.conn.execute("SET client_connection_check_interval = 100")
        return pg
    store = await Store.open(target)
    # The default busy timeout (10 s) is for commands; a hook has its deadline.
    await store.conn.execute(f"PRAGMA busy_timeout = {_remaining_ms(deadline)}")
    return store


class _Lock:
    """This database's ingest lock for a hook: the file lock beside a SQLite database, or
    this machine's advisory lock on PostgreSQL (ingest/pg/lock.py)."""

    def __init__(self, store: Any, target: Target) -> None:
        if isinstance(target, PostgresUrl):
            from ingest.pg.lock import AdvisoryLock

            self._pg: Any = AdvisoryLock(store.conn, store.machine)
        else:
            self._pg, self._file = None, IngestLock(target)

    async def acquire(self) -> bool:
        return await self._pg.acquire() if self._pg is not None else self._file.acquire()

    async def release(self) -> None:
        if self._pg is not None:
            await self._pg.release()
        else:
            self._file.release()


async def run_event(event: str, hook: HookInput, db_path: Target, settings: Settings,
                    environ: Mapping[str, str], deadline: float) -> str | None:
    """Do what `event` does (module docstring); returns what to print on stdout, if anything.

    Raises DejaError (and what SQLite or the file system raise) on failure;
    the caller turns any failure into a log line and exit code 0.
    """
    if event not in EVENTS:
        raise InvalidQuery(f"unknown hook event {event!r}; known: {', '.join(EVENTS)}")
    project = hook.project(environ)
    if settings.exclude.excludes_path(project) or settings.exclude.excludes_path(hook.cwd):
        logger.info("hook %s: project %s is excluded", event, project)
        return None
    if event == "session-start":
        return await _session_start(hook, project, db_path, settings, deadline, environ)
    if event == "post-compact":
        await _post_compact(hook, db_path, settings, deadline, environ)
        return None
    transcript = _transcript(hook)
    store = await _store(db_path, deadline, environ)
    try:
        reserve = _CHECKPOINT_RESERVE_S if event != "stop" else 0.0
        await _ingest(store, db_path, transcript, deadline - reserve, wait=event != "stop",
                      settings=settings)
        if event in ("pre-compact", "session-end") and hook.session_id:
            await record_checkpoint(store, hook.session_id, event=event)
    finally:
        await store.close()
    return None


def _transcript(hook: HookInput) -> Path:
    if hook.transcript_path is None:
        raise InvalidQuery("hook input has no transcript_path")
    if not hook.transcript_path.is_file():
        raise InvalidQuery(f"transcript {hook.transcript_path} does not exist")
    return hook.transcript_path


async def _ingest(store: Any, db_path: Target, transcript: Path, deadline: float, *,
                  wait: bool, settings: Settings) -> None:
    """The transcript's new lines (and its subagents') in the database by `deadline`:
    read here when the ingest lock is free, else by its holder (waited for if `wait`)."""
    files = (await anyio.to_thread.run_sync(session_files, transcript)).files
    lock = _Lock(store, db_path)
    if await lock.acquire():
        try:
            summary = await ingest_files(store, files, deadline=deadline,
                                         exclude=settings.exclude, **_batch(db_path))
        finally:
            await lock.release()
        logger.info("hook ingested %d records from %d files in %.3f s", summary.new_records,
                    summary.files_read, summary.elapsed_s)
        return
    if not wait:
        return
    # The holder (this session's server) reads the same lines within a second.
    while time.monotonic() < deadline:
        if await _covered(store, transcript):
            return
        if await lock.acquire():  # it stopped meanwhile: read them here
            try:
                await ingest_files(store, files, deadline=deadline, exclude=settings.exclude,
                                   **_batch(db_path))
            finally:
                await lock.release()
            return
        await anyio.sleep(_POLL_S)
    logger.info("hook: %s not fully ingested by its deadline; the ingesting process will",
                transcript)


def _batch(target: Target) -> dict[str, int]:
    """ingest_files' batch size for `target`'s engine (the runner's own on SQLite)."""
    return {"batch_lines": _PG_BATCH_LINES} if isinstance(target, PostgresUrl) else {}


async def _covered(store: Any, transcript: Path) -> bool:
    """True when the stored cursor of `transcript` reaches its last complete line (this
    machine's file, on a shared database)."""
    st = transcript.stat()
    mine = " AND machine = ?" if getattr(store, "engine", "") == "postgresql" else ""
    rows = list(await store.reads.execute_fetchall(
        f'SELECT "offset" FROM sources WHERE (path = ? OR (dev = ? AND ino = ?)){mine}',
        (os.fsencode(str(transcript)), st.st_dev, st.st_ino,
         *((store.machine,) if mine else ()))))
    if not rows:
        return False
    offset = int(rows[0][0])
    if offset >= st.st_size:
        return True
    with open(transcript, "rb") as f:  # a half-written last line is not consumed yet
        f.seek(offset)
        return b"\n" not in f.read(st.st_size - offset)


async def _post_compact(hook: HookInput, db_path: Target, settings: Settings,
                        deadline: float, environ: Mapping[str, str]) -> None:
    if not hook.session_id or not hook.compact_summary:
        raise InvalidQuery("post-compact input needs session_id and compact_summary")
    store = await _store(db_path, deadline, environ)
    try:
        rows = list(await store.reads.execute_fetchall(
            "SELECT project_dir, cwd FROM sessions WHERE session_id = ?", (hook.session_id,)))
        if rows and rows[0][0]:
            project_dir, cwd = rows[0][0], rows[0][1] or hook.cwd
        elif hook.transcript_path is not None:
            project_dir, cwd = hook.transcript_path.parent.name, hook.cwd
        else:
            project_dir, cwd = claude_project_dir(hook.cwd or "-"), hook.cwd
        await record_summary(store, hook.session_id, hook.compact_summary,
                             project_dir=project_dir, cwd=cwd, trigger=hook.trigger)
        if hook.transcript_path is not None and hook.transcript_path.is_file():
            try:
                # Kept back as for a checkpoint: the process must still close and exit.
                await _ingest(store, db_path, hook.transcript_path,
                              deadline - _CHECKPOINT_RESERVE_S, wait=False, settings=settings)
            except DejaError as exc:  # the summary is stored: that was the job
                logger.info("post-compact: ingest skipped: %s", exc)
    finally:
        await store.close()


async def _session_start(hook: HookInput, project: str | None, db_path: Target,
                         settings: Settings, deadline: float,
                         environ: Mapping[str, str]) -> str | None:
    if settings.context_chars <= 0:
        return None  # turned off: silent
    from .orientation import after_compaction, orientation

    if isinstance(db_path, PostgresUrl):
        from ingest.pg.connect import connect as pg_connect
        from ingest.pg.sqlconn import PgConn

        conn: Any = PgConn(await pg_connect(db_path, environ))
        await conn.raw.execute(f"SET statement_timeout = {_remaining_ms(deadline)}")
        if not (await conn.execute_fetchall("SELECT to_regclass('sessions') IS NOT NULL"))[0][0]:
            await conn.raw.close()
            return None  # a database deja never wrote: no history at all, silent
    elif not db_path.is_file():
        return None  # no history at all: silent
    else:
        conn = await connect(db_path, readonly=True)
        await conn.execute(f"PRAGMA busy_timeout = {_remaining_ms(deadline)}")
    try:
        if hook.source == "compact" and hook.session_id:
            text = await after_compaction(conn, hook.session_id, limit=settings.context_chars)
            if text is not None:
                return text
        if project is None:
            return None
        return await orientation(conn, project, session_id=hook.session_id,
                                 limit=settings.context_chars)
    finally:
        await (conn.raw.close() if isinstance(db_path, PostgresUrl) else conn.close())
