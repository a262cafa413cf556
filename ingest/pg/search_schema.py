"""Schema version 4: the full-text index the keyword ranker reads, as SQLite's FTS5 holds it.

Why: the v1 `text_tsv` (the `simple` configuration over a record's own text)
left PostgreSQL's keyword ranker well behind SQLite's on bench/recall.py:
no stemming, no context, no passages. This version gives each record what
SQLite's `records_fts` and `passages_fts` give it (ingest/indexing.py):

- `deja`, a text search configuration: PostgreSQL's default parser, every
  word through the Snowball English stemmer (the porter family SQLite's
  tokenizer uses) without a stopword list, as FTS5 keeps every word. Other
  tokens (numbers, paths, e-mail addresses) stay as the parser reads them.
- `records.search_tsv`: the record's own words at weight A and the words of
  the record before it in its file at weight B (SQLite's `context` column:
  only a prompt, reply, tool call or summary before it counts, its first
  2,000 characters; a memory has none). The text is first cut as SQLite's
  tokenizer cuts it (`deja_words`: ASCII punctuation separates words, CJK
  characters are spaced apart as ingest.db.fts_text does), so a query's
  words and character pairs match what was indexed.
  `search_len` is its number of word positions (BM25's document length; a
  count of characters instead, which costs nothing, gave bench/recall.py's
  hybrid hit@10 .709 against .718, distinct words .670).
- `passages`: the overlapping ~500-character pieces of each record longer
  than 1,500 characters (ingest/indexing.py `passage_spans`, the same rule
  written in PL/pgSQL: `deja_passage_spans`), each with its own tsvector.

Both were written by triggers, so every writer (ingest's batches, `deja sync`,
any other INSERT) indexes alike, and in the inserting transaction: the index
commits or rolls back with the rows. Since version 6 (SCHEMA_V6 below) ingest's
batches write both themselves, in the same transaction, and the triggers serve the
other writers; since version 8 (search_rules.py) both leave out what SQLite's index
does (escape codes, injected copies of a command's arguments). A changed text is indexed again; a
deleted record's passages go with it (ON DELETE CASCADE). An existing
database is backfilled by the upgrade. Version 1's `text_tsv` column and its
GIN index, which nothing reads any more, are dropped: every insert paid for them.
"""

from __future__ import annotations

from ..db import CJK_CHAR
from ..indexing import CONTEXT_CHARS, CONTEXT_KINDS, PASSAGE_CHARS, PASSAGE_FROM, PASSAGE_OVERLAP
from .fulltext import BATCH_SETTING

__all__ = ["SCHEMA_V4", "SCHEMA_V6"]

_CONTEXT_KINDS = ", ".join(f"'{k}'" for k in CONTEXT_KINDS)
# The bracket expression of ingest.db.CJK_CHAR with its real characters (PostgreSQL's
# regular expressions read \uXXXX too, but a literal range is what both engines share).
_CJK = CJK_CHAR.pattern

