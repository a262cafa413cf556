"""The SQL of `deja sync`: what it reads of the local SQLite file and writes to PostgreSQL.

Its own module so sync.py reads as the procedure. Every PostgreSQL statement
here is keyed like the ingest path's (ingest/pg/batch.py): a source by
(machine, path), a record by (source, line key, part), a chunk by (record,
seq), a session, subagent run or response by its own key. Inserts are
ON CONFLICT DO NOTHING (or an upsert that only fills in or widens), so a
statement run twice, or after a crash, adds nothing the first run added.
`RETURNING (xmax = 0)` tells a row inserted now from one already there.
"""

from __future__ import annotations

__all__ = [
    "LOCAL_SOURCES", "LOCAL_UNSOURCED", "LOCAL_RECORD_COLUMNS", "local_records_sql",
    "LOCAL_CHUNKS", "LOCAL_SESSIONS", "LOCAL_AGENT_RUNS", "LOCAL_RESPONSES", "LOCAL_MODEL",
    "PG_ENSURE_SOURCE", "PG_SOURCE", "PG_ADVANCE_CURSOR", "PG_INSERT_RECORD", "PG_INSERT_CHUNK",
    "PG_UPSERT_SESSION", "PG_UPSERT_AGENT", "PG_UPSERT_RESPONSE", "PG_META_IF_NEWER",
    "UNSOURCED_PATH",
]

# Local records whose source_id is NULL (the first schema's explicit memories): on
# PostgreSQL they belong to this pseudo-source, so their unique key holds.
UNSOURCED_PATH = b"deja:memories/"

# The cursor is read before the source's records (sync.py says why).
LOCAL_SOURCES = """
SELECT id, path, display_path, project_dir, layout, session_hint, session_id, agent_id,
       dev, ino, size, mtime_ns, "offset", lines, head_len, head_hash, missing, resets
FROM sources ORDER BY id
"""
LOCAL_UNSOURCED = "SELECT EXISTS (SELECT 1 FROM records WHERE source_id IS NULL)"

LOCAL_RECORD_COLUMNS = (
    "line_key", "part", "uuid", "parent_uuid", "session_id", "agent_id", "kind", "role",
    "tool_name", "tool_use_id", "is_error", "text", "text_len", "truncated", "ts", "cwd",
    "git_branch", "model", "is_sidechain", "byte_offset", "meta", "embed_state",
)


def local_records_sql(unsourced: bool) -> str:
    """A page of one source's records (or of the records without one), in id order."""
    where = "source_id IS NULL" if unsourced else "source_id = ?"
    return (f"SELECT id, {', '.join(LOCAL_RECORD_COLUMNS)} FROM records "
            f"WHERE {where} AND id > ? ORDER BY id LIMIT ?")


# int8 vectors of the chunks of some records (ingest/quantize.py's form).
LOCAL_CHUNKS = """
SELECT c.record_id, c.seq, c.char_start, c.char_end, v.vec
FROM chunks c JOIN chunk_vectors v ON v.chunk_id = c.id
WHERE c.record_id IN ({marks}) ORDER BY c.record_id, c.seq
"""
LOCAL_SESSIONS = """
SELECT session_id, project_dir, cwd, git_branch, title, title_kind, agent_name, first_ts,
       last_ts, version, project_key
FROM sessions WHERE session_id > ? ORDER BY session_id LIMIT ?
"""
LOCAL_AGENT_RUNS = """
SELECT session_id, agent_id, source_id, layout, agent_type, description, tool_use_id, is_aside
FROM agent_runs WHERE (session_id, agent_id) > (?, ?) ORDER BY session_id, agent_id LIMIT ?
"""
LOCAL_RESPONSES = """
SELECT key, session_id, model, ts, input, output, cache_creation, cache_read
FROM responses WHERE key > ? ORDER BY key LIMIT ?
"""
LOCAL_MODEL = "SELECT model_id, dim FROM embedding_model WHERE id = 1"

# A source of this machine, its cursor at 0 as a new file's (add_sources does the same);
# the cursor is set by PG_ADVANCE_CURSOR with the source's last records.
PG_ENSURE_SOURCE = """
INSERT INTO sources (machine, path, display_path, project_dir, layout, session_hint,
                     session_id, agent_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (machine, path) DO NOTHING RETURNING id
"""
PG_SOURCE = 'SELECT id, "offset" FROM sources WHERE machine = %s AND path = %s'

