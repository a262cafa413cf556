"""Schema migrations, forward only, recorded in `PRAGMA user_version`.

Each migration is a numbered function that takes a raw (synchronous) connection
and runs inside ONE transaction together with the `user_version` bump, so a
crash mid-migration leaves the previous version intact. Never edit a shipped
migration: add the next number.

Migrations are fixed text. A migration says what it did when it shipped,
whatever the code around it says today: it reads no module constant and calls
no deja function whose result may change later (the kinds that get vectors,
the FTS context expression, the quantization of vectors are all spelled out
below as they were). A database upgraded from any earlier version therefore
ends exactly like one created at the current version (tests/test_migrations.py
checks both from every version). Two things they need come from the
connection, not from this file: `ingest.db.make_connector` loads sqlite-vec
(the vec0 tables of m001/m002, dropped by m006) and registers the SQL
function `deja_fts_text` (CJK spaced out for the tokenizer) that the FTS
triggers and m005's re-index call. That function is the writers' too, so an
index built by a migration matches what the writers add after it.

Schema principles (see DESIGN.md):
- `records` holds every indexed piece of a transcript (a prompt, a tool call, a
  tool result...). Its primary key is an explicit INTEGER `id` because FTS5
  external content and vec0 are keyed by rowid, and implicit rowids may change
  on VACUUM.
- A record is unique per (source file, line key, part): the same uuid in two
  files (a `/btw` side question replays its parent's lines) is kept per file,
  and re-reading a file after truncation or replacement never duplicates.
- The cursor of each source file lives in `sources` and advances in the same
  transaction as the rows it covers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .errors import SchemaTooNew

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

logger = logging.getLogger(__name__)


def _run_script(conn: Any, script: str) -> None:
    """Run statements one by one: executescript() would COMMIT our open transaction."""
    from .db import driver

    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if driver().complete_statement(pending):
            conn.execute(pending)
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending[:80]!r}")


def m001_initial(conn: Any) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE sources (
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,      -- os.fsencode(path): names need not be UTF-8
            display_path TEXT NOT NULL,     -- for people; undecodable bytes replaced
            project_dir TEXT NOT NULL,      -- folder under the root, e.g. -home-a-app
            layout TEXT NOT NULL,           -- session | subagent | legacy_agent | workflow_agent | journal
            session_hint TEXT,              -- session id read from the path
            session_id TEXT,                -- the sessionId inside (can differ from the name)
            agent_id TEXT,                  -- subagent id read from the path
            dev INTEGER,
            ino INTEGER,
            size INTEGER NOT NULL DEFAULT 0,
            mtime_ns INTEGER NOT NULL DEFAULT 0,
            offset INTEGER NOT NULL DEFAULT 0,  -- byte after the last complete line read
            lines INTEGER NOT NULL DEFAULT 0,   -- complete lines read so far
            head_len INTEGER NOT NULL DEFAULT 0,
            head_hash TEXT,                     -- of the first head_len bytes: detects replacement
            missing INTEGER NOT NULL DEFAULT 0, -- 1 once the file is gone; its records stay
            resets INTEGER NOT NULL DEFAULT 0,  -- truncations/replacements reconciled
            updated_at TEXT
        );

        CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            project_dir TEXT,
            cwd TEXT,
            git_branch TEXT,
            title TEXT,
            title_kind TEXT,                -- ai-title | custom-title (the last one wins)
            agent_name TEXT,
            first_ts TEXT,
            last_ts TEXT,
            version TEXT
        );

        CREATE TABLE agent_runs (
            session_id TEXT NOT NULL,       -- the parent session
            agent_id TEXT NOT NULL,
            source_id INTEGER REFERENCES sources(id),
            layout TEXT,                    -- sidechain | legacy_agent | subagent | workflow_agent
            agent_type TEXT,
            description TEXT,
            tool_use_id TEXT,               -- the Task/Agent call that spawned it, when known
            is_aside INTEGER NOT NULL DEFAULT 0,  -- /btw side question
            PRIMARY KEY (session_id, agent_id)
        );

        CREATE TABLE records (
            id INTEGER PRIMARY KEY,
            source_id INTEGER REFERENCES sources(id),  -- NULL for explicit memories
            line_key TEXT NOT NULL,         -- uuid, else leafUuid, else a hash of the line
            part INTEGER NOT NULL,          -- index of the piece within its line
            uuid TEXT,                      -- the line's uuid (leafUuid for summary lines)
            parent_uuid TEXT,
            session_id TEXT,
            agent_id TEXT,
            kind TEXT NOT NULL,
            role TEXT,
            tool_name TEXT,
            tool_use_id TEXT,
            is_error INTEGER,
            text TEXT NOT NULL,
            text_len INTEGER NOT NULL,      -- length before the cap
            truncated INTEGER NOT NULL DEFAULT 0,
            ts TEXT,
            cwd TEXT,
            git_branch TEXT,
            model TEXT,
            is_sidechain INTEGER NOT NULL DEFAULT 0,
            byte_offset INTEGER,            -- where the line starts in its file
            meta TEXT,                      -- JSON: usage, message/request ids, compaction data
            UNIQUE (source_id, line_key, part)
        );
        CREATE INDEX records_session_ts ON records(session_id, ts);
        CREATE INDEX records_uuid ON records(uuid);
        CREATE INDEX records_tool_use ON records(tool_use_id) WHERE tool_use_id IS NOT NULL;

        -- External-content FTS5 keyed by records.id. The index holds
        -- deja_fts_text(text) (CJK spaced out), so the delete trigger must pass
        -- the same function of the old text.
        CREATE VIRTUAL TABLE records_fts USING fts5(
            text, content='records', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER records_ai AFTER INSERT ON records BEGIN
            INSERT INTO records_fts(rowid, text) VALUES (new.id, deja_fts_text(new.text));
        END;
        CREATE TRIGGER records_ad AFTER DELETE ON records BEGIN
            INSERT INTO records_fts(records_fts, rowid, text)
                VALUES ('delete', old.id, deja_fts_text(old.text));
        END;
        CREATE TRIGGER records_au AFTER UPDATE OF text ON records BEGIN
            INSERT INTO records_fts(records_fts, rowid, text)
                VALUES ('delete', old.id, deja_fts_text(old.text));
            INSERT INTO records_fts(rowid, text) VALUES (new.id, deja_fts_text(new.text));
        END;

        -- The vector side, filled by the embedder: one model per database,
        -- records split into chunks (MiniLM reads 256 word pieces), one vector each.
        CREATE TABLE embedding_model (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            model_id TEXT NOT NULL,
            dim INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            record_id INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            char_start INTEGER NOT NULL,
            char_end INTEGER NOT NULL,
            UNIQUE (record_id, seq)
        );
        CREATE VIRTUAL TABLE vec_chunks USING vec0(
            chunk_id INTEGER PRIMARY KEY,
            embedding float[384] distance_metric=cosine,
            kind text,
            session_id text,
            project_dir text,
            ts text
        );

        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT
        );
        """
    )


