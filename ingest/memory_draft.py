"""A memory ready to store, the one thing both engines' memory inserts take.

Its own module so that ingest/memories.py (which drafts it and inserts on
SQLite) and ingest/pg/memories.py (the insert on PostgreSQL) share the type
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MemoryDraft"]


@dataclass(frozen=True)
class MemoryDraft:
    """A memory ready to store: what both engines' inserts write (redacted already)."""

    key: str          # the line key duplicates collide on: hash of (kind, text)
    uuid: str         # the id it gets when new
    session_id: str | None
    text: str
    ts: str
    cwd: str | None
    meta: dict[str, Any]
    kind: str
    origin: str | None  # set: the session's other memories of this kind and origin go
