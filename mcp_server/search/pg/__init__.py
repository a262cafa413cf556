"""Search on the PostgreSQL engine (issue 11): the same search, PostgreSQL's rankers.

`search_pg(conn, request, embedder=...)` answers a SearchRequest from a
shared database with the SearchResult the SQLite engine returns (and a
`machine` in each hit). Only the rankers and their SQL are PostgreSQL's:
keyword.py (BM25 over schema v4's stemmed `search_tsv` with its context and
the passages of long records, as SQLite's FTS5 ranks), vector.py (pgvector's
cosine distance: an exact scan, or an HNSW index for unfiltered queries when
one exists); the fusion, the neighbour
smoothing, the hits and their snippets are the SQLite engine's own
(../assemble.py, ../fusion.py, ../snippets.py). engine.py joins them.

Nothing here imports psycopg at import time: the CLI imports this package only
for a PostgreSQL URL.
"""

from __future__ import annotations

from .engine import search_pg

__all__ = ["search_pg"]