def m002_embedding_queue(conn: Any) -> None:
    """Pending-embedding state per record, and filterable vec0 metadata.

    `embed_state`: 0 waiting for a vector, 1 embedded, 2 not worth one. A
    partial index on the waiting rows, by time, lets the embedder take the
    newest first without scanning the table. vec0 applies metadata filters
    during KNN, so filtered vector queries are never starved by an outer WHERE.

    The kinds worth a vector are those of ingest.indexing.EMBEDDABLE_KINDS
    when this shipped; 384 is all-MiniLM-L6-v2's dimension (vectors of
    another model were made by `deja reembed`, which rebuilt the table).
    """
    _run_script(
        conn,
        """
        ALTER TABLE records ADD COLUMN embed_state INTEGER NOT NULL DEFAULT 0;
        UPDATE records SET embed_state = 2 WHERE kind NOT IN (
            'prompt', 'assistant', 'thinking', 'tool_call', 'tool_result', 'compact_summary',
            'summary', 'workflow_result', 'memory', 'attachment');
        CREATE INDEX records_pending ON records(ts) WHERE embed_state = 0;
        DELETE FROM chunks;
        DROP TABLE vec_chunks;
        CREATE VIRTUAL TABLE vec_chunks USING vec0(
            chunk_id INTEGER PRIMARY KEY,
            embedding float[384] distance_metric=cosine,
            kind text,
            project_dir text,
            session_id text,
            tool_name text,
            ts text
        );
        """,
    )


