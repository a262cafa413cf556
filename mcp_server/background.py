"""The server's background work: what runs beside the tools for the life of the server.

`start_background(tg, state)` starts, in the lifespan's task group:
- the model loader: loads the embedding model in a worker thread right AFTER
  the handshake, for query vectors. With the ONNX export cached that takes a
  fraction of a second (onnxruntime, tokenizers and numpy; nothing of torch or
  transformers), and a search arriving meanwhile waits for it (at most
  `model_wait_seconds`, `DejaState.wait_for_model`). When the load is slow
  (the one-time export, torch) search answers from keywords and says so;
- the vector index loop: loads the in-memory sign bits of every chunk as soon
  as the model is up (never before: the model goes first), then keeps them
  current;
- the ingest supervisor: takes the ingest lock when free (one ingesting
  process per database; another takes over within seconds when it dies),
  lets a quick model load go first (a first pass over a large history holds
  the interpreter for seconds and would delay the query vectors), then
  watches the transcript roots and embeds what is pending.
On PostgreSQL: first, right after the handshake, one attempt at opening the
tools' database (state.py's `open_database`), so that the first call finds it
open (a failure is logged once; each tool call tries again); no vector index
loop (pgvector scans in the database); the ingest supervisor takes this
machine's advisory lock on a connection of its own: one of the machine's
servers ingests, and when it dies (kill -9 included) its session ends, the
server frees the lock, and another server of the machine takes over within
seconds. A psycopg failure there (a lost connection) is the one-line
DatabaseError, never a traceback, and the supervisor starts over on a new
connection.
Each runs under `retrying`: a failure is logged, kept for memory_status and
retried with backoff, never fatal. All stop when the task group is cancelled
(the client closed stdin, or SIGTERM).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ingest.db import connect
from ingest.errors import DejaError
from ingest.lease import IngestLock
from ingest.runner import IngestSummary, watch
from ingest.store import Store

from .state import DejaState

if TYPE_CHECKING:
    import anyio.abc

__all__ = ["start_background", "retrying"]

logger = logging.getLogger(__name__)


def start_background(tg: anyio.abc.TaskGroup, state: DejaState) -> None:
    """Start the model loader, the vector index loop and the ingest supervisor, as configured."""
    config = state.config
    if state.on_postgres:
        tg.start_soon(_warm_up, state)
    if config.load_model:
        state.model_settled = anyio.Event()
        tg.start_soon(retrying, "model", partial(_load_model, state), state)
        if not state.on_postgres:  # PostgreSQL: pgvector scans in the database
            tg.start_soon(retrying, "vector index", partial(_index_loop, state), state)
        else:
            tg.start_soon(retrying, "multilingual", partial(_pg_multilingual, state), state)
    else:
        state.embedder_error = "model loading disabled"
    if config.ingest:
        supervisor = _pg_ingest_supervisor if state.on_postgres else _ingest_supervisor
        tg.start_soon(retrying, "ingest supervisor", partial(supervisor, state), state)


async def _warm_up(state: DejaState) -> None:
    """PostgreSQL: open the tools' database now, once; a failure is only logged (each tool
    call tries again and says why)."""
    await anyio.sleep(0.05)  # let the handshake go first
    try:
        await state.open_database()
    except DejaError as exc:
        logger.warning("%s (each tool call tries again)", exc)


async def retrying(name: str, job: Callable[[], Awaitable[None]], state: DejaState, *,
                   lost: Callable[[], bool] | None = None) -> None:
    """Run `job` forever: a failure is logged and retried with backoff, never fatal.

    `lost`: when it says True after a failure (the job's connection is gone), the
    failure is raised instead, for the caller to start over on a new connection.
    """
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            await job()
            return
        except anyio.get_cancelled_exc_class():
            raise
        except DejaError as exc:
            if lost is not None and lost():
                raise
            logger.warning("%s: %s; retrying in %.0f s", name, exc, delay)
            state.background_errors = [*state.background_errors, f"{name}: {exc}"][-5:]
        except Exception as exc:
            if lost is not None and lost():
                raise
            logger.exception("%s failed; retrying in %.0f s", name, delay)
            state.background_errors = [*state.background_errors, f"{name}: {exc!r}"][-5:]
        if time.monotonic() - started > 60:
            delay = 1.0
        await anyio.sleep(delay)
        delay = min(delay * 2, 60.0)


async def _load_model(state: DejaState) -> None:
    from ingest.embed import configured_model

    settled = state.model_settled
    await anyio.sleep(0.05)  # let the handshake go first
    try:
        model = await anyio.to_thread.run_sync(configured_model, state.config.environ)
        if not model.quick:
            # The one-time export or torch: seconds to a minute. Searches must not wait.
            logger.info("loading %s takes a while (no cached export); keyword search meanwhile",
                        model.spec.model_id)
            _settle(settled)
        state.embedder = await anyio.to_thread.run_sync(model.load)
        state.embedder_error = None
        await _load_multilingual(state)
    except DejaError as exc:
        state.embedder_error = str(exc)
        logger.warning("embedding model unavailable: %s (keyword search only)", exc)
    finally:
        _settle(settled)  # also on failure: a retry later is slow by definition


async def _load_multilingual(state: DejaState) -> None:
    """The optional multilingual model, only when the database already has its vectors
    (the embed loop loads it when it first meets a non-English record)."""
    from ingest.multilingual import MlOnce

    from .search.multilingual import MlIndex

    state.ml = MlOnce(state.config.environ)
    state.ml_index = None if state.on_postgres else MlIndex()  # PostgreSQL scans in SQL
    if state.ml.enabled and await state.reads.execute_fetchall(
            "SELECT 1 FROM ml_vectors LIMIT 1"):
        await state.ml.get()


async def _pg_multilingual(state: DejaState) -> None:
    """PostgreSQL: load the multilingual model once another process has stored vectors, as
    SQLite's index loop does (`_refresh_multilingual`); the ranker then scans them in SQL."""
    while True:
        await anyio.sleep(state.config.index_refresh_seconds)
        ml = state.ml
        if ml is not None and (not ml.enabled or ml.embedder is not None or ml.error):
            return
        if ml is not None and await state.reads.execute_fetchall(
                "SELECT 1 FROM ml_vectors LIMIT 1"):
            await ml.get()


def _settle(event: anyio.Event | None) -> None:
    if event is not None and not event.is_set():
        event.set()


async def _index_loop(state: DejaState) -> None:
    """Keep the in-memory vector index current: load it once, then add new chunks.

    Runs on its own connection, so a first load of a large history (seconds
    at a million chunks) never holds up a tool call; searches use the SQL
    scan until it is ready.
    """
    if state.model_settled is not None:
        await state.model_settled.wait()  # the model first; then at once, not a period later
    conn = await connect(state.db_path, readonly=True)
    counted = 0.0
    try:
        while True:
            if state.embedder is not None:
                check = time.monotonic() - counted >= 60.0
                await state.vector_index.refresh(conn, check_removed=check)
                if check:
                    counted = time.monotonic()
                await _refresh_multilingual(state, conn)
            await anyio.sleep(state.config.index_refresh_seconds)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def _refresh_multilingual(state: DejaState, conn: Any) -> None:
    """Keep the multilingual vectors in memory current (search/ml_index.py: one row of
    ml_state and the rows above the last id per refresh), once the model is loaded. A
    server that does not ingest loads the model when another process has stored vectors."""
    ml, index = state.ml, state.ml_index
    if ml is None or index is None or not ml.enabled:
        return
    if ml.embedder is None:
        if ml.error is not None or not await conn.execute_fetchall(
                "SELECT 1 FROM ml_vectors LIMIT 1"):
            return
        await ml.get()
        if ml.embedder is None:
            return
    await index.refresh(conn)


async def _ingest_supervisor(state: DejaState) -> None:
    """Hold the ingest lock when it is free; ingest and embed while holding it.

    The lock is taken at once (this process is the ingesting one from the
    start), but the first pass waits for a quick model load to settle, at most
    `ingest_defer_seconds`: a pass over a large history holds the interpreter
    for seconds, which would delay the query vectors by as much.
    """
    config = state.config
    lock = IngestLock(config.db_path)
    while True:
        if not lock.acquire():
            await anyio.sleep(2.0)
            continue
        state.ingesting = True
        logger.info("this process ingests %s", ", ".join(map(str, config.roots)))
        try:
            if state.model_settled is not None:
                with anyio.move_on_after(config.ingest_defer_seconds):
                    await state.model_settled.wait()
            store = await Store.open(config.db_path)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(retrying, "ingest", partial(_watch, store, state), state)
                    tg.start_soon(retrying, "embed", partial(_embed_loop, store, state), state)
            finally:
                with anyio.CancelScope(shield=True):
                    await store.close()
        finally:
            state.ingesting = False
            lock.release()


async def _pg_ingest_supervisor(state: DejaState) -> None:
    """On PostgreSQL: hold this machine's advisory lock when it is free (one ingester per
    machine, however many servers run on it; the server frees a dead holder's lock at
    once), then ingest and embed as `_ingest_supervisor` does, on a store of its own.

    A psycopg failure (a lost connection, a refused statement) ends the job as
    ingest/pg/run.py's one-line DatabaseError; `retrying` starts it again on a new
    connection (the old one's lock is gone with it).
    """

    from ingest.pg.lock import AdvisoryLock
    from ingest.pg.run import worded_failures
    from ingest.pg.store import PgStore

    config = state.config
    assert config.pg is not None
    store = await PgStore.open(config.pg, config.machine, config.environ)
    try:
        with worded_failures(store, chain=False):
            lock = AdvisoryLock(store.conn, config.machine)
            while not await lock.acquire():
                await anyio.sleep(2.0)
            state.ingesting = True
            logger.info("this process ingests %s into %s as %s",
                        ", ".join(map(str, config.roots)), config.pg, config.machine)
            try:
                if state.model_settled is not None:
                    with anyio.move_on_after(config.ingest_defer_seconds):
                        await state.model_settled.wait()
                # Each retried on its own, until the lock's connection is lost.
                lost = partial(_lost, store.conn)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(retrying, "ingest", partial(_watch, store, state),
                                          state, lost=lost))
                    tg.start_soon(partial(retrying, "embed",
                                          partial(_pg_embed_loop, store, state), state,
                                          lost=lost))
            finally:
                state.ingesting = False
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()  # the session ends: the server releases the lock