SCHEMA_V4 = f"""
CREATE TEXT SEARCH DICTIONARY deja_stem (TEMPLATE = snowball, Language = english);
CREATE TEXT SEARCH CONFIGURATION deja (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION deja ALTER MAPPING FOR
    asciiword, asciihword, hword_asciipart, word, hword, hword_part, numword, numhword,
    hword_numpart WITH deja_stem;

-- Text as SQLite's tokenizer (unicode61) cuts it: ASCII punctuation separates words
-- (PostgreSQL's parser would keep next.js, claude.md or a/b/c as one token, which a
-- query's words never match), and CJK characters are spaced apart (ingest.db.fts_text).
CREATE FUNCTION deja_words(t TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(regexp_replace(t, '[\\x21-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e]',
                                         ' ', 'g'), '({_CJK})', ' \\1 ', 'g')
$$;
-- A record's (or passage's) words at weight A, its context's at weight B.
CREATE FUNCTION deja_tsv(body TEXT, context TEXT) RETURNS TSVECTOR
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('deja', deja_words(body)), 'A')
        || setweight(to_tsvector('deja', deja_words(COALESCE(context, ''))), 'B')
$$;
CREATE FUNCTION deja_tsv_len(tsv TSVECTOR) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(SUM(cardinality(positions)), 0)::INTEGER FROM unnest(tsv)
$$;
-- The context of record `rid` of file `src`: the record before it, if it can be answered.
CREATE FUNCTION deja_context(src BIGINT, rid BIGINT) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p.kind IN ({_CONTEXT_KINDS}) THEN substr(p.text, 1, {CONTEXT_CHARS}) END
    FROM records p WHERE p.source_id = src AND p.id < rid ORDER BY p.id DESC LIMIT 1
$$;

-- ingest/indexing.py passage_spans: (start, end) of the passages of a long text.
CREATE FUNCTION deja_cut(t TEXT, lo INTEGER, hi INTEGER) RETURNS INTEGER
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    seg TEXT := substr(t, lo + 1, hi - lo);
    pat TEXT;
    n INTEGER;
    e INTEGER;
BEGIN
    n := strpos(reverse(seg), E'\\n');  -- the common case, without a regular expression
    IF n > 0 AND length(seg) - n + 1 > 0 THEN
        RETURN lo + length(seg) - n + 1;
    END IF;
    FOREACH pat IN ARRAY ARRAY[E'[.!?;:\\u3002\\uff01\\uff1f](?=\\\\s)|\\n', E'\\\\s'] LOOP
        n := regexp_count(seg, pat);
        IF n > 0 THEN
            e := regexp_instr(seg, pat, 1, n, 1) - 1;
            IF e > 0 THEN
                RETURN lo + e;
            END IF;
        END IF;
    END LOOP;
    RETURN hi;
END $$;
CREATE FUNCTION deja_next_start(t TEXT, lo INTEGER, hi INTEGER) RETURNS INTEGER
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    seg TEXT := substr(t, lo + 1, hi - lo);
    pat TEXT;
    e INTEGER;
BEGIN
    e := strpos(seg, E'\\n');
    IF e > 0 THEN
        RETURN lo + e;
    END IF;
    FOREACH pat IN ARRAY ARRAY[E'[.!?;:\\u3002\\uff01\\uff1f](?=\\\\s)|\\n', E'\\\\s'] LOOP
        e := regexp_instr(seg, pat, 1, 1, 1);
        IF e > 0 THEN
            RETURN lo + e - 1;
        END IF;
    END LOOP;
    RETURN hi;
END $$;
CREATE FUNCTION deja_passage_spans(t TEXT) RETURNS TABLE (pstart INTEGER, pend INTEGER)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n INTEGER := length(t);
    s INTEGER := 0;
    e INTEGER;
BEGIN
    IF n <= {PASSAGE_FROM} THEN
        RETURN;
    END IF;
    WHILE s < n LOOP
        IF n - s <= {PASSAGE_CHARS * 5 // 4} THEN
            e := n;
        ELSE
            e := deja_cut(t, s + {PASSAGE_CHARS // 2}, s + {PASSAGE_CHARS});
        END IF;
        pstart := s;
        pend := e;
        RETURN NEXT;
        EXIT WHEN e >= n;
        s := greatest(deja_next_start(t, e - {PASSAGE_OVERLAP}, e), s + 1);
        WHILE s < n AND substr(t, s + 1, 1) ~ '\\s' LOOP
            s := s + 1;
        END LOOP;
    END LOOP;
END $$;

ALTER TABLE records ADD COLUMN search_tsv TSVECTOR, ADD COLUMN search_len INTEGER;
CREATE TABLE passages (
    record_id BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    tsv TSVECTOR NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (record_id, start)
);

CREATE FUNCTION deja_index_record() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    ctx TEXT := CASE WHEN NEW.kind = 'memory' THEN NULL
                     ELSE deja_context(NEW.source_id, NEW.id) END;
BEGIN
    NEW.search_tsv := deja_tsv(NEW.text, ctx);
    NEW.search_len := deja_tsv_len(NEW.search_tsv);
    RETURN NEW;
END $$;
CREATE FUNCTION deja_index_passages() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM passages WHERE record_id = NEW.id;
    END IF;
    IF length(NEW.text) > {PASSAGE_FROM} THEN
        INSERT INTO passages (record_id, start, tsv, len)
        SELECT NEW.id, s.pstart, v.tsv, deja_tsv_len(v.tsv)
        FROM deja_passage_spans(NEW.text) s,
             LATERAL (SELECT deja_tsv(substr(NEW.text, s.pstart + 1, s.pend - s.pstart), NULL)
                      AS tsv) v;
    END IF;
    RETURN NULL;
END $$;

-- The backfill of the records already there, before the triggers and the indexes.
UPDATE records r SET (search_tsv, search_len) = (
    SELECT x.tsv, deja_tsv_len(x.tsv)
    FROM (SELECT deja_tsv(r.text, CASE WHEN r.kind = 'memory' THEN NULL
                                       ELSE deja_context(r.source_id, r.id) END) AS tsv) AS x);
INSERT INTO passages (record_id, start, tsv, len)
SELECT r.id, s.pstart, v.tsv, deja_tsv_len(v.tsv)
FROM records r, deja_passage_spans(r.text) s,
     LATERAL (SELECT deja_tsv(substr(r.text, s.pstart + 1, s.pend - s.pstart), NULL) AS tsv) v
WHERE length(r.text) > {PASSAGE_FROM};

CREATE TRIGGER records_index BEFORE INSERT OR UPDATE OF text ON records
    FOR EACH ROW EXECUTE FUNCTION deja_index_record();
CREATE TRIGGER records_passages AFTER INSERT ON records
    FOR EACH ROW WHEN (length(NEW.text) > {PASSAGE_FROM}) EXECUTE FUNCTION deja_index_passages();
CREATE TRIGGER records_passages_update AFTER UPDATE OF text ON records
    FOR EACH ROW EXECUTE FUNCTION deja_index_passages();
CREATE INDEX records_search ON records USING GIN (search_tsv);
CREATE INDEX passages_search ON passages USING GIN (tsv);
-- version 1's unstemmed column and its index: no ranker reads them any more, and every
-- insert paid for both.
DROP INDEX records_tsv;
ALTER TABLE records DROP COLUMN text_tsv;
UPDATE deja_schema SET version = 4 WHERE id = 1;
"""

