"""What every writer of records adds in the same transaction: the full-text
index (and passages) of the new records, and the usage of the responses they
belong to.

The batch writer (batch.py), memories.py and the importer (mcp_server/exchange)
each insert records, then call `index_new_records` and `update_responses` with
the largest record id from before their inserts, inside their transaction: the
derived rows commit, or roll back, with the records.
"""

from __future__ import annotations

import aiosqlite

from .indexing import FTS_CONTEXT_SQL, FTS_SKIP_SQL, PASSAGES_SQL

__all__ = ["index_new_records", "update_responses", "RESPONSE_KEY_SQL"]

# The response (message id, request id) a record belongs to, for `responses`
# (migration m008 froze the same expression: tests/test_stats.py checks it).
RESPONSE_KEY_SQL = (
    "COALESCE(json_extract(r.meta, '$.message_id') || char(31) || "
    "COALESCE(json_extract(r.meta, '$.request_id'), ''), 'line:' || r.line_key)"
)

# Usage once per response, the largest value of each field: the lines of one
# response repeat it (newer Claude Code) or grow it (older), in this batch or
# across batches and files (FORMAT.md). MIN() of two values is NULL when one
# is, hence the COALESCEs.
_UPSERT_RESPONSES = f"""
INSERT INTO responses (key, session_id, model, ts, input, output, cache_creation, cache_read)
SELECT k, MIN(session_id), MIN(model), MIN(ts), MAX(i), MAX(o), MAX(cc), MAX(cr) FROM (
    SELECT {RESPONSE_KEY_SQL} AS k, r.session_id, r.model, r.ts,
        COALESCE(json_extract(r.meta, '$.usage.input_tokens'), 0) AS i,
        COALESCE(json_extract(r.meta, '$.usage.output_tokens'), 0) AS o,
        COALESCE(json_extract(r.meta, '$.usage.cache_creation_input_tokens'), 0) AS cc,
        COALESCE(json_extract(r.meta, '$.usage.cache_read_input_tokens'), 0) AS cr
    FROM records r
    WHERE r.id > ? AND r.role = 'assistant' AND r.meta LIKE '%"usage":%'
) GROUP BY k
ON CONFLICT (key) DO UPDATE SET
    session_id = COALESCE(MIN(responses.session_id, excluded.session_id), responses.session_id,
                          excluded.session_id),
    model = COALESCE(MIN(responses.model, excluded.model), responses.model, excluded.model),
    ts = COALESCE(MIN(responses.ts, excluded.ts), responses.ts, excluded.ts),
    input = MAX(responses.input, excluded.input),
    output = MAX(responses.output, excluded.output),
    cache_creation = MAX(responses.cache_creation, excluded.cache_creation),
    cache_read = MAX(responses.cache_read, excluded.cache_read)
"""


async def update_responses(conn: aiosqlite.Connection, after_id: int) -> None:
    """Count the usage of records with id > after_id into `responses` (inside the writer's
    transaction): every writer of records calls it, as it calls index_new_records."""
    await conn.execute(_UPSERT_RESPONSES, (after_id,))


async def index_new_records(conn: aiosqlite.Connection, after_id: int) -> None:
    """Add records with id > after_id to the full-text index, in one statement.

    Inside the writer's transaction; one INSERT ... SELECT costs half what a
    per-row trigger does (migration m003). Injected copies of a command's
    arguments get no rows; records longer than PASSAGE_FROM also get passages.
    """
    await conn.execute(
        "INSERT INTO records_fts (rowid, text, context) "
        f"SELECT r.id, deja_fts_text(r.text), {FTS_CONTEXT_SQL} FROM records r "
        f"WHERE r.id > ? AND NOT {FTS_SKIP_SQL}",
        (after_id,),
    )
    # Long records also as passages (ingest/indexing.py, migration m007).
    await conn.execute(PASSAGES_SQL.format(where="r.id > ?"), (after_id,))