def _lost(conn: Any) -> bool:
    return bool(conn.closed or conn.broken)


async def _pg_embed_loop(store: Any, state: DejaState) -> None:
    from ingest.pg.multilingual import embed_multilingual_pg
    from ingest.pg.vectors import embed_pending_pg

    while True:
        await anyio.sleep(state.config.embed_poll_seconds)
        if state.embedder is None:
            continue
        if await store.pending_embeddings():
            result = await embed_pending_pg(store, state.embedder)
            if getattr(result, "embedded_records", 0):
                logger.info("embedded %d records", result.embedded_records)
        if state.ml is not None and state.ml.enabled:  # one index seek when nothing is new
            ml = await embed_multilingual_pg(store, state.ml)
            if ml.embedded:
                logger.info("embedded %d non-English records (multilingual)", ml.embedded)


async def _watch(store: Any, state: DejaState) -> None:
    def on_pass(summary: IngestSummary) -> None:
        state.last_pass = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if summary.new_records:
            logger.info("ingested %d new records so far", summary.new_records)

    await watch(store, state.config.roots, rescan_seconds=state.config.rescan_seconds,
                on_pass=on_pass, exclude=state.config.exclude)


async def _embed_loop(store: Store, state: DejaState) -> None:
    from ingest.multilingual import embed_multilingual
    from ingest.vectors import embed_pending, pending_count

    while True:
        await anyio.sleep(state.config.embed_poll_seconds)
        if state.embedder is None:
            continue
        if await pending_count(store):
            result = await embed_pending(store, state.embedder)
            if result.embedded_records:
                logger.info("embedded %d records (%d pending)", result.embedded_records,
                            result.pending)
        if state.ml is not None and state.ml.enabled:
            # Cheap when nothing is new: the pass starts at its mark (ingest/multilingual.py).
            ml = await embed_multilingual(store, state.ml)
            if ml.embedded:
                logger.info("embedded %d non-English records (multilingual)", ml.embedded)
