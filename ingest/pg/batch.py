"""The SQL that writes one ingest batch into PostgreSQL, inside the caller's transaction.

The same steps as the SQLite writer (ingest/batch.py), in PostgreSQL's words:
the records (ON CONFLICT DO NOTHING on their unique key, so a line read again
adds nothing), the usage of the responses they belong to, the tool names of
results, the sessions and subagent runs, and last the file's cursor.
`PgStore.write_batch` runs it in ONE transaction: rows and cursor commit
together or not at all.

Shared rows (sessions, responses) are upserted in key order, which makes
deadlocks between two machines' batches rarer (PgStore.write_batch retries
the few left). The new records are the ones the INSERT returns, never "id above the largest
before": on a shared database another machine's rows arrive at the same time,
and identity values are not handed out in commit order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..batch import BACKFILL_KEYS, Batch, BatchResult, Cursor, backfill_keys
from ..indexing import EMBEDDABLE_KINDS, SKIP_KINDS, SKIP_LOOKBACK
from ..parse import AgentLink, Record, SessionInfo
from .fulltext import SET_BATCH_INDEXES, contexts, reindex, skips, tail, write_passages
from .text import clean, clean_json

if TYPE_CHECKING:
    import psycopg

__all__ = ["insert_batch"]

_EMBEDDABLE = frozenset(EMBEDDABLE_KINDS)
_SKIP_KINDS = frozenset(SKIP_KINDS)

# Each column with its type: the INSERT ... SELECT below gives its parameters no other.
_RECORD_COLUMNS = (
    ("machine", "text"), ("source_id", "bigint"), ("line_key", "text"), ("part", "integer"),
    ("uuid", "text"), ("parent_uuid", "text"), ("session_id", "text"), ("agent_id", "text"),
    ("kind", "text"), ("role", "text"), ("tool_name", "text"), ("tool_use_id", "text"),
    ("is_error", "smallint"), ("text", "text"), ("text_len", "integer"),
    ("truncated", "smallint"), ("ts", "text"), ("cwd", "text"), ("git_branch", "text"),
    ("model", "text"), ("is_sidechain", "smallint"), ("byte_offset", "bigint"),
    ("meta", "jsonb"), ("embed_state", "smallint"),
)
# A batch's records with their full-text index (schema v6, fulltext.py), in one
# statement: each column as an array, in file order (identity values are handed out in
# that order), each record's context and whether it is an injected copy (schema v8); the
# tsvector of its words and its context's computed once (`deja_tsv`), and its length,
# none for a copy. JSON goes as text (psycopg's lists of strings), cast row by row.
_COLUMN_NAMES = ", ".join(c for c, _ in _RECORD_COLUMNS)
_INSERT_RECORDS = (
    f"INSERT INTO records ({_COLUMN_NAMES}, search_tsv, search_len) "
    "SELECT " + ", ".join(f"u.{c}::jsonb" if t == "jsonb" else f"u.{c}"
                          for c, t in _RECORD_COLUMNS)
    + ", x.tsv, CASE WHEN NOT u.skip THEN deja_tsv_len(x.tsv) END FROM unnest("
    + ", ".join(f"%s::{'text' if t == 'jsonb' else t}[]" for _, t in _RECORD_COLUMNS)
    + f", %s::text[], %s::boolean[]) WITH ORDINALITY AS u({_COLUMN_NAMES}, ctx, skip, n), "
    "deja_tsv(CASE WHEN NOT u.skip THEN u.text END, u.ctx) AS x(tsv) ORDER BY u.n "
    "ON CONFLICT (source_id, line_key, part) DO NOTHING RETURNING id, line_key, part"
)
_TEXT = [c for c, _ in _RECORD_COLUMNS].index("text")

# Usage once per response, the largest value of each field (ingest/derived.py says why);
# LEAST and GREATEST skip NULLs as the SQLite writer's COALESCEs do. A usage field that
# is not a number counts 0 rather than failing the batch.
_TOKENS = ("CASE WHEN jsonb_typeof(r.meta->'usage'->'{0}') = 'number' "
           "THEN (r.meta->'usage'->>'{0}')::numeric::bigint ELSE 0 END")
_UPSERT_RESPONSES = f"""
INSERT INTO responses (key, session_id, model, ts, input, output, cache_creation, cache_read)
SELECT k, MIN(session_id), MIN(model), MIN(ts), MAX(i), MAX(o), MAX(cc), MAX(cr) FROM (
    SELECT COALESCE((r.meta->>'message_id') || chr(31) || COALESCE(r.meta->>'request_id', ''),
                    'line:' || r.line_key) AS k,
        r.session_id, r.model, r.ts,
        {_TOKENS.format('input_tokens')} AS i,
        {_TOKENS.format('output_tokens')} AS o,
        {_TOKENS.format('cache_creation_input_tokens')} AS cc,
        {_TOKENS.format('cache_read_input_tokens')} AS cr
    FROM records r
    WHERE r.id = ANY(%s) AND r.role = 'assistant' AND r.meta ? 'usage'
) AS usage GROUP BY k ORDER BY k
ON CONFLICT (key) DO UPDATE SET
    session_id = LEAST(responses.session_id, excluded.session_id),
    model = LEAST(responses.model, excluded.model),
    ts = LEAST(responses.ts, excluded.ts),
    input = GREATEST(responses.input, excluded.input),
    output = GREATEST(responses.output, excluded.output),
    cache_creation = GREATEST(responses.cache_creation, excluded.cache_creation),
    cache_read = GREATEST(responses.cache_read, excluded.cache_read)
