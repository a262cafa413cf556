"""What a search returns: hits, and the result that carries them with its notes.

Two JSON forms:
- `to_dict()`: every field, scores included. The contract of `deja search
  --json` (scripts read it) and of search_memory with `debug: true`: its keys
  and rounding do not change without a reason.
- `to_answer(project)`: what search_memory gives the agent by default, as few
  characters as it can act on: per hit its handle (for get_context), kind,
  tool, subagent, time to the minute, session and snippet, each only when
  set. `sessions` maps each hit's session to its project, so a hit names its
  project only when it has no session (a memory) and it is not the searched
  one; when every hit is from one session, the hits leave session_id out.
  Notes only when there are any. No scores, no uuid or record id beside the
  handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hit", "SearchResult", "minute"]


def minute(ts: str | None) -> str | None:
    """An ISO UTC time to the minute (2026-03-01T10:00:05.123Z -> 2026-03-01T10:00Z); others as they are."""
    if ts and len(ts) >= 17 and ts[10] == "T" and ts[13] == ":" and (
            ts.endswith("Z") or ts.endswith("+00:00")):
        return ts[:16] + "Z"
    return ts


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
    # The machine the record came from: set on PostgreSQL (a shared database), where
    # to_dict and to_answer then carry it; None on SQLite, whose JSON stays as it was.
    machine: str | None = None

    @property
    def handle(self) -> str:
        """A stable reference to expand the turns around this hit (`deja show`)."""
        return f"rec:{self.id}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "uuid": self.uuid, "session_id": self.session_id, "project": self.project,
            "kind": self.kind, "timestamp": self.timestamp, "snippet": self.snippet,
            "tool_name": self.tool_name, "agent_id": self.agent_id, "handle": self.handle,
            "record_id": self.id, "score": round(self.score, 6), "scores": self.scores,
        }
        if self.machine is not None:
            out["machine"] = self.machine
        return out

    def to_answer(self) -> dict[str, Any]:
        """The agent's fields (see the module docstring), the unset ones left out."""
        fields = {"handle": self.handle, "kind": self.kind, "tool": self.tool_name,
                  "agent_id": self.agent_id, "time": minute(self.timestamp),
                  "session_id": self.session_id, "project": self.project,
                  "machine": self.machine, "snippet": self.snippet}
        return {k: v for k, v in fields.items() if v is not None}


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

    def to_answer(self, project: str, notes: list[str] | None = None) -> dict[str, Any]:
        """The compact form for the agent (module docstring); `project` is the searched scope,
        `notes` go before the search's own."""
        hits = [h.to_answer() for h in self.hits]
        sessions: dict[str, Any] = {}
        for h in hits:
            sid = h.get("session_id")
            if sid is not None:
                sessions.setdefault(sid, h.get("project"))
                if sessions[sid] == h.get("project"):
                    h.pop("project", None)  # given once, in `sessions`
            elif h.get("project") == project:
                del h["project"]  # the searched project itself
        if len(hits) >= 2 and len(sessions) == 1 and all("session_id" in h for h in hits):
            for h in hits:
                del h["session_id"]  # the one key of `sessions`
        out: dict[str, Any] = {"project": project, "vector_status": self.vector_status,
                               "sessions": sessions}
        out["hits"] = hits
        all_notes = (notes or []) + self.notes
        if all_notes:
            out["notes"] = all_notes
        if self.truncated_by_budget:
            out["truncated_by_budget"] = True
        return out
