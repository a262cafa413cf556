"""Migration 10: the multilingual pass's mark survives a deleted record, and says when
vectors went away.

Why: `records.id` is an INTEGER PRIMARY KEY without AUTOINCREMENT, so deleting
the record with the highest id (a forgotten memory, ingest/memories.py) and
inserting another gives the new one that same id. The pass of m009 resumes
from `ml_state.last_record_id`, which already covers that id: the new record
was never looked at, and a foreign one never got its multilingual vector.
And a server holding every multilingual vector in memory
(mcp_server/search/multilingual.py) had to count the table to notice that
some were gone: a walk of the table per search.

What it adds:
- `records_ml_mark`: after a record is deleted, when it was the top one, the
  mark comes down to the highest id left (never up), so the next id handed
  out lies above it again. MAX(id) of an INTEGER PRIMARY KEY is one seek.
- `ml_state.removed` and `ml_vectors_ad`: a count of the multilingual vectors
  ever deleted (with their record, by ON DELETE CASCADE, or by `deja reembed`).
  A reader compares one row instead of counting the table; the same id with a
  new vector always follows a deletion, so it is seen too.
- the mark of an existing database brought down the same way, in case its
  top records were deleted before this migration.

Fixed text like every migration (see ingest/migrations.py).
"""

from __future__ import annotations

__all__ = ["M010_SCRIPT"]

M010_SCRIPT = """
ALTER TABLE ml_state ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER ml_vectors_ad AFTER DELETE ON ml_vectors BEGIN
    UPDATE ml_state SET removed = removed + 1 WHERE id = 1;
END;
CREATE TRIGGER records_ml_mark AFTER DELETE ON records
WHEN old.id > (SELECT COALESCE(MAX(id), 0) FROM records) BEGIN
    UPDATE ml_state SET last_record_id = (SELECT COALESCE(MAX(id), 0) FROM records)
    WHERE last_record_id > (SELECT COALESCE(MAX(id), 0) FROM records);
END;
UPDATE ml_state SET last_record_id = (SELECT COALESCE(MAX(id), 0) FROM records)
WHERE last_record_id > (SELECT COALESCE(MAX(id), 0) FROM records);
"""
