"""Schema version 8: SQLite's two rules of what the keyword index holds, on PostgreSQL.

Why: up to version 7 PostgreSQL indexed two kinds of text SQLite leaves out
(ingest/db.py `fts_text`, ingest/indexing.py `FTS_SKIP_SQL`, migration m007):

- terminal escape codes. Colored tool output (test runners, compilers) is common
  in transcripts: '\\x1b[31mERROR\\x1b[0m' gave the words '31merror' and '0m', so
  a search for ERROR missed it. `deja_words`, which cuts every text the index
  holds (a record's own, its context, its passages, and the query's), now first
  takes them out with `ANSI_RE`, the regular expression of ingest/db.py `_ANSI`
  in PostgreSQL's words (tests/test_pg_fulltext.py compares the two on every
  shape of sequence). Only a text with an ESC or CSI character pays for it (two
  `strpos`). The control characters clean_text makes spaces already separate
  words in PostgreSQL's parser.
- a `system`, `meta` or `attachment` record that copies the arguments of the
  slash command just before it (a skill's expansion ending "ARGUMENTS: ..."): it
  ranked above the command for the same words. It now gets no index at all
  (search_tsv and search_len NULL, no passages), as on SQLite it gets no
  full-text row; it keeps its text. "Just before" is the SKIP_LOOKBACK records
  before it in its file (SQLite says it by rowid arithmetic, which is the same
  there: one writer inserts a file's records with consecutive ids).
  `deja_command_args` is ingest/indexing.py `command_args` (SQLite's instr and
  substr) in SQL, `deja_skipped` the rule, `deja_record_tsv` a record's whole
  index as every writer computes it.

The same version makes the passages the trigger cuts (PL/pgSQL: `deja_cut`,
`deja_next_start`, `deja_passage_spans`) end where ingest/indexing.py `passage_spans`
ends them: PostgreSQL's `\\s` depends on the locale and, in C.UTF-8, misses eight of
Python's whitespace characters (\\x1c-\\x1f, \\x85, no-break spaces), which binary
tool output holds; `SPACE_RE` is Python's set, spelled out. A record imported or
synced could get other passages than the same record ingested.

Both paths keep to the rules: ingest's batches (ingest/pg/fulltext.py) compute
the copies in Python and send their rows without a tsvector, and the triggers
(the other writers: `deja sync`, import, memories, a changed text) call
`deja_record_tsv`. So that a batch's copy stays unindexed, the records' trigger no
longer fires in a batch's transaction (it never had anything to do there: the
batch sends every other row's tsvector).

The upgrade indexes again what the rules change: the records with an escape
code, the record after each (whose context it is), and the copies; and the
passages of the first (cut again) and of the copies (dropped); the passages of the
long records with one of the whitespace characters `\\s` may miss are cut again.
Fixed text like
every version: never edit it once shipped.
"""

from __future__ import annotations

from ..db import CJK_CHAR
from ..indexing import (
    COMMAND_KINDS,
    CONTEXT_KINDS,
    PASSAGE_CHARS,
    PASSAGE_FROM,
    PASSAGE_OVERLAP,
    SKIP_KINDS,
    SKIP_LOOKBACK,
    SKIP_MIN_ARGS,
)
from .fulltext import BATCH_SETTING

__all__ = ["SCHEMA_V8", "ANSI_RE", "SPACE_RE"]

# ingest/db.py _ANSI as a PostgreSQL regular expression: CSI (colours, cursor moves,
# modes), OSC (titles, hyperlinks), the other ESC sequences. Its alternatives never
# match at one place with different lengths unless the first is the longer, so
# PostgreSQL's longest match takes what Python's first match takes.
ANSI_RE = (r"(?:\u001b\[|\u009b)[0-?]*[ -/]*[@-~]"
           r"|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)"
           r"|\u001b[ -/]*[0-~]")
assert "'" not in ANSI_RE
# The characters Python's str.isspace() and re's \s take as whitespace (ingest/indexing.py's
# passage cutting), whatever the server's locale.
SPACE_RE = (r"[\t\n\v\f\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
            r"\u202f\u205f\u3000]")