def m003_fts_batch_insert(conn: Any) -> None:
    """Index new records per batch instead of per row.

    An AFTER INSERT trigger fires once per row of an executemany, which made
    FTS5 indexing cost about twice what one INSERT ... SELECT over the batch
    costs (measured: writer CPU 1.83 -> 1.22 s per 95 MB). Writers now add
    new rows to records_fts themselves (store.write_batch, memories); the
    delete and update triggers stay.
    """
    conn.execute("DROP TRIGGER records_ai")


def m004_fts_vocabulary(conn: Any) -> None:
    """Document counts per indexed term, so search can leave very common words
    out of its OR query (they made it score a fifth of the corpus)."""
    conn.execute("CREATE VIRTUAL TABLE records_fts_vocab USING fts5vocab(records_fts, 'row')")


# m005's context expression, as ingest.indexing.FTS_CONTEXT_SQL was when it
# shipped (fixed here: the trigger of every migrated database holds this text).
# The previous record of the same file, if it is a prompt, a reply, a tool
# call or a summary: its first 2,000 characters; nothing for a memory.
_M005_CONTEXT = (
    "CASE WHEN r.kind = 'memory' THEN '' ELSE deja_fts_text(("
    "SELECT CASE WHEN p.kind IN ('prompt', 'assistant', 'tool_call', 'compact_summary', 'summary') "
    "THEN substr(p.text, 1, 2000) END "
    "FROM records p WHERE p.source_id = r.source_id AND p.id < r.id "
    "ORDER BY p.id DESC LIMIT 1)) END"
)


def m005_fts_context(conn: Any) -> None:
    """Index each record together with the text of the record before it.

    A question often shares its words with the turn that prompted the answer,
    not with the answer itself ("what did Caroline say about adoption?" ->
    the reply after the adoption line). A second FTS column holding the
    previous record's text (its first 2,000 characters), weighted 0.25 in
    bm25, lifted LoCoMo test R@5/R@10 from .593/.699 to .625/.724 and left our
    real-transcript questions at 80% hit@10 (bench/locomo.py --context).

    The table becomes contentless (content='', contentless_delete=1, SQLite
    >= 3.43): there is no content table holding the context column, and deja
    never reads text back from FTS (snippets come from records). Deleting a
    row no longer needs the indexed text, so the delete trigger is simpler and
    FTS5's content integrity check now means what it says. The vocabulary
    becomes per column so search can count documents of the text column.
    """
    _run_script(
        conn,
        f"""
        DROP TRIGGER records_ad;
        DROP TRIGGER records_au;
        DROP TABLE records_fts_vocab;
        DROP TABLE records_fts;
        CREATE INDEX records_source ON records(source_id);
        CREATE VIRTUAL TABLE records_fts USING fts5(
            text, context, content='', contentless_delete=1,
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE VIRTUAL TABLE records_fts_vocab USING fts5vocab(records_fts, 'col');
        CREATE TRIGGER records_ad AFTER DELETE ON records BEGIN
            DELETE FROM records_fts WHERE rowid = old.id;
        END;
        CREATE TRIGGER records_au AFTER UPDATE OF text ON records BEGIN
            DELETE FROM records_fts WHERE rowid = old.id;
            INSERT INTO records_fts (rowid, text, context)
                SELECT r.id, deja_fts_text(r.text), {_M005_CONTEXT}
                FROM records r WHERE r.id = new.id;
        END;
        INSERT INTO records_fts (rowid, text, context)
            SELECT r.id, deja_fts_text(r.text), {_M005_CONTEXT} FROM records r;
        """,
    )


