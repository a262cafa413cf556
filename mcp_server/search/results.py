"""What a search returns: hits, and the result that carries them with its notes.

`to_dict()` is the JSON contract of `deja search --json` and of the
search_memory tool: its keys and rounding do not change without a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hit", "SearchResult"]


@dataclass
class Hit:
    """One transcript line (or memory) found, with its snippet and each ranker's rank and score."""

    id: int
    uuid: str | None
    session_id: str | None
    project: str | None
    kind: str
    timestamp: str | None
    snippet: str
    tool_name: str | None
    agent_id: str | None
    score: float
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def handle(self) -> str:
        """A stable reference to expand the turns around this hit (`deja show`)."""
        return f"rec:{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "session_id": self.session_id, "project": self.project,
            "kind": self.kind, "timestamp": self.timestamp, "snippet": self.snippet,
            "tool_name": self.tool_name, "agent_id": self.agent_id, "handle": self.handle,
            "record_id": self.id, "score": round(self.score, 6), "scores": self.scores,
        }


@dataclass
class SearchResult:
    """The hits, best first, and what the caller should know: which rankers ran and why not."""

    hits: list[Hit]
    query: str
    mode: str
    vector_status: str = "not used"
    notes: list[str] = field(default_factory=list)
    pending_embeddings: int = 0
    elapsed_ms: float = 0.0
    truncated_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query, "mode": self.mode, "hits": [h.to_dict() for h in self.hits],
            "vector_status": self.vector_status, "pending_embeddings": self.pending_embeddings,
            "notes": self.notes, "truncated_by_budget": self.truncated_by_budget,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }
