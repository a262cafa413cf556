"""The store surface the ingest runner writes through, which both engines offer.

ingest/runner.py reads files and hands batches to a store; it needs only
these methods, so the SQLite `Store` (ingest/store.py) and the PostgreSQL
`PgStore` (ingest/pg/store.py) are interchangeable under it. Each engine
keeps its promise behind them: `write_batch` commits a batch's rows and its
file's cursor in ONE transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .batch import Batch, BatchResult, SourceRow

__all__ = ["IngestStore", "SourceCounts", "NewSource"]

# (path, display_path, project_dir, layout, session_hint, agent_id) of a file to register.
NewSource = tuple[str, str, str, str, str | None, str | None]


@dataclass(frozen=True)
class SourceCounts:
    """What an ingest summary reports of the files a store knows (this machine's, on a
    shared database): sessions, subagent runs of those sessions, files gone."""

    sessions: int
    subagent_runs: int
    missing_files: int


class IngestStore(Protocol):
    """What ingest/runner.py calls on a store."""

    async def load_sources(self) -> dict[bytes, SourceRow]: ...

    async def add_sources(self, files: list[NewSource]) -> dict[bytes, SourceRow]: ...

    async def mark_missing(self, source_ids: list[int], missing: bool = True) -> None: ...

    async def write_batch(self, batch: Batch) -> BatchResult: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def source_counts(self) -> SourceCounts: ...