# The local cursor, where it is ahead of the one already there (a file this machine had
# already ingested into PostgreSQL further keeps its cursor).
PG_ADVANCE_CURSOR = """
UPDATE sources SET "offset" = %s, lines = %s, size = %s, mtime_ns = %s, dev = %s, ino = %s,
    head_len = %s, head_hash = %s, missing = %s, resets = GREATEST(resets, %s),
    session_id = COALESCE(session_id, %s), updated_at = now()
WHERE id = %s AND "offset" < %s
"""

_RECORD_COLUMNS = ("machine", "source_id", *LOCAL_RECORD_COLUMNS)
PG_INSERT_RECORD = (
    f"INSERT INTO records ({', '.join(_RECORD_COLUMNS)}) "
    f"VALUES ({', '.join('%s' for _ in _RECORD_COLUMNS)}) "
    "ON CONFLICT (source_id, line_key, part) DO NOTHING RETURNING id"
)
PG_INSERT_CHUNK = """
INSERT INTO chunks (record_id, seq, char_start, char_end, vec) VALUES (%s, %s, %s, %s, %s::vector)
ON CONFLICT (record_id, seq) DO NOTHING
"""

# The same merge as the ingest path's upsert (ingest/pg/batch.py): fill what is empty,
# widen the time span; the local title and branch are the latest this machine saw. The
# project key (the git remote, found by the local ingest) and the machine (the syncing one,
# the last value) as the ingest path fills them.
PG_UPSERT_SESSION = """
INSERT INTO sessions (session_id, project_dir, cwd, git_branch, title, title_kind, agent_name,
                      first_ts, last_ts, version, project_key, machine)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    project_dir = COALESCE(sessions.project_dir, excluded.project_dir),
    cwd = COALESCE(sessions.cwd, excluded.cwd),
    project_key = COALESCE(sessions.project_key, excluded.project_key),
    machine = COALESCE(sessions.machine, excluded.machine),
    git_branch = COALESCE(excluded.git_branch, sessions.git_branch),
    title = COALESCE(excluded.title, sessions.title),
    title_kind = CASE WHEN excluded.title IS NULL THEN sessions.title_kind
                      ELSE excluded.title_kind END,
    agent_name = COALESCE(excluded.agent_name, sessions.agent_name),
    first_ts = LEAST(sessions.first_ts, excluded.first_ts),
    last_ts = GREATEST(sessions.last_ts, excluded.last_ts),
    version = COALESCE(excluded.version, sessions.version)
RETURNING (xmax = 0)
"""
PG_UPSERT_AGENT = """
INSERT INTO agent_runs (session_id, agent_id, source_id, layout, agent_type, description,
                        tool_use_id, is_aside)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id, agent_id) DO UPDATE SET
    source_id = COALESCE(agent_runs.source_id, excluded.source_id),
    layout = COALESCE(agent_runs.layout, excluded.layout),
    agent_type = COALESCE(agent_runs.agent_type, excluded.agent_type),
    description = COALESCE(agent_runs.description, excluded.description),
    tool_use_id = COALESCE(agent_runs.tool_use_id, excluded.tool_use_id),
    is_aside = GREATEST(agent_runs.is_aside, excluded.is_aside)
RETURNING (xmax = 0)
"""
# Usage counted once per response, the largest value of each field (as the ingest path).
PG_UPSERT_RESPONSE = """
INSERT INTO responses (key, session_id, model, ts, input, output, cache_creation, cache_read)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET
    session_id = LEAST(responses.session_id, excluded.session_id),
    model = LEAST(responses.model, excluded.model),
    ts = LEAST(responses.ts, excluded.ts),
    input = GREATEST(responses.input, excluded.input),
    output = GREATEST(responses.output, excluded.output),
    cache_creation = GREATEST(responses.cache_creation, excluded.cache_creation),
    cache_read = GREATEST(responses.cache_read, excluded.cache_read)
RETURNING (xmax = 0)
"""
# A time stamp of meta (ISO 8601, so text order is time order), kept if later.
PG_META_IF_NEWER = """
INSERT INTO meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, excluded.value)
"""
