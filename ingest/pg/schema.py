"""The PostgreSQL tables, as fixed SQL text, and the checks made at open.

Version 1 mirrors what the SQLite batch writes (ingest/migrations.py up to
m009: sources with their cursors, records, sessions, agent_runs, responses,
meta), plus what sharing needs:

- `machine` on sources and records (DEJA_MACHINE, else the host name).
  Sources are unique per (machine, path): two machines' identical paths are
  two files. Records stay unique per (source, line key, part), as on SQLite,
  so a re-read never duplicates.
- `text_tsv`, a generated tsvector over the text (`simple` configuration)
  with a GIN index, for the full-text search of the next part.
- the `vector` extension (pgvector), created if the role may and checked at
  every open, so a database without it is refused with a clear message, not
  at the first embedding.

Version 2 adds the vector side (ingest/pg/vectors.py): `embedding_model` (the
one model whose vectors the database holds, as on SQLite) and `chunks`, the
windows of a record (ingest/vectors.py `windows_for`) with their float
vector as pgvector's `vector(384)` (all-MiniLM-L6-v2's size; another size is
refused). No approximate index: an exact scan measured fast enough at these
sizes and never misses a filtered hit (mcp_server/search/pg/vector.py). A
version 1 database is upgraded at open.

Version 3 adds `json_extract(jsonb, text)`, SQLite's function for the '$.key'
paths, so the read queries of history, checkpoints and orientation run
unchanged on both engines (ingest/pg/sqlconn.py).

Version 4 adds the full-text index the keyword ranker reads (stemmed, with
each record's context, and the passages of long records) and drops version
1's unstemmed `text_tsv`: see ingest/pg/search_schema.py.

Version 5 adds the sessions' `project_key` (their git remote, ingest/gitremote.py)
and `machine`: see SCHEMA_V5.

Version 6 has ingest's batches write their records' full-text index themselves, the
triggers only for the other writers: see ingest/pg/search_schema.py SCHEMA_V6.

Version 7 adds the multilingual vectors (the optional extra) and each record's
mark of the multilingual pass: see ingest/pg/ml_schema.py.

Version 8 keeps SQLite's rules of what the keyword index holds (escape codes out, no
injected copy of a command's arguments): see ingest/pg/search_rules.py.

`prepare` runs under a transaction-level advisory lock, so two machines
opening a new database at once create the tables once. A database of a
newer version is refused (SchemaTooNew). Never edit version 1 once shipped:
add the next version's statements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import PostgresUrl
from ..errors import DatabaseError, SchemaTooNew
from .ml_schema import SCHEMA_V7
from .search_rules import SCHEMA_V8
from .search_schema import SCHEMA_V4, SCHEMA_V6

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "SCHEMA_V1", "SCHEMA_V2", "SCHEMA_V3", "SCHEMA_V4", "SCHEMA_V5",
           "SCHEMA_V6", "SCHEMA_V7", "SCHEMA_V8",
           "VECTOR_DIM", "prepare"]

SCHEMA_VERSION = 8
# The dimension of the chunks' vector column (schema v2).
VECTOR_DIM = 384
# pg_advisory_xact_lock key of schema creation: "deja" and 1, as a number.
_SCHEMA_LOCK = 0x64656A61_00000001

SCHEMA_V1 = """
CREATE TABLE deja_schema (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE sources (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine TEXT NOT NULL,              -- DEJA_MACHINE of the machine the file is on
    path BYTEA NOT NULL,                -- os.fsencode(path): names need not be UTF-8
    display_path TEXT NOT NULL,
    project_dir TEXT NOT NULL,
    layout TEXT NOT NULL,
    session_hint TEXT,
    session_id TEXT,
    agent_id TEXT,
    dev BIGINT,
    ino BIGINT,
    size BIGINT NOT NULL DEFAULT 0,
    mtime_ns BIGINT NOT NULL DEFAULT 0,
    "offset" BIGINT NOT NULL DEFAULT 0, -- byte after the last complete line read
    lines BIGINT NOT NULL DEFAULT 0,
    head_len BIGINT NOT NULL DEFAULT 0,
    head_hash TEXT,
    missing SMALLINT NOT NULL DEFAULT 0,
    resets INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ,
    UNIQUE (machine, path)
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    project_dir TEXT,
    cwd TEXT,
    git_branch TEXT,
    title TEXT,
    title_kind TEXT,
    agent_name TEXT,
    first_ts TEXT,
    last_ts TEXT,
    version TEXT
);
CREATE TABLE agent_runs (
    session_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    source_id BIGINT REFERENCES sources(id),
    layout TEXT,
    agent_type TEXT,
    description TEXT,
    tool_use_id TEXT,
    is_aside SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, agent_id)
);
CREATE TABLE records (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine TEXT NOT NULL,
    source_id BIGINT REFERENCES sources(id),
    line_key TEXT NOT NULL,
    part INTEGER NOT NULL,
    uuid TEXT,
    parent_uuid TEXT,
    session_id TEXT,
    agent_id TEXT,
    kind TEXT NOT NULL,
    role TEXT,
    tool_name TEXT,
    tool_use_id TEXT,
    is_error SMALLINT,
    text TEXT NOT NULL,
    text_len INTEGER NOT NULL,
    truncated SMALLINT NOT NULL DEFAULT 0,
    ts TEXT,
    cwd TEXT,
    git_branch TEXT,
    model TEXT,
    is_sidechain SMALLINT NOT NULL DEFAULT 0,
    byte_offset BIGINT,
    meta JSONB,
    embed_state SMALLINT NOT NULL DEFAULT 0,
    text_tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, text)) STORED,
    UNIQUE (source_id, line_key, part)
);
CREATE INDEX records_session_ts ON records (session_id, ts);
CREATE INDEX records_uuid ON records (uuid);
CREATE INDEX records_tool_use ON records (tool_use_id) WHERE tool_use_id IS NOT NULL;
CREATE INDEX records_pending ON records (ts) WHERE embed_state = 0;
CREATE INDEX records_machine ON records (machine);
CREATE INDEX records_tsv ON records USING GIN (text_tsv);
CREATE TABLE responses (
    key TEXT PRIMARY KEY,               -- message id, US, request id; or 'line:' + line key
    session_id TEXT,
    model TEXT,
    ts TEXT,
    input BIGINT NOT NULL DEFAULT 0,
    output BIGINT NOT NULL DEFAULT 0,
    cache_creation BIGINT NOT NULL DEFAULT 0,
    cache_read BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX responses_ts ON responses (ts);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
INSERT INTO deja_schema (id, version) VALUES (1, 1);
"""

# Version 2: the vectors (embedding, issue 11 second part).
SCHEMA_V2 = f"""
CREATE TABLE embedding_model (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE chunks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    vec vector({VECTOR_DIM}) NOT NULL,
    UNIQUE (record_id, seq)
);
-- the record after another in its file (the keyword ranker's context, mcp_server/search/pg)
CREATE INDEX records_source_id ON records (source_id, id);
UPDATE deja_schema SET version = 2 WHERE id = 1;
"""

# Version 3: SQLite's json_extract for the read queries both engines share (ingest/pg/sqlconn.py).
# Only the '$.key.key' paths deja's queries use; the value as text (NULL when absent).
SCHEMA_V3 = """
CREATE FUNCTION json_extract(doc JSONB, path TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN doc #>> string_to_array(substr(path, 3), '.');
UPDATE deja_schema SET version = 3 WHERE id = 1;
"""

# Version 5: a session's project key and machine (issue 11: one repository on many machines
# is one project). `project_key` is the normalized git remote of the folder the session ran
# in (ingest/gitremote.py), set by the ingest of the machine that has the folder;
# mcp_server/projects.py widens a project to every folder sharing it. `machine` is the
# machine whose ingest (or sync) wrote the session first: a session id is Claude Code's
# uuid, so a session seen on two machines is one transcript copied between them, and its
# records keep each their own machine. Existing sessions get the machine of their first
# record (or file); their key comes with their next batch (ingest/pg/batch.py).
SCHEMA_V5 = """
ALTER TABLE sessions ADD COLUMN project_key TEXT;
ALTER TABLE sessions ADD COLUMN machine TEXT;
CREATE INDEX sessions_project_key ON sessions (project_key) WHERE project_key IS NOT NULL;
UPDATE sessions s SET machine = COALESCE(
    (SELECT r.machine FROM records r WHERE r.session_id = s.session_id ORDER BY r.id LIMIT 1),
    (SELECT o.machine FROM sources o WHERE o.session_id = s.session_id ORDER BY o.id LIMIT 1));
UPDATE deja_schema SET version = 5 WHERE id = 1;
"""

# The statements that take a database from version N-1 to N, by N.
_UPGRADES = {2: SCHEMA_V2, 3: SCHEMA_V3, 4: SCHEMA_V4, 5: SCHEMA_V5, 6: SCHEMA_V6,
             7: SCHEMA_V7, 8: SCHEMA_V8}


async def prepare(conn: psycopg.AsyncConnection, target: PostgresUrl, *,
                  create: bool = True) -> None:
    """Check pgvector and the schema version; create the tables in a new database (and
    pgvector, when the role may) unless `create` is False (the read-only commands: they
    refuse a database deja has not written yet, as they refuse a missing SQLite file).

    Raises DatabaseError (no pgvector, no privilege to create, no tables) or SchemaTooNew.
    """
    import psycopg

    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            version = await _version(conn)
            if version is None and not create:
                raise DatabaseError(f"no deja tables in the PostgreSQL database at {target}: "
                                    "run `deja ingest` to create them")
            await _ensure_vector(conn, target)
            if version is None:
                await conn.execute(SCHEMA_V1)
                version = 1
            elif version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the PostgreSQL database at {target} has deja schema version {version}, "
                    f"newer than this deja's ({SCHEMA_VERSION}): upgrade deja")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(_UPGRADES[step])
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"the role may not create deja's tables in the PostgreSQL database at {target}: "
            "grant it CREATE on the database's schema (or create a schema it owns and name it "
            "in the URL: ?options=-csearch_path%3Ddeja)") from exc


async def _ensure_vector(conn: psycopg.AsyncConnection, target: PostgresUrl) -> None:
    """pgvector installed in this database, or created now; else a DatabaseError saying who
    can fix it."""
    import psycopg

    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    if await cur.fetchone():
        return
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    if not await cur.fetchone():
        raise DatabaseError(
            f"the PostgreSQL server of {target} does not have pgvector (the `vector` extension): "
            "install pgvector on the server, then run CREATE EXTENSION vector in the database")
    try:
        async with conn.transaction():  # a savepoint: the failure is ours to word
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"the PostgreSQL database at {target} has no `vector` extension and this role may "
            "not create it: ask the database owner or a superuser to run "
            "CREATE EXTENSION vector in it") from exc


async def _version(conn: psycopg.AsyncConnection) -> int | None:
    """The schema version of the database, None when deja's tables are not there."""
    cur = await conn.execute("SELECT to_regclass('deja_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT version FROM deja_schema WHERE id = 1")
    row = await cur.fetchone()
    return int(row[0]) if row else None
