"""Schema version 7: the multilingual vectors on PostgreSQL (the optional `multilingual` extra).

Why: SQLite keeps a second, multilingual-e5-small vector for the records
written in a non-Latin script (ingest/multilingual.py, migrations m009 and
m010), and hybrid search fuses their ranking as a third list. This version
gives PostgreSQL the same, for ingest/pg/multilingual.py and
mcp_server/search/pg/multilingual.py:

- `ml_model`: the one model the multilingual vectors belong to (as
  `embedding_model` is for MiniLM's): recorded with the first vector;
  vectors of another model are never mixed in, `deja reembed` rebuilds them.
- `ml_vectors`: one float vector per foreign record, pgvector's
  `vector(384)` like the chunks' (ML_DIM: e5-small has MiniLM's size). No
  approximate index: about a fifth of the records have one, and the ranker
  scans them exactly, its filters first.
- `records.ml_seen`: whether the pass has looked at the record. SQLite's pass
  keeps one mark, the last record id looked at, which works there because one
  writer commits ids in order. Here several machines ingest at once and a
  record id is handed out when its row is inserted, not when it commits: a
  batch holding ids 100-199 may commit after one holding 200-299, and a mark
  moved past 299 would skip it forever. So the mark is per record, set in the
  transaction that stores the record's vector.
- `records_ml_pending`: the records still to look at, among those that can be
  foreign at all: of a kind MiniLM embeds (`embed_state <> 2`, as on SQLite)
  and with at least one letter of ingest/multilingual.py's scripts in their
  first FOREIGN_WINDOW characters (the pass then applies `is_foreign`, five
  letters, in Python). An English record never enters this index and is never
  written again for it: no second update of four records in five. The pass's
  query repeats the predicate word for word (`PENDING_WHERE`), which is what
  lets the planner use a partial index.

Adding a column with a constant default rewrites nothing (PostgreSQL 11+);
the index is built from the records already there, which are then pending:
an existing database is backfilled by the first pass with the extra. Fixed
text like every version: never edit it once shipped.
"""

from __future__ import annotations

from ..multilingual import FOREIGN_CHARS, FOREIGN_WINDOW, ML_DIM

__all__ = ["SCHEMA_V7", "PENDING_WHERE"]

# A literal, not a parameter: a partial index serves a query whose WHERE repeats its predicate.
assert "'" not in FOREIGN_CHARS and "\\" not in FOREIGN_CHARS
PENDING_WHERE = (f"NOT ml_seen AND embed_state <> 2 "
                 f"AND substr(text, 1, {FOREIGN_WINDOW}) ~ '{FOREIGN_CHARS}'")

SCHEMA_V7 = f"""
ALTER TABLE records ADD COLUMN ml_seen BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX records_ml_pending ON records (id) WHERE {PENDING_WHERE};
CREATE TABLE ml_model (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE ml_vectors (
    record_id BIGINT PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
    vec vector({ML_DIM}) NOT NULL
);
UPDATE deja_schema SET version = 7 WHERE id = 1;
"""
