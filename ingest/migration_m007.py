"""Migration 7: passages of long records, escape codes out of the index, injected copies out.

Its own module only because ingest/migrations.py would pass the house's
450-line limit; it is listed in migrations.MIGRATIONS like the others, and
follows their rule: fixed SQL text, never built from live constants (the
writers' statements in ingest/indexing.py are checked against it by
tests/test_migrations.py). It needs two SQL functions of the connection
(ingest/db.py): `deja_fts_text`, which now also removes terminal escape codes,
and `deja_passages`, the spans of a long text's passages as JSON.
"""

from __future__ import annotations

__all__ = ["m007_script", "M007_PASSAGES", "M007_SKIP"]

# A `system`, `meta` or `attachment` record that repeats the arguments of the
# slash command at most 3 records before it in the same file (as
# ingest.indexing.FTS_SKIP_SQL was when m007 shipped).
M007_SKIP = (
    "(r.kind IN ('system', 'meta', 'attachment') AND EXISTS ("
    "SELECT 1 FROM (SELECT trim(substr(p.text, instr(p.text, '<command-args>') + 14, "
    "instr(p.text, '</command-args>') - instr(p.text, '<command-args>') - 14)) AS args "
    "FROM records p WHERE p.source_id = r.source_id AND p.id < r.id AND p.id >= r.id - 3 "
    "AND p.kind IN ('command', 'prompt') AND instr(p.text, '</command-args>') > 0) "
    "WHERE length(args) >= 8 AND instr(r.text, args) > 0))"
)

# The passages of records longer than 1,500 characters, rowid = record id *
# 2^24 + the passage's start (as ingest.indexing.PASSAGES_SQL was).
M007_PASSAGES = (
    "INSERT INTO passages_fts (rowid, text) "
    "SELECT r.id * 16777216 + (j.value ->> 0), "
    "deja_fts_text(substr(r.text, (j.value ->> 0) + 1, (j.value ->> 1) - (j.value ->> 0))) "
    "FROM records r, json_each(deja_passages(r.text)) j "
    "WHERE {where} AND length(r.text) > 1500 AND NOT " + M007_SKIP
)

_DELETE_PASSAGES = ("DELETE FROM passages_fts WHERE rowid >= old.id * 16777216 "
                    "AND rowid < (old.id + 1) * 16777216;")

# Text holding an escape (ESC or the C1 CSI byte): indexed differently from now on.
_ESCAPED = "(instr({t}, char(27)) > 0 OR instr({t}, char(155)) > 0)"


def m007_script(context_sql: str) -> str:
    """The SQL of migration 7 (run by migrations.m007_passages in its transaction).

    Passage-level full-text index, cleaner text, no injected copies of commands.

    - `passages_fts` (contentless, the records' tokenizer) holds the
      overlapping passages (`deja_passages`: ingest.indexing.passage_spans,
      ~500 characters when this shipped) of every record longer than 1,500
      characters, so one sentence of a 10,000-character summary is found and
      the hit points at it. The triggers keep it in step with records.
    - Records whose text (or whose previous record, their context) holds
      terminal escape codes are re-indexed without them.
    - The `system`/`meta`/`attachment` copies of a slash command's arguments
      (M007_SKIP) lose their full-text rows: the command keeps the words.

    `context_sql` is m005's context expression (fixed text in migrations.py).
    """
    previous = ("(SELECT p.text FROM records p WHERE p.source_id = r.source_id "
                "AND p.id < r.id ORDER BY p.id DESC LIMIT 1)")
    escaped = (f"({_ESCAPED.format(t='r.text')} OR "
               f"{_ESCAPED.format(t='COALESCE(' + previous + ', char(32))')})")
    return f"""
        CREATE VIRTUAL TABLE passages_fts USING fts5(
            text, content='', contentless_delete=1,
            tokenize='porter unicode61 remove_diacritics 2'
        );
        DROP TRIGGER records_ad;
        DROP TRIGGER records_au;
        CREATE TRIGGER records_ad AFTER DELETE ON records BEGIN
            DELETE FROM records_fts WHERE rowid = old.id;
            {_DELETE_PASSAGES}
        END;
        CREATE TRIGGER records_au AFTER UPDATE OF text ON records BEGIN
            DELETE FROM records_fts WHERE rowid = old.id;
            {_DELETE_PASSAGES}
            INSERT INTO records_fts (rowid, text, context)
                SELECT r.id, deja_fts_text(r.text), {context_sql}
                FROM records r WHERE r.id = new.id AND NOT {M007_SKIP};
            {M007_PASSAGES.format(where='r.id = new.id')};
        END;
        CREATE TEMP TABLE m007_reindex AS SELECT r.id FROM records r WHERE {escaped};
        DELETE FROM records_fts WHERE rowid IN (SELECT id FROM m007_reindex);
        INSERT INTO records_fts (rowid, text, context)
            SELECT r.id, deja_fts_text(r.text), {context_sql} FROM records r
            WHERE r.id IN (SELECT id FROM m007_reindex) AND NOT {M007_SKIP};
        DROP TABLE m007_reindex;
        DELETE FROM records_fts WHERE rowid IN (SELECT r.id FROM records r WHERE {M007_SKIP});
        {M007_PASSAGES.format(where='1')};
        """
