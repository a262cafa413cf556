"""The filter columns an in-memory index keeps per row, coded as small ints, and their mask.

Why a module: the server holds two indexes in memory, the sign bits of every
chunk (index.py) and the multilingual vectors (ml_index.py). Both filter in
numpy what `SearchFilters.sql()` filters in SQL, and must mean the same:
one coding and one mask for both. A column's values (kinds, sessions,
projects, tools) are coded per index as they come, code 0 standing for NULL;
timestamps stay text, compared as SQL compares ISO times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .filters import SearchFilters

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FILTER_SQL", "Codes", "FilterColumns", "new_codes", "coded", "mask"]

# The filter values of a row joined to `records r` and `sources src`, in the order coded() reads.
FILTER_SQL = "r.kind, r.session_id, src.project_dir, r.tool_name, r.ts"
_CODED = ("kind", "session", "project", "tool")

Codes = dict[str, dict[Any, int]]  # per coded column: value -> code (0 is NULL)


class FilterColumns(Protocol):
    """What mask() reads: one entry per row."""

    @property
    def kind(self) -> np.ndarray: ...      # int32 codes

    @property
    def session(self) -> np.ndarray: ...

    @property
    def project(self) -> np.ndarray: ...

    @property
    def tool(self) -> np.ndarray: ...

    @property
    def ts(self) -> np.ndarray: ...        # bytes (S32): ISO times compare as text, as in SQL

    @property
    def has_ts(self) -> np.ndarray: ...    # bool: NULL timestamps match no time filter


def new_codes() -> Codes:
    return {name: {} for name in _CODED}


def _code(table: dict[Any, int], value: Any) -> int:
    if value is None:
        return 0
    code = table.get(value)
    if code is None:
        code = table[value] = len(table) + 1
    return code


def coded(codes: Codes, rows: list[Any], first: int) -> dict[str, np.ndarray]:
    """The filter columns of `rows`, whose FILTER_SQL values start at `first` (new values
    get codes: call it from one thread at a time per `codes`, the index's refresh)."""
    import numpy as np

    n = len(rows)
    out = {name: np.fromiter((_code(codes[name], r[first + i]) for r in rows), dtype=np.int32,
                             count=n)
           for i, name in enumerate(_CODED)}
    ts = first + len(_CODED)
    out["ts"] = np.array([(r[ts] or "").encode() for r in rows], dtype="S32")
    out["has_ts"] = np.fromiter((r[ts] is not None for r in rows), dtype=bool, count=n)
    return out


def mask(a: FilterColumns, codes: Codes, filters: SearchFilters) -> np.ndarray | None:
    """Rows passing the filters (None: all), with the same meaning as SearchFilters.sql()."""
    import numpy as np

    result: np.ndarray | None = None

    def both(m: np.ndarray) -> None:
        nonlocal result
        result = m if result is None else (result & m)

    def one_of(column: str, values: list[Any], column_codes: np.ndarray) -> None:
        table = codes[column]
        wanted = [table[v] for v in values if v in table]
        both(np.isin(column_codes, np.array(wanted, dtype=np.int32)))

    if filters.kinds:
        one_of("kind", list(filters.kinds), a.kind)
    if filters.session_id:
        one_of("session", [filters.session_id], a.session)
    if filters.project_dirs is not None:
        one_of("project", list(filters.project_dirs), a.project)
    if filters.tool:
        one_of("tool", [filters.tool], a.tool)
    if filters.since:
        both(a.has_ts & (a.ts >= filters.since.encode()))
    if filters.until:
        both(a.has_ts & (a.ts < filters.until.encode()))
    return result
