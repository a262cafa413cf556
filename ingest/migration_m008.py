"""Migration 8: what `deja stats` reads, without reading the records' text.

Why (measured, bench/stats_speed.py): every figure of `deja stats` was a scan
of `records`, and a row of `records` holds its text (up to 64 KB) before the
columns stats needs (`ts`, `model`, `meta`...), so reading `ts` or the usage
in `meta` of a long record walks its overflow pages. At about a million
records (3 GB) each scan cost 2 to 5 s, against a 10 s budget for all of them.
Message ids, request ids and usage were stored (in `records.meta`, JSON) but
not in a form one could count without that walk.

What it adds:
- `responses`: one row per model response, keyed by (message id, request id)
  as Claude Code's usage must be counted (FORMAT.md: the lines of one response
  repeat or grow its usage), holding the largest value of each usage field;
  a response whose lines have no message id is keyed by its line. The writer
  (ingest/derived.py) upserts it in the batch's transaction; this migration
  fills it from the records already stored, with the same rules, so an
  upgraded database counts exactly what a fresh ingest counts.
- three covering indexes: activity (time, session, kind, model), tool calls
  and their results (session, tool_use id, kind, name, error, time), and the
  calls by tool name (the most-edited files).

Fixed text like every migration (see ingest/migrations.py). A line whose
records were all blank (an assistant line holding only an empty thinking
block) gave no record, so its usage was never stored: neither a fresh ingest
nor this migration counts it; the other lines of the same response carry the
same or a larger usage, so totals lose nothing in practice.
"""

from __future__ import annotations

__all__ = ["M008_SCRIPT", "M008_RESPONSE_KEY"]

# The response a record belongs to, as m008 shipped (ingest/derived.py's
# RESPONSE_KEY_SQL must say the same: tests/test_stats.py checks it).
M008_RESPONSE_KEY = (
    "COALESCE(json_extract(r.meta, '$.message_id') || char(31) || "
    "COALESCE(json_extract(r.meta, '$.request_id'), ''), 'line:' || r.line_key)"
)

M008_SCRIPT = f"""
CREATE TABLE responses (
    key TEXT PRIMARY KEY,           -- message id, US, request id; or 'line:' + line key
    session_id TEXT,
    model TEXT,
    ts TEXT,                        -- the earliest of its lines
    input INTEGER NOT NULL DEFAULT 0,
    output INTEGER NOT NULL DEFAULT 0,
    cache_creation INTEGER NOT NULL DEFAULT 0,
    cache_read INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX responses_ts ON responses(ts);
INSERT INTO responses (key, session_id, model, ts, input, output, cache_creation, cache_read)
    SELECT k, MIN(session_id), MIN(model), MIN(ts), MAX(i), MAX(o), MAX(cc), MAX(cr) FROM (
        SELECT {M008_RESPONSE_KEY} AS k, r.session_id, r.model, r.ts,
            COALESCE(json_extract(r.meta, '$.usage.input_tokens'), 0) AS i,
            COALESCE(json_extract(r.meta, '$.usage.output_tokens'), 0) AS o,
            COALESCE(json_extract(r.meta, '$.usage.cache_creation_input_tokens'), 0) AS cc,
            COALESCE(json_extract(r.meta, '$.usage.cache_read_input_tokens'), 0) AS cr
        FROM records r
        WHERE r.role = 'assistant' AND r.meta LIKE '%"usage":%'
    ) GROUP BY k;
CREATE INDEX records_activity ON records(ts, session_id, kind, model);
CREATE INDEX records_calls ON records(session_id, tool_use_id, kind, tool_name, is_error, ts)
    WHERE tool_use_id IS NOT NULL;
CREATE INDEX records_tool_name ON records(tool_name) WHERE kind = 'tool_call';
"""