"""

# Results name their tool only through the call's id: the call of the same session
# (an earlier line, maybe an earlier batch) gives it.
_NAME_RESULTS = """
UPDATE records r SET tool_name = (
    SELECT c.tool_name FROM records c
    WHERE c.tool_use_id = r.tool_use_id AND c.kind = 'tool_call'
      AND c.session_id IS NOT DISTINCT FROM r.session_id
    ORDER BY c.id LIMIT 1)
WHERE r.id = ANY(%s) AND r.kind = 'tool_result' AND r.tool_name IS NULL
  AND r.tool_use_id IS NOT NULL
"""

_UPSERT_SESSION = """
INSERT INTO sessions (session_id, project_dir, cwd, git_branch, first_ts, last_ts, version,
                      project_key, machine)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    project_dir = COALESCE(sessions.project_dir, excluded.project_dir),
    cwd = COALESCE(sessions.cwd, excluded.cwd),
    project_key = COALESCE(sessions.project_key, excluded.project_key),
    machine = COALESCE(sessions.machine, excluded.machine),
    git_branch = COALESCE(excluded.git_branch, sessions.git_branch),
    first_ts = LEAST(sessions.first_ts, excluded.first_ts),
    last_ts = GREATEST(sessions.last_ts, excluded.last_ts),
    version = COALESCE(excluded.version, sessions.version)
"""

_UPSERT_AGENT = """
INSERT INTO agent_runs (session_id, agent_id, source_id, layout, agent_type, description,
                        tool_use_id, is_aside)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id, agent_id) DO UPDATE SET
    source_id = COALESCE(excluded.source_id, agent_runs.source_id),
    layout = COALESCE(excluded.layout, agent_runs.layout),
    agent_type = COALESCE(agent_runs.agent_type, excluded.agent_type),
    description = COALESCE(excluded.description, agent_runs.description),
    tool_use_id = COALESCE(agent_runs.tool_use_id, excluded.tool_use_id),
    is_aside = GREATEST(agent_runs.is_aside, excluded.is_aside)
"""

_ADVANCE_CURSOR = """
UPDATE sources SET "offset" = %s, lines = %s, size = %s, mtime_ns = %s, dev = %s, ino = %s,
    head_len = %s, head_hash = %s, missing = 0, session_id = COALESCE(session_id, %s),
    resets = resets + %s, updated_at = now()
