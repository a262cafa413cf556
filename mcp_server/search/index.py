"""Sign bits and filter codes of every chunk, in memory, for a long-lived process.

Why: the coarse vector step scans every chunk's sign bits. SQLite does that at
about 14 ms per 100k chunks, but a filter (a project, a kind, a time range)
makes it look up each chunk's record as well: 43 ms per 100k, 0.4 s per
million. Held in numpy arrays (about 100 bytes a chunk: 100 MB per million),
the same scan with any filter costs a few milliseconds per 100k, well inside
a 250 ms search at a million chunks.

The MCP server loads the index in the background and refreshes it every few
seconds (chunks with a higher id than the last loaded). Until it is loaded, or
for the chunks added since the last refresh, search uses the SQL scan
(vector.py), so no vector is ever left out. Chunks deleted since (a
forgotten memory) drop out at the exact step, which reads the database; a
`deja reembed` (new model generation) or any other deletion makes the next
refresh reload everything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from .columns import FILTER_SQL, Codes, coded, mask, new_codes
from .filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np

__all__ = ["VectorIndex"]

logger = logging.getLogger(__name__)

PAGE = 50_000


@dataclass
class _Arrays:
    """One immutable snapshot: searches read it while a refresh builds the next."""

    ids: np.ndarray       # int64 chunk ids, ascending
    bits: np.ndarray      # (words, n) uint64 sign bits, one contiguous row per word:
                            # XOR + popcount per row is 5x faster than over (n, words)
    kind: np.ndarray      # int32 codes (see VectorIndex.codes)
    session: np.ndarray
    project: np.ndarray
    tool: np.ndarray
    ts: np.ndarray        # bytes (S32): ISO timestamps compare as text, as in SQL
    has_ts: np.ndarray    # bool: NULL timestamps match no time filter
    codes: Codes          # per filter column: value -> code (columns.py)

    @staticmethod
    def concat(parts: list[_Arrays], codes: Codes) -> _Arrays:
        """One snapshot of several, in order (worker thread)."""
        import numpy as np

        rows = [p for p in parts if len(p.ids)]
        if not rows:
            none = np.empty(0, dtype=np.int32)
            return _Arrays(ids=np.empty(0, dtype=np.int64), bits=np.empty((0, 0), dtype=np.uint64),
                           kind=none, session=none, project=none, tool=none,
                           ts=np.empty(0, dtype="S32"), has_ts=np.empty(0, dtype=bool), codes=codes)
        joined = {f.name: np.concatenate([getattr(p, f.name) for p in rows],
                                         axis=1 if f.name == "bits" else 0)
                  for f in fields(_Arrays) if f.name != "codes"}
        joined["bits"] = np.ascontiguousarray(joined["bits"])
        return _Arrays(**joined, codes=codes)


class VectorIndex:
    """See the module docstring. `refresh()` in the background; `candidates()` per query."""

    def __init__(self) -> None:
        self.arrays: _Arrays | None = None
        self.max_id = 0
        self.generation: Any = None
        self.codes = new_codes()
        self._lock = anyio.Lock()

    @property
    def ready(self) -> bool:
        return self.arrays is not None

    def __len__(self) -> int:
        return 0 if self.arrays is None else len(self.arrays.ids)

    async def refresh(self, conn: aiosqlite.Connection, check_removed: bool = True) -> int:
        """Load chunks added since the last call (everything the first time); returns how many.

        check_removed: also count the loaded chunks still in the database and
        reload when some are gone (36 ms per million chunks, so the server
        does it once a minute; a deleted chunk meanwhile only takes a
        candidate slot, since the exact step reads the database).
        """
        async with self._lock:
            models = list(await conn.execute_fetchall(
                "SELECT model_id, dim, created_at FROM embedding_model"))
            generation = tuple(models[0]) if models else None
            if self.arrays is not None and generation != self.generation:
                logger.info("vector index: the vectors were rebuilt; reloading")
                self._reset()
            if self.arrays is not None and check_removed:
                count = next(iter(await conn.execute_fetchall(
                    "SELECT COUNT(*) FROM chunks WHERE id <= ?", (self.max_id,))))[0]
                if count != len(self.arrays.ids):
                    logger.info("vector index: chunks were removed; reloading")
                    self._reset()
            self.generation = generation
            started = time.perf_counter()
            pages: list[_Arrays] = []
            after = self.max_id
            while True:
                rows = list(await conn.execute_fetchall(
                    f"SELECT c.id, c.bits, {FILTER_SQL} "
                    "FROM chunks c JOIN records r ON r.id = c.record_id "
                    "LEFT JOIN sources src ON src.id = r.source_id "
                    "WHERE c.id > ? AND c.bits IS NOT NULL ORDER BY c.id LIMIT ?",
                    (after, PAGE)))
                if not rows:
                    break
                pages.append(await anyio.to_thread.run_sync(self._page, rows))
                after = rows[-1][0]
            if pages or self.arrays is None:
                # One concatenation for the whole load, published at once: searches
                # meanwhile use the previous snapshot plus the SQL scan above max_id.
                parts = ([self.arrays] if self.arrays is not None else []) + pages
                self.arrays = await anyio.to_thread.run_sync(_Arrays.concat, parts, self.codes)
                self.max_id = after
            added = sum(len(page.ids) for page in pages)
            if added > PAGE:
                logger.info("vector index: loaded %d chunks in %.1f s", added,
                            time.perf_counter() - started)
            return added

    def _reset(self) -> None:
        self.arrays = None
        self.max_id = 0
        self.codes = new_codes()  # a search may still read the old snapshot's

    def _page(self, rows: list[Any]) -> _Arrays:
        """Worker thread: a page of rows as arrays (filter values coded as they come)."""
        import numpy as np

        n = len(rows)
        return _Arrays(
            ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
            bits=_words(b"".join(r[1] for r in rows), n).T,
            **coded(self.codes, rows, 2),
            codes=self.codes,
        )

    def candidates(self, qbits: bytes, filters: SearchFilters, k: int) -> tuple[list[int], int]:
        """Blocking (run it in a thread): the ids of the k chunks nearest by Hamming distance
        among those passing the filters, and how many passed."""
        import numpy as np

        a = self.arrays
        if a is None or not len(a.ids):
            return [], 0
        q = _words(qbits, 1)[0]
        if len(q) != a.bits.shape[0]:
            return [], 0  # another model's width: the refresh will reload
        passing = mask(a, a.codes, filters)
        rows = None if passing is None else np.flatnonzero(passing)
        total = len(a.ids) if rows is None else len(rows)
        if total == 0:
            return [], 0
        dist = np.zeros(total, dtype=np.uint16)
        for word in range(len(q)):
            column = a.bits[word] if rows is None else a.bits[word][rows]
            dist += np.bitwise_count(column ^ q[word])
        if total > k:
            pick = np.argpartition(dist, k)[:k]
        else:
            pick = np.arange(total)
        chosen = pick if rows is None else rows[pick]
        return a.ids[chosen].tolist(), total


def _words(raw: bytes, n: int) -> np.ndarray:
    """n packed bit vectors as an (n, words) uint64 array, zero-padded to 8 bytes."""
    import numpy as np

    flat = np.frombuffer(raw, dtype=np.uint8)
    width = len(flat) // n if n else 8
    padded = -(-width // 8) * 8
    out = np.zeros((n, padded), dtype=np.uint8)
    out[:, :width] = flat.reshape(n, width)
    return out.view(np.uint64)
