"""What a search is asked (`SearchRequest`) and what the asking process holds (`Resources`).

Why two objects: the request is what a person or the agent types, the same
from the CLI, the MCP tool and the benches, and checked once where it is made
(a bad value raises InvalidQuery before any model loads). The resources are
what the process has at hand for the vector side: the embedder (or why there
is none) and, in a long-lived process, the in-memory vector index and a
second connection to run the vector ranker beside the keyword one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite

from ingest.errors import InvalidQuery
from ingest.parse import KINDS

if TYPE_CHECKING:
    from ingest.embed import Embedder
    from ingest.multilingual import MlEmbedder

    from .index import VectorIndex
    from .multilingual import MlIndex

__all__ = ["MODES", "EMPTY_QUERY", "Resources", "SearchRequest"]

MODES = ("hybrid", "keyword", "vector")

# An empty query would rank every record by keyword and embed "" by vector:
# arbitrary short prompts, which look like an answer.
EMPTY_QUERY = "the query is empty: give words, an error message or a question"


@dataclass(frozen=True)
class SearchRequest:
    """One search: the query, the mode, how many hits, the filters and a size budget.

    `project`: a path, a folder name or 'all' (projects.resolve_project);
    `since`/`until`: any form times.parse_time reads; `max_tokens` bounds the
    snippets' total size (~4 characters a token). Raises InvalidQuery when
    made with a value out of range.
    """

    query: str
    mode: str = "hybrid"
    limit: int = 10
    kinds: Sequence[str] | None = None
    session_id: str | None = None
    project: str | None = None
    tool: str | None = None
    since: str | None = None
    until: str | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise InvalidQuery(EMPTY_QUERY)
        if self.mode not in MODES:
            raise InvalidQuery(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not isinstance(self.limit, int) or self.limit < 1 or self.limit > 200:
            raise InvalidQuery("limit must be between 1 and 200")
        if self.max_tokens is not None and self.max_tokens < 50:
            raise InvalidQuery("max_tokens must be at least 50")
        if self.kinds:
            unknown = [k for k in self.kinds if k not in KINDS]
            if unknown:
                raise InvalidQuery(f"unknown kind {unknown[0]!r}; kinds are: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Resources:
    """The query side of a process.

    `embedder` embeds the query (None: keyword only, with `embedder_error`
    saying why). A long-lived caller passes its loaded `vector_index` and a
    second connection, `vector_conn`: the vector ranker then runs on it while
    the keyword ranker runs on the main one (SQLite releases the GIL: two
    cores, two rankers). `ml_embedder` (the optional multilingual extra) adds
    the third ranker in hybrid mode, over `ml_index` when the process keeps one.
    """

    embedder: Embedder | None = None
    embedder_error: str | None = None
    vector_index: VectorIndex | None = None
    vector_conn: aiosqlite.Connection | None = None
    ml_embedder: MlEmbedder | None = None
    ml_index: MlIndex | None = None
