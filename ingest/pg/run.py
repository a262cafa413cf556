"""`deja ingest` into PostgreSQL: open the store, take this machine's lock, run the runner.

The same runner as on SQLite (ingest/runner.py), so the same discovery,
parsing and redaction: every string is redacted on this machine before it is
sent. Then, unless --no-embed, the embedding pass (vectors.py), as on
SQLite: the model loads once per run, a model that cannot load leaves the
records waiting and the summary says why (`embed_error`). Any psycopg
failure on the way (a connection lost mid-ingest, a refused statement) ends
the run as one DatabaseError line without the password; what was committed
stays, cursors included, and the next run goes on from there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ..config import PostgresUrl
from ..errors import DatabaseError, DejaError
from ..run_parts import IngestOptions, ModelOnce, ProgressBar, until_signal
from ..runner import IngestSummary, ingest_once, watch
from .connect import describe, require_psycopg
from .lock import AdvisoryLock, wait_for_advisory_lock
from .store import PgStore
from .vectors import run_embed_pg

__all__ = ["ingest_postgres", "embed_postgres", "pg_failure", "worded_failures"]


async def ingest_postgres(target: PostgresUrl, machine: str, roots: Sequence[Path],
                          options: IngestOptions, summary: IngestSummary, extra: dict[str, Any],
                          environ: Mapping[str, str]) -> None:
    """Ingest `roots` as `machine` into the database at `target`, filling `summary` and `extra`.

    Raises DatabaseError, SchemaTooNew, IngestBusy.
    """
    require_psycopg()

    extra["machine"] = machine
    store = await PgStore.open(target, machine, environ)
    try:
        with worded_failures(store):
            await _ingest(store, roots, options, summary, extra, ModelOnce(environ))
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


@contextmanager
def worded_failures(store: PgStore, *, chain: bool = True) -> Iterator[None]:
    """Inside the block, a psycopg failure is raised again as its one-line DatabaseError
    (pg_failure); anything else passes. `chain`: keep the psycopg error as the cause."""
    import psycopg

    try:
        yield
    except Exception as exc:
        failure = pg_failure(exc, store, psycopg.Error)
        if failure is None:
            raise
        raise failure from (exc if chain else None)


def pg_failure(exc: BaseException, store: PgStore, kind: type[BaseException]
               ) -> DatabaseError | None:
    """The one-line DatabaseError for a psycopg failure (`kind`) inside `exc`, else None."""
    # The runner's task group wraps a failed write in an exception group.
    cause = _psycopg_error(exc, kind)
    if cause is None:
        return None
    target, environ = store.target, store.environ
    if store.conn.broken:
        return DatabaseError(
            f"lost the connection to PostgreSQL at {target} "
            f"({describe(cause, target, environ)}); what was committed stays, and the "
            "next run goes on from there")
    return DatabaseError(f"PostgreSQL at {target}: {describe(cause, target, environ)}")


async def embed_postgres(target: PostgresUrl, machine: str, environ: Mapping[str, str], *,
                         reembed_all: bool = False,
                         progress: ProgressBar | None = None) -> dict[str, Any]:
    """`deja embed` / `deja reembed` on PostgreSQL, under this machine's ingest lock.

    Raises DatabaseError, IngestBusy (another process of this machine holds the lock),
    ModelUnavailable, ModelMismatch.
    """
    require_psycopg()

    store = await PgStore.open(target, machine, environ)
    lock = AdvisoryLock(store.conn, machine)
    try:
        with worded_failures(store):
            await wait_for_advisory_lock(lock, 0.0)
            try:
                model = ModelOnce(environ)
                return await run_embed_pg(store, await model.get(), progress=progress,
                                          reembed_all=reembed_all,
                                          multilingual=model.multilingual)
            finally:
                with anyio.CancelScope(shield=True):
                    await lock.release()
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


async def _embed_pass(store: PgStore, options: IngestOptions, model: ModelOnce,
                      extra: dict[str, Any]) -> None:
    """The vectors the pass calls for; a model that cannot load (or another model's
    database) is reported in `extra`, never a failed ingest: keyword search works."""
    if model.error is None and (model.embedder is not None or await store.pending_embeddings()):
        bar = ProgressBar(sys.stderr, label="embed ") if not options.silent else None
        try:
            extra.update(await run_embed_pg(store, await model.get(), progress=bar,
                                            multilingual=model.multilingual))
        except DejaError as exc:
            extra["embed_error"] = str(exc)
            if options.watch and model.embedder is None:
                # Said once, as the SQLite watch says it (a failed model is not retried).
                sys.stderr.write(f"deja: warning: {exc}; watching without vectors\n")
        finally:
            if bar:
                bar.finish()
    extra.setdefault("embedded", 0)
    extra["pending_embeddings"] = await store.pending_embeddings()


async def _ingest(store: PgStore, roots: Sequence[Path], options: IngestOptions,
                  summary: IngestSummary, extra: dict[str, Any], model: ModelOnce) -> None:
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

            async def after_pass(_s: IngestSummary) -> None:
                if not options.no_embed:
                    await _embed_pass(store, options, model, extra)

            await until_signal(lambda: watch(store, roots, summary=summary, on_pass=after_pass,
                                             exclude=options.exclude))
            extra.setdefault("embedded", 0)
            # A SIGTERM that lands mid-query makes psycopg close the connection as it
            # cancels: a clean stop (what was committed stays), with no count to read.
            if not store.conn.closed:
                extra["pending_embeddings"] = await store.pending_embeddings()
        else:
            progress = ProgressBar(sys.stderr) if not options.silent else None
            try:
                await ingest_once(store, roots, summary=summary, progress=progress,
                                  exclude=options.exclude)
            finally:
                if progress:
                    progress.finish()
            if options.no_embed:
                extra["embedded"] = 0
                extra["pending_embeddings"] = await store.pending_embeddings()
            else:
                await _embed_pass(store, options, model, extra)
    finally:
        with anyio.CancelScope(shield=True):
            await lock.release()
