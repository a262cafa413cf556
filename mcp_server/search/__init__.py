"""Search over the history: BM25 and vectors, fused; one engine for the CLI and the MCP tools.

Call `search(conn, SearchRequest(query, ...), Resources(embedder=...))`.
The package, one job a module:
- request.py: what a search is asked (`SearchRequest`, checked on creation)
  and what the process holds for it (`Resources`: embedder, index, connection);
- terms.py: the query as FTS5 MATCH terms (quoting, CJK bigrams, stopwords);
- filters.py: `SearchFilters`, resolved once and applied by both rankers;
- times.py: `parse_time`, the since/until forms a person types;
- keyword.py: the BM25 ranker and its OR fallback pruned to the rarest terms;
- vector.py: the vector ranker (sign-bit candidates, exact int8 cosine);
- index.py: `VectorIndex`, the sign bits in memory for a long-lived process;
- multilingual.py: the optional third ranker (multilingual-e5 over the
  non-English records); ml_index.py: `MlIndex`, their int8 vectors in memory;
- columns.py: the filter columns both in-memory indexes keep, and their mask;
- fusion.py: weighted reciprocal-rank fusion, neighbour smoothing, `FUSION`;
- snippets.py: windows of text around the match;
- results.py: `Hit`, `SearchResult` (the JSON contract);
- assemble.py: the fused order and the hits, shared by both engines;
- pg/: the same search on PostgreSQL (`search_pg`; imported only for a
  PostgreSQL URL);
- engine.py: `search()`: filters, both rankers, the rescue of records not yet
  embedded, fusion, hits.
"""

from __future__ import annotations

from .engine import keyword_search, search
from .filters import SearchFilters
from .fusion import FUSION, Fusion
from .index import VectorIndex
from .request import MODES, Resources, SearchRequest
from .results import Hit, SearchResult
from .terms import build_fts_queries
from .times import parse_time

__all__ = [
    "search", "keyword_search", "SearchRequest", "Resources", "SearchFilters", "parse_time",
    "MODES", "Hit", "SearchResult", "build_fts_queries", "FUSION", "Fusion", "VectorIndex",
]