# Version 6: ingest's batches write their records' index themselves (ingest/pg/fulltext.py:
# the context and the passages cut in Python, each tsvector once in SQL), which took
# the PostgreSQL CPU time of the CLI ingest of the shared corpus from 13.1 to 6.8 s (see
# README, "Team memory on PostgreSQL", for MB/s). The triggers stay for every other
# writer (`deja sync`, write_memory, any INSERT) and for a changed text, but no longer
# fire for what a batch writes: the records' for a row that comes with its tsvector, the
# passages' in a transaction that set deja.batch_indexes (fulltext.SET_BATCH_INDEXES).
# Nothing already indexed changes.
SCHEMA_V6 = f"""
DROP TRIGGER records_index ON records;
DROP TRIGGER records_passages ON records;
CREATE TRIGGER records_index BEFORE INSERT ON records
    FOR EACH ROW WHEN (NEW.search_tsv IS NULL) EXECUTE FUNCTION deja_index_record();
CREATE TRIGGER records_index_update BEFORE UPDATE OF text ON records
    FOR EACH ROW EXECUTE FUNCTION deja_index_record();
CREATE TRIGGER records_passages AFTER INSERT ON records
    FOR EACH ROW WHEN (length(NEW.text) > {PASSAGE_FROM}
                       AND current_setting('{BATCH_SETTING}', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION deja_index_passages();
UPDATE deja_schema SET version = 6 WHERE id = 1;
"""
