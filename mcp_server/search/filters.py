"""The filters of a search, resolved once and applied by both rankers.

Why a module of its own: the keyword ranker, the vector ranker and the
in-memory vector index all read them, and the engine builds them; held here,
none of those has to import another to know their shape. The SQL form
(`SearchFilters.sql`) and the index's numpy mask (index.py) mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["in_list", "SearchFilters"]


@dataclass
class SearchFilters:
    """Resolved filters shared by both rankers."""

    kinds: list[str] | None = None
    session_id: str | None = None
    project_dirs: list[str] | None = None  # None: every project
    tool: str | None = None
    since: str | None = None
    until: str | None = None

    def sql(self, mark: str = "?") -> tuple[str, list[Any]]:
        """AND-clauses over `records r` (joined to `sources src`), and their parameters;
        `mark` is the driver's placeholder (`%s` for psycopg on PostgreSQL)."""
        clauses: list[str] = []
        params: list[Any] = []

        def one_of(column: str, values: Sequence[str]) -> None:
            clauses.append(in_list(column, values, mark))
            params.extend(values)

        if self.kinds:
            one_of("r.kind", self.kinds)
        if self.session_id:
            one_of("r.session_id", [self.session_id])
        if self.project_dirs is not None:
            one_of("src.project_dir", self.project_dirs)
        if self.tool:
            one_of("r.tool_name", [self.tool])
        if self.since:
            clauses.append(f"r.ts >= {mark}")
            params.append(self.since)
        if self.until:
            clauses.append(f"r.ts < {mark}")
            params.append(self.until)
        return "".join(" AND " + c for c in clauses), params


def in_list(column: str, values: Sequence[Any], mark: str = "?") -> str:
    """`column IN (?, ...)` for `values`; for no values a clause no row meets. SQLite reads
    an empty `IN ()` as false, PostgreSQL refuses it as a syntax error (a project that
    matches no folder resolves to an empty list)."""
    if not values:
        return "1 = 0"
    return f"{column} IN ({', '.join(mark for _ in values)})"