# Those a locale's \s may miss (all but ASCII's six).
_ODD_SPACE = (r"[\u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
              r"\u3000]")
# ingest/indexing.py _SENTENCE_END, then _SPACE.
_ENDS = f"ARRAY['[.!?;:\\u3002\\uff01\\uff1f](?={SPACE_RE})|\\n', '{SPACE_RE}']"

_LIST = ", ".join
_SKIP = _LIST(f"'{k}'" for k in SKIP_KINDS)
_COMMANDS = _LIST(f"'{k}'" for k in COMMAND_KINDS)
_CONTEXT = _LIST(f"'{k}'" for k in CONTEXT_KINDS)
_CJK = CJK_CHAR.pattern
_ESCAPED = "(strpos({t}, chr(27)) > 0 OR strpos({t}, chr(155)) > 0)"

SCHEMA_V8 = f"""
-- Version 4's word cutting, escape codes out first (ingest.db.fts_text).
CREATE OR REPLACE FUNCTION deja_words(t TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(regexp_replace(
        CASE WHEN {_ESCAPED.format(t='t')} THEN regexp_replace(t, '{ANSI_RE}', '', 'g')
             ELSE t END,
        '[\\x21-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e]', ' ', 'g'), '({_CJK})', ' \\1 ', 'g')
$$;

-- ingest/indexing.py command_args: FTS_SKIP_SQL's `args`, as SQLite's instr and substr
-- give them; NULL without </command-args>.
CREATE FUNCTION deja_command_args(t TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN c.e > 0 THEN btrim(substr(t, least(c.s, c.e), abs(c.e - c.s)), ' ') END
    FROM (SELECT strpos(t, '</command-args>') AS e, strpos(t, '<command-args>') + 14 AS s) c
$$;
-- Whether record `rid` (kind k, text t) of file `src` copies the arguments of a command
-- among the {SKIP_LOOKBACK} records before it (ingest/indexing.py FTS_SKIP_SQL).
CREATE FUNCTION deja_skipped(src BIGINT, rid BIGINT, k TEXT, t TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT k IN ({_SKIP}) AND EXISTS (
        SELECT 1 FROM (SELECT p.kind, p.text FROM records p
                       WHERE p.source_id = src AND p.id < rid
                       ORDER BY p.id DESC LIMIT {SKIP_LOOKBACK}) p,
                      deja_command_args(p.text) AS a(args)
        WHERE p.kind IN ({_COMMANDS}) AND length(a.args) >= {SKIP_MIN_ARGS}
          AND strpos(t, a.args) > 0)
$$;
-- A record's index: its words and its context's, none for a copy.
CREATE FUNCTION deja_record_tsv(src BIGINT, rid BIGINT, k TEXT, t TEXT) RETURNS TSVECTOR
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT deja_skipped(src, rid, k, t) THEN
        deja_tsv(t, CASE WHEN k = 'memory' THEN NULL ELSE deja_context(src, rid) END) END
$$;

CREATE OR REPLACE FUNCTION deja_index_record() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_tsv := deja_record_tsv(NEW.source_id, NEW.id, NEW.kind, NEW.text);
    NEW.search_len := CASE WHEN NEW.search_tsv IS NOT NULL THEN deja_tsv_len(NEW.search_tsv) END;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION deja_index_passages() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM passages WHERE record_id = NEW.id;
    END IF;
    IF NEW.search_tsv IS NOT NULL AND length(NEW.text) > {PASSAGE_FROM} THEN
        INSERT INTO passages (record_id, start, tsv, len)
        SELECT NEW.id, s.pstart, v.tsv, deja_tsv_len(v.tsv)
        FROM deja_passage_spans(NEW.text) s,
             LATERAL (SELECT deja_tsv(substr(NEW.text, s.pstart + 1, s.pend - s.pstart), NULL)
                      AS tsv) v;
    END IF;
    RETURN NULL;
END $$;
-- Version 4's passage cutting, with Python's whitespace (SPACE_RE) for the locale's \\s.
CREATE OR REPLACE FUNCTION deja_cut(t TEXT, lo INTEGER, hi INTEGER) RETURNS INTEGER
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
    FOREACH pat IN ARRAY {_ENDS} LOOP
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
CREATE OR REPLACE FUNCTION deja_next_start(t TEXT, lo INTEGER, hi INTEGER) RETURNS INTEGER
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
    FOREACH pat IN ARRAY {_ENDS} LOOP
        e := regexp_instr(seg, pat, 1, 1, 1);
        IF e > 0 THEN
            RETURN lo + e - 1;
        END IF;
    END LOOP;
    RETURN hi;
END $$;
CREATE OR REPLACE FUNCTION deja_passage_spans(t TEXT) RETURNS TABLE (pstart INTEGER, pend INTEGER)
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
        WHILE s < n AND substr(t, s + 1, 1) ~ '{SPACE_RE}' LOOP
            s := s + 1;
        END LOOP;
    END LOOP;
END $$;

DROP TRIGGER records_index ON records;
CREATE TRIGGER records_index BEFORE INSERT ON records
    FOR EACH ROW WHEN (NEW.search_tsv IS NULL
                       AND current_setting('{BATCH_SETTING}', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION deja_index_record();

-- The records already there: the passages of the escaped records, of the copies and of
-- the long records with an odd space go, then the escaped ones, the copies and each
-- record after an escaped one are indexed again, and the passages of the first and the
-- last that are not copies are cut again.
DELETE FROM passages p USING records r
WHERE p.record_id = r.id AND ({_ESCAPED.format(t='r.text')} OR r.text ~ '{_ODD_SPACE}'
                              OR deja_skipped(r.source_id, r.id, r.kind, r.text));
WITH escaped AS (
    SELECT id, source_id, kind FROM records r WHERE {_ESCAPED.format(t='r.text')}
), todo AS (
    SELECT id FROM escaped
    UNION SELECT n.id FROM escaped e,
        LATERAL (SELECT n.id FROM records n WHERE n.source_id = e.source_id AND n.id > e.id
                 ORDER BY n.id LIMIT 1) n
        WHERE e.kind IN ({_CONTEXT})
    UNION SELECT r.id FROM records r
        WHERE r.kind IN ({_SKIP}) AND deja_skipped(r.source_id, r.id, r.kind, r.text)
), indexed AS (
    UPDATE records r SET (search_tsv, search_len) = (
        SELECT x.tsv, CASE WHEN x.tsv IS NOT NULL THEN deja_tsv_len(x.tsv) END
        FROM deja_record_tsv(r.source_id, r.id, r.kind, r.text) AS x(tsv))
    WHERE r.id IN (SELECT id FROM todo)
    RETURNING r.id, r.text, r.search_tsv IS NOT NULL AS kept
)
INSERT INTO passages (record_id, start, tsv, len)
SELECT i.id, s.pstart, v.tsv, deja_tsv_len(v.tsv)
FROM indexed i, deja_passage_spans(i.text) s,
     LATERAL (SELECT deja_tsv(substr(i.text, s.pstart + 1, s.pend - s.pstart), NULL) AS tsv) v
WHERE i.kept AND length(i.text) > {PASSAGE_FROM} AND {_ESCAPED.format(t='i.text')};
INSERT INTO passages (record_id, start, tsv, len)
SELECT r.id, s.pstart, v.tsv, deja_tsv_len(v.tsv)
FROM records r, deja_passage_spans(r.text) s,
     LATERAL (SELECT deja_tsv(substr(r.text, s.pstart + 1, s.pend - s.pstart), NULL) AS tsv) v
WHERE length(r.text) > {PASSAGE_FROM} AND r.search_tsv IS NOT NULL
  AND r.text ~ '{_ODD_SPACE}' AND NOT {_ESCAPED.format(t='r.text')};
UPDATE deja_schema SET version = 8 WHERE id = 1;
"""
