"""`deja ingest` into PostgreSQL: open the store, take this machine's lock, run the runner.

The same runner as on SQLite (ingest/runner.py), so the same discovery,
parsing and redaction: every string is redacted on this machine before it is
sent. Vectors are not computed on PostgreSQL yet (the embedding part): the
records wait with embed_state 0, and the summary says how many. Any psycopg
failure on the way (a connection lost mid-ingest, a refused statement) ends
the run as one DatabaseError line without the password; what was committed
stays, cursors included, and the next run goes on from there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from ..cli import IngestOptions, ProgressBar, until_signal
from ..config import PostgresUrl
from ..errors import DatabaseError
from ..runner import IngestSummary, ingest_once, watch
from .connect import describe, require_psycopg
from .lock import AdvisoryLock, wait_for_advisory_lock
from .store import PgStore

__all__ = ["ingest_postgres"]


async def ingest_postgres(target: PostgresUrl, machine: str, roots: Sequence[Path],
                          options: IngestOptions, summary: IngestSummary, extra: dict[str, Any],
                          environ: Mapping[str, str]) -> None:
    """Ingest `roots` as `machine` into the database at `target`, filling `summary` and `extra`.

    Raises DatabaseError, SchemaTooNew, IngestBusy.
    """
    require_psycopg()
    import psycopg

    extra["machine"] = machine
    store = await PgStore.open(target, machine, environ)
    try:
        await _ingest(store, roots, options, summary, extra)
    except Exception as exc:
        # The runner's task group wraps a failed write in an exception group.
        cause = _psycopg_error(exc, psycopg.Error)
        if cause is None:
            raise
        if store.conn.broken:
            raise DatabaseError(
                f"lost the connection to PostgreSQL at {target} "
                f"({describe(cause, target, environ)}); what was committed stays, and the "
                "next ingest goes on from there") from exc
        raise DatabaseError(f"PostgreSQL at {target}: {describe(cause, target, environ)}") from exc
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def _psycopg_error(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` if it is a `kind`, else the first `kind` inside it (an exception group)."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _psycopg_error(inner, kind)
        if found is not None:
            return found
    return None


async def _ingest(store: PgStore, roots: Sequence[Path], options: IngestOptions,
                  summary: IngestSummary, extra: dict[str, Any]) -> None:
    lock = AdvisoryLock(store.conn, store.machine)

    def say_waiting(pid: int | None) -> None:
        if not options.silent:
            sys.stderr.write(f"another deja process (pid {pid}) is ingesting machine "
                             f"{store.machine!r}; waiting up to {options.wait_seconds:.0f} s "
                             "for it...\n")

    try:
        await wait_for_advisory_lock(lock, options.wait_seconds, on_wait=say_waiting)
        if options.watch:
            if not options.silent:
                sys.stderr.write(f"watching {', '.join(str(r) for r in roots)} (Ctrl-C to stop)\n")
            await until_signal(lambda: watch(store, roots, summary=summary,
                                             exclude=options.exclude))
        else:
            progress = ProgressBar(sys.stderr) if not options.silent else None
            try:
                await ingest_once(store, roots, summary=summary, progress=progress,
                                  exclude=options.exclude)
            finally:
                if progress:
                    progress.finish()
        extra["embedded"] = 0
        if not options.no_embed:
            extra["embed_note"] = "vectors are not computed on PostgreSQL yet"
        extra["pending_embeddings"] = await store.pending_embeddings()
    finally:
        with anyio.CancelScope(shield=True):
            await lock.release()