def m006_compact_vectors(conn: Any) -> None:
    """Vectors as int8 in an ordinary table, and their sign bits with each chunk.

    The float32 vec0 table cost 1.73 GB per million chunks and its exact scan
    0.6 s per million, far from a 250 ms search. Search now scans sign bits
    (48 bytes a chunk: in memory in the server, or in SQL) for candidates and
    re-ranks them exactly from int8 vectors looked up by chunk id (see
    ingest/quantize.py); vec0's point lookups were too slow for that (126 ms
    per 1,000). Filters are applied by search itself, so they still never
    starve a query. Vectors go with their chunk (ON DELETE CASCADE).

    Existing float vectors are converted, not recomputed (see _m006_convert).
    """
    _run_script(
        conn,
        """
        ALTER TABLE chunks ADD COLUMN bits BLOB;
        CREATE TABLE chunk_vectors (
            chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
            vec BLOB NOT NULL               -- int8[dim], see ingest/quantize.py
        );
        """,
    )
    dims = conn.execute("SELECT dim FROM embedding_model").fetchall()
    if dims:
        import numpy as np

        dim = int(dims[0][0])
        last = 0
        while True:
            rows = conn.execute(
                "SELECT chunk_id, embedding FROM vec_chunks WHERE chunk_id > ? "
                "ORDER BY chunk_id LIMIT 4096", (last,)).fetchall()
            if not rows:
                break
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
            ids = [r[0] for r in rows]
            int8, bits = _m006_convert(mat)
            conn.executemany("INSERT INTO chunk_vectors (chunk_id, vec) VALUES (?, ?)",
                             zip(ids, int8))
            conn.executemany("UPDATE chunks SET bits = ? WHERE id = ?", zip(bits, ids))
            last = ids[-1]
    # A chunk without a vector (none expected) is dropped and its record waits again.
    _run_script(
        conn,
        """
        DELETE FROM chunks WHERE bits IS NULL;
        UPDATE records SET embed_state = 0 WHERE embed_state = 1
            AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.record_id = records.id);
        DROP TABLE vec_chunks;
        """,
    )


def _m006_convert(mat: Any) -> tuple[list[bytes], list[bytes]]:
    """(n, dim) float32 vectors -> their int8 blobs and sign-bit blobs.

    The forms ingest/quantize.py made when m006 shipped, written out here so a
    change there never changes what this conversion writes: int8 is each row
    scaled so its largest component is +-127, then rounded; bit i is set when
    component i is positive, packed in numpy's bit order (48 bytes for 384).
    """
    import numpy as np

    peak = np.abs(mat).max(axis=1, keepdims=True)
    peak[peak == 0] = 1.0
    int8 = np.clip(np.rint(mat * (127.0 / peak)), -127, 127).astype(np.int8)
    bits = np.packbits(mat > 0, axis=1)
    return [row.tobytes() for row in int8], [row.tobytes() for row in bits]


def m007_passages(conn: Any) -> None:
    """Passages of long records, escape codes out, injected command copies out (see
    ingest/migration_m007.py, its own module for the house's line limit)."""
    from .migration_m007 import m007_script

    _run_script(conn, m007_script(_M005_CONTEXT))


def m008_stats(conn: Any) -> None:
    """Responses with their usage counted once, and covering indexes for `deja stats` (see
    ingest/migration_m008.py, its own module for the house's line limit)."""
    from .migration_m008 import M008_SCRIPT

    _run_script(conn, M008_SCRIPT)


def m009_multilingual(conn: Any) -> None:
    """Tables for the optional multilingual vectors (see ingest/migration_m009.py)."""
    from .migration_m009 import M009_SCRIPT

    _run_script(conn, M009_SCRIPT)


def m010_ml_mark(conn: Any) -> None:
    """The multilingual mark lowered when the top record goes, and a count of removed
    multilingual vectors (see ingest/migration_m010.py)."""
    from .migration_m010 import M010_SCRIPT

    _run_script(conn, M010_SCRIPT)


def m011_project_key(conn: Any) -> None:
    """Sessions' project key, their git remote (see ingest/migration_m011.py)."""
    from .migration_m011 import M011_SCRIPT

    _run_script(conn, M011_SCRIPT)


MIGRATIONS: list[Callable[[Any], None]] = [m001_initial, m002_embedding_queue,
                                           m003_fts_batch_insert, m004_fts_vocabulary,
                                           m005_fts_context, m006_compact_vectors,
                                           m007_passages, m008_stats, m009_multilingual,
                                           m010_ml_mark, m011_project_key]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Any) -> int:
    """Bring a raw connection's schema to SCHEMA_VERSION; returns the version found.

    Raises SchemaTooNew if the file comes from a newer deja.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {found} is newer than this deja ({SCHEMA_VERSION}); "
            "upgrade deja"
        )
    for number in range(found + 1, SCHEMA_VERSION + 1):
        migration = MIGRATIONS[number - 1]
        logger.info("migrating database to version %d (%s)", number, migration.__name__)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                conn.execute("ROLLBACK")
                continue
            migration(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
