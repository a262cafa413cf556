"""Every multilingual vector in memory, as stored (int8), for a long-lived process.

Why: the multilingual ranker (multilingual.py) scores the question against
every non-English record's vector, about a fifth of a history: ~170k vectors
at a million chunks. Kept as float32 that was 1.5 KB a vector (~260 MB per
server at 170k, and Claude Code runs one server per session); kept as the
int8 rows the database stores, plus each row's norm and the filter columns
(columns.py), it is ~440 bytes (~75 MB). A query converts the rows to float32
a block of BLOCK rows at a time (the block stays in cache) and takes the dot
product there, which gives the exact cosine over the int8 vectors without a
float copy of the whole table.

Freshness without a walk of the table per search: the server refreshes the
index in the background (background.py, every few seconds). A refresh reads
the one row of `ml_state`: when its model or its count of removed vectors
(`removed`, migration m010) changed, everything is reloaded (a `deja
reembed`, a deleted record: rare); otherwise only the rows above the last id
loaded are read, an index seek. A search reads the current snapshot, plus the
rows above the snapshot's last id (a seek, usually empty), so a vector stored
since the last refresh is never left out. A deleted record may stay in the
snapshot until the next refresh: the engine drops ids with no record
(engine._materialize), so it is never returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from .columns import FILTER_SQL, Codes, coded, mask, new_codes
from .filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MlIndex", "MlSnapshot", "best_rows", "BLOCK"]

logger = logging.getLogger(__name__)

PAGE = 20_000  # rows read per step of a load
# Rows converted to float32 at a time: 1.5 MB, in cache. Also below OpenBLAS's threshold
# for a threaded matrix-vector product, whose threads spin on a busy machine (measured
# here: 9 ms single-threaded for 170k rows, 340 ms with threads, blocks of 2,048 rows).
BLOCK = 1024
Ml = list[tuple[int, float]]  # (record id, cosine), best first


@dataclass(frozen=True)
class MlSnapshot:
    """One immutable view of the loaded vectors: searches read it while a refresh appends."""

    state: tuple[str, int, int] | None  # ml_state's (model_id, dim, removed) when loaded
    last: int              # the highest record id loaded (0: none)
    ids: np.ndarray        # int64 record ids, ascending
    vecs: np.ndarray       # (n, dim) int8, as stored
    inv_norms: np.ndarray  # float32: 1 / each row's norm (0 for an all-zero row)
    kind: np.ndarray       # the filter columns (columns.py)
    session: np.ndarray
    project: np.ndarray
    tool: np.ndarray
    ts: np.ndarray
    has_ts: np.ndarray
    codes: Codes

    def __len__(self) -> int:
        return len(self.ids)


_FIELDS = ("ids", "vecs", "inv_norms", "kind", "session", "project", "tool", "ts", "has_ts")


class _Rows:
    """The arrays behind the snapshots, with room to grow: a refresh writes past the rows
    the published snapshot shows (its arrays are views), so rows once loaded are copied
    only when the room runs out (by a quarter more each time), never per refresh."""

    def __init__(self) -> None:
        self.n = 0
        self.arrays: dict[str, np.ndarray] = {}

    def append(self, part: dict[str, np.ndarray]) -> None:
        import numpy as np

        m = len(part["ids"])
        need = self.n + m
        if not self.arrays or need > len(self.arrays["ids"]):
            room = need + need // 4 + 1024  # pages never written stay unallocated
            grown = {}
            for name in _FIELDS:
                new = np.empty((room, *part[name].shape[1:]), dtype=part[name].dtype)
                if self.arrays:
                    new[:self.n] = self.arrays[name][:self.n]
                grown[name] = new
            self.arrays = grown
        for name in _FIELDS:
            self.arrays[name][self.n:need] = part[name]
        self.n = need

    def views(self) -> dict[str, np.ndarray]:
        return {name: array[:self.n] for name, array in self.arrays.items()}


def _part(rows: list[Any], codes: Codes | None) -> dict[str, np.ndarray]:
    """Worker thread: rows of (record id, vec[, FILTER_SQL values]) as arrays."""
    import numpy as np

    n = len(rows)
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(n, -1)
    norms = np.linalg.norm(vecs.astype(np.float32), axis=1)
    inv = np.divide(1.0, norms, out=np.zeros(n, dtype=np.float32), where=norms > 0)
    out = {"ids": np.fromiter((r[0] for r in rows), dtype=np.int64, count=n), "vecs": vecs,
           "inv_norms": inv.astype(np.float32)}
    if codes is not None:
        out.update(coded(codes, rows, 2))
    return out


class MlIndex:
    """See the module docstring. `refresh()` in the background; `snapshot` per query."""

    def __init__(self) -> None:
        self.snapshot: MlSnapshot | None = None
        self._rows = _Rows()
        self._last = 0  # the highest record id in _rows (published or not: a refresh may fail)
        self._codes = new_codes()
        self._lock = anyio.Lock()

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    def __len__(self) -> int:
        return 0 if self.snapshot is None else len(self.snapshot)

    async def refresh(self, conn: aiosqlite.Connection) -> MlSnapshot:
        """Load the rows added since the last call (all of them the first time, or when
        vectors were removed or rebuilt); returns the snapshot published."""
        async with self._lock:
            rows = list(await conn.execute_fetchall(
                "SELECT model_id, dim, removed FROM ml_state WHERE id = 1"))
            state = (str(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None
            old = self.snapshot
            if old is not None and state != old.state:
                if old.state is not None:
                    logger.info("multilingual index: vectors removed or rebuilt; reloading")
                self._rows, self._last, self._codes, old = _Rows(), 0, new_codes(), None
            started = time.perf_counter()
            added = 0
            while True:
                page = list(await conn.execute_fetchall(
                    f"SELECT m.record_id, m.vec, {FILTER_SQL} FROM ml_vectors m "
                    "JOIN records r ON r.id = m.record_id "
                    "LEFT JOIN sources src ON src.id = r.source_id "
                    "WHERE m.record_id > ? ORDER BY m.record_id LIMIT ?", (self._last, PAGE)))
                if not page:
                    break
                part = await anyio.to_thread.run_sync(_part, page, self._codes)
                await anyio.to_thread.run_sync(self._rows.append, part)
                self._last = int(page[-1][0])
                added += len(page)
            if old is None or self._rows.n != len(old):
                self.snapshot = self._publish(state, self._last)
            if added > PAGE:
                logger.info("multilingual index: loaded %d vectors in %.1f s", added,
                            time.perf_counter() - started)
            assert self.snapshot is not None
            return self.snapshot

    def _publish(self, state: tuple[str, int, int] | None, last: int) -> MlSnapshot:
        import numpy as np

        views = self._rows.views()
        if not views:  # nothing loaded yet
            none = np.empty(0, dtype=np.int32)
            views = {"ids": np.empty(0, dtype=np.int64), "vecs": np.empty((0, 0), dtype=np.int8),
                     "inv_norms": np.empty(0, dtype=np.float32), "kind": none, "session": none,
                     "project": none, "tool": none, "ts": np.empty(0, dtype="S32"),
                     "has_ts": np.empty(0, dtype=bool)}
        return MlSnapshot(state=state, last=last, codes=self._codes, **views)


def best_rows(ids: np.ndarray, vecs: np.ndarray, inv_norms: np.ndarray, qvec: np.ndarray,
              rows: np.ndarray | None, n: int) -> Ml:
    """Blocking (run it in a thread): the n rows of highest cosine with `qvec` (unit
    length), among `rows` (None: all), best first; exact over the int8 vectors."""
    import numpy as np

    count = len(ids) if rows is None else len(rows)
    if count == 0 or n <= 0:
        return []
    query = np.asarray(qvec, dtype=np.float32).ravel()
    sims = np.empty(count, dtype=np.float32)
    block = np.empty((min(BLOCK, count), vecs.shape[1]), dtype=np.float32)
    for lo in range(0, count, BLOCK):
        hi = min(lo + BLOCK, count)
        part = vecs[lo:hi] if rows is None else vecs[rows[lo:hi]]
        np.copyto(block[:hi - lo], part)
        np.matmul(block[:hi - lo], query, out=sims[lo:hi])
    sims *= inv_norms if rows is None else inv_norms[rows]
    if count > n:
        top = np.argpartition(-sims, n - 1)[:n]
    else:
        top = np.arange(count)
    chosen = top if rows is None else rows[top]
    # Best first; equal cosines by record id, so the order never depends on the partition.
    order = np.lexsort((ids[chosen], -sims[top]))
    return [(int(ids[chosen[i]]), float(sims[top[i]])) for i in order]


def snapshot_ranks(snap: MlSnapshot, qvec: np.ndarray, filters: SearchFilters, n: int) -> Ml:
    """Blocking: the snapshot's best n records passing `filters`, best first."""
    import numpy as np

    if not len(snap):
        return []
    passing = mask(snap, snap.codes, filters)
    rows = None if passing is None else np.flatnonzero(passing)
    return best_rows(snap.ids, snap.vecs, snap.inv_norms, qvec, rows, n)


def tail_ranks(rows: list[Any], qvec: np.ndarray, n: int) -> Ml:
    """Blocking: the best n of rows (record id, vec) read past a snapshot (already filtered)."""
    if not rows:
        return []
    part = _part(rows, None)
    return best_rows(part["ids"], part["vecs"], part["inv_norms"], qvec, None, n)