WHERE id = %s
"""


def _record_row(machine: str, source_id: int, r: Record) -> tuple[Any, ...]:
    return (
        machine, source_id, clean(r.line_key), r.part, clean(r.uuid), clean(r.parent_uuid),
        clean(r.session_id), clean(r.agent_id), r.kind, r.role, clean(r.tool_name),
        clean(r.tool_use_id), None if r.is_error is None else int(r.is_error),
        clean(r.text), r.text_len, int(r.truncated), clean(r.ts), clean(r.cwd),
        clean(r.git_branch), clean(r.model), int(r.is_sidechain), r.byte_offset,
        clean_json(r.meta), 0 if r.kind in _EMBEDDABLE else 2,
    )


async def insert_batch(conn: psycopg.AsyncConnection, machine: str, batch: Batch) -> BatchResult:
    """Write `batch`'s rows and then its cursor, inside the caller's transaction."""
    result = BatchResult()
    if batch.records:
        await _insert_records(conn, machine, batch, result)
    if batch.sessions:
        async with conn.cursor() as cur:
            await cur.executemany(_UPSERT_SESSION, [
                (clean(sid), batch.project_dir, clean(s.cwd), clean(s.git_branch),
                 clean(s.first_ts), clean(s.last_ts), clean(s.version), s.project_key, machine)
                for sid, s in sorted(batch.sessions.items())
            ])
            # Older sessions of the same folders (schema v5, as ingest/batch.py on SQLite).
            await cur.executemany(BACKFILL_KEYS.replace("?", "%s"), [
                (key, clean(cwd)) for key, cwd in sorted(backfill_keys(batch))])
    for _, info in sorted(batch.titles.items()):
        await _name_session(conn, info, batch.project_dir, machine)
    for link in batch.agent_links:
        await _link_agent(conn, batch.source_id, link)
    if batch.cursor is not None:
        await _advance_cursor(conn, batch.source_id, batch.cursor)
    return result


async def _insert_records(conn: psycopg.AsyncConnection, machine: str, batch: Batch,
                          result: BatchResult) -> None:
    """The records with their full-text index (fulltext.py), the usage of their responses,
    their results' tool names; counted."""
    rows = [_record_row(machine, batch.source_id, r) for r in batch.records]
    texts = [row[_TEXT] for row in rows]
    kinds = [(r.kind, t) for r, t in zip(batch.records, texts)]
    before = await tail(conn, batch.source_id)
    ctx = contexts(before.context, kinds)
    skipped = skips(before.commands, kinds)
    await conn.execute(SET_BATCH_INDEXES)
    cur = await conn.execute(_INSERT_RECORDS, [list(col) for col in zip(*rows)] + [ctx, skipped])
    first: dict[tuple[str, int], int] = {}
    for i, row in enumerate(rows):
        first.setdefault((row[2], row[3]), i)
    # (id, index in the batch) of each new record, in file order.
    new = sorted(((int(rid), first[(key, part)]) for rid, key, part in await cur.fetchall()),
                 key=lambda x: x[1])
    if not new:
        return
    # A line already stored (read again) just before a new record gave it the wrong
    # context, or the wrong commands to copy: it takes what the database gives it (the
    # records before it by id).
    stored = {i for _, i in new}
    again = await reindex(conn, [rid for rid, i in new if _stale(batch.records[i].kind, i, stored)])
    await write_passages(conn, [(rid, texts[i]) for rid, i in new
                                if not again.get(rid, skipped[i])])
    ids = [rid for rid, _ in new]
    await conn.execute(_UPSERT_RESPONSES, (ids,))
    await conn.execute(_NAME_RESULTS, (ids,))
    for _, i in new:
        kind = batch.records[i].kind
        result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
    result.new_records = len(new)


def _stale(kind: str, i: int, new: set[int]) -> bool:
    """Whether the batch's records before record `i` that its index reads (the one before
    it; the SKIP_LOOKBACK before a possible copy) are not all new: a memory reads none."""
    if kind == "memory":
        return False
    back = SKIP_LOOKBACK if kind in _SKIP_KINDS else 1
    return any(j not in new for j in range(max(0, i - back), i))


async def _name_session(conn: psycopg.AsyncConnection, info: SessionInfo,
                        project_dir: str | None, machine: str) -> None:
    """A session's title and agent name, the session row created when it has none yet."""
    session_id = clean(info.session_id)
    await conn.execute(
        "INSERT INTO sessions (session_id, project_dir, machine) VALUES (%s, %s, %s) "
        "ON CONFLICT (session_id) DO NOTHING", (session_id, project_dir, machine))
    if info.title:
        await conn.execute("UPDATE sessions SET title = %s, title_kind = %s WHERE session_id = %s",
                           (clean(info.title), info.title_kind, session_id))
    if info.agent_name:
        await conn.execute("UPDATE sessions SET agent_name = %s WHERE session_id = %s",
                           (clean(info.agent_name), session_id))


async def _link_agent(conn: psycopg.AsyncConnection, source_id: int, link: AgentLink) -> None:
    """A subagent run; its spawning call found by the prompt's hash when the link lacks its id."""
    tool_use_id = clean(link.tool_use_id)
    if tool_use_id is None and link.spawn_prompt_sha:
        cur = await conn.execute(
            "SELECT tool_use_id FROM records WHERE source_id = %s AND kind = 'tool_call' "
            "AND tool_name IN ('Task', 'Agent') AND meta->>'prompt_sha1' = %s "
            "ORDER BY id DESC LIMIT 1", (source_id, link.spawn_prompt_sha))
        row = await cur.fetchone()
        tool_use_id = row[0] if row else None
    await conn.execute(_UPSERT_AGENT, (
        clean(link.session_id), clean(link.agent_id), source_id if link.from_source else None,
        link.layout, clean(link.agent_type), clean(link.description), tool_use_id,
        int(link.is_aside),
    ))


async def _advance_cursor(conn: psycopg.AsyncConnection, source_id: int, c: Cursor) -> None:
    """The file's cursor: where the next batch starts reading (and what the file looked like)."""
    await conn.execute(_ADVANCE_CURSOR, (
        c.offset, c.lines, c.size, c.mtime_ns, c.dev, c.ino, c.head_len, c.head_hash,
        clean(c.session_id), int(c.reset), source_id))
