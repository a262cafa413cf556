"""Doctor's checks of a PostgreSQL database (`deja doctor --db postgresql://...`).

What can go wrong on a shared server is not what goes wrong with a file: no
integrity PRAGMA, no file mode, no sqlite-vec; instead the connection (and
whether TLS is on), the password written into the URL, the server's and
pgvector's versions, deja's schema version, what the role may do with deja's
tables, and THIS machine's ingest lock (an advisory lock, ingest/pg/lock.py).
The model, embeddings, transcripts and Claude Code checks are the SQLite
ones, given the psycopg connection (their queries take no parameters).

The same rules as the SQLite checks (mcp_server/doctor/__init__.py): one
synchronous pass of a fraction of a second, never a raise, never a password
(every server message goes through ingest/pg/connect.py `describe`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingest.config import PostgresUrl

from .check import Check

__all__ = ["connection", "server", "privileges", "ingest_lock_pg", "embeddings_pg",
           "registration_pg"]

# Seconds doctor waits for a server that does not answer (it must stay quick).
_TIMEOUT_S = 5
# What each deja table needs for ingest, embed, import and the server to write.
_WRITES = ("SELECT", "INSERT", "UPDATE")
_TABLES = ("sources", "records", "sessions", "agent_runs", "responses", "meta", "chunks",
           "embedding_model")


def connection(target: PostgresUrl, env: Mapping[str, str]) -> tuple[Any, list[Check]]:
    """A psycopg connection (or None) and the checks of reaching the server."""
    from ingest.errors import DejaError
    from ingest.pg.connect import APPLICATION_PREFIX, describe, require_psycopg

    checks: list[Check] = []
    if target.password:
        checks.append(Check("password", "warn", f"{target.origin} has the password in the URL "
                            "(deja never shows it, but the shell history and Claude Code's "
                            "files may hold it)",
                            "put it in ~/.pgpass (or PGPASSFILE) and drop it from the URL"))
    try:
        require_psycopg()
    except DejaError as exc:
        return None, [*checks, Check("connection", "fail", str(exc), "pip install 'deja[postgres]'")]
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(target.url)
        extra: dict[str, Any] = {"application_name": f"{APPLICATION_PREFIX}{os.getpid()}"}
        if "connect_timeout" not in params and not env.get("PGCONNECT_TIMEOUT"):
            extra["connect_timeout"] = _TIMEOUT_S
        conn = psycopg.connect(make_conninfo(target.url, **extra), autocommit=True)
    except psycopg.Error as exc:
        return None, [*checks, Check(
            "connection", "fail", f"cannot connect to {target}: {describe(exc, target, env)}",
            "check the host, port, database and role in the URL, the password (~/.pgpass, "
            "PGPASSFILE) and that the server accepts this machine (pg_hba.conf)")]
    tls = "TLS" if conn.pgconn.ssl_in_use else "no TLS"
    where = conn.info.host if not conn.info.host.startswith("/") else "a local socket"
    checks.append(Check("connection", "ok", f"{target} as {conn.info.user} ({where}, {tls})"))
    return conn, checks


def server(conn: Any, target: PostgresUrl, env: Mapping[str, str]) -> tuple[bool, list[Check]]:
    """(deja's tables are there and current, the checks): server, pgvector, schema."""
    from ingest.pg.schema import SCHEMA_VERSION

    version = conn.info.server_version
    checks = [Check("server", "ok", f"PostgreSQL {version // 10000}.{version % 10000}")]
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row:
        checks.append(Check("pgvector", "ok", f"pgvector {row[0]} in this database"))
    else:
        available = conn.execute("SELECT default_version FROM pg_available_extensions "
                                 "WHERE name = 'vector'").fetchone()
        checks.append(Check(
            "pgvector", "fail", "the `vector` extension is not in this database" +
            (f" (the server has pgvector {available[0]})" if available else
             " and the server does not have pgvector"),
            "CREATE EXTENSION vector (as the database owner or a superuser)" if available
            else "install pgvector on the server, then CREATE EXTENSION vector"))
    if not conn.execute("SELECT to_regclass('deja_schema') IS NOT NULL").fetchone()[0]:
        checks.append(Check("schema", "fail", "no deja tables in this database",
                            "run `deja ingest` (or `deja sync --to URL`) to create them"))
        return False, checks
    found = conn.execute("SELECT version FROM deja_schema WHERE id = 1").fetchone()
    current = int(found[0]) if found else 0
    if current > SCHEMA_VERSION:
        checks.append(Check("schema", "fail", f"schema version {current} is newer than this "
                            f"deja's ({SCHEMA_VERSION})", "upgrade deja on this machine"))
        return False, checks
    if current < SCHEMA_VERSION:
        checks.append(Check("schema", "warn", f"schema version {current}, this deja has "
                            f"{SCHEMA_VERSION}: it upgrades at the next write",
                            "run `deja ingest` (it upgrades first)"))
        return True, checks
    checks.append(Check("schema", "ok", f"schema version {current}"))
    return True, checks


def privileges(conn: Any) -> Check:
    """What the role may do with deja's tables: read (search, show), write (ingest, serve)."""
    missing: list[str] = []
    unreadable: list[str] = []
    for table in _TABLES:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
            continue  # an older schema: the upgrade creates it
        for privilege in _WRITES:
            if not conn.execute("SELECT has_table_privilege(%s, %s)",
                                (table, privilege)).fetchone()[0]:
                (unreadable if privilege == "SELECT" else missing).append(f"{privilege} {table}")
    user = conn.info.user
    if unreadable:
        return Check("privileges", "fail", f"role {user} may not read: {', '.join(unreadable)}",
                     f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {user}")
    if missing:
        return Check("privileges", "warn", f"role {user} reads but may not write "
                     f"({', '.join(missing)}): search works, ingest and the server's writes fail",
                     f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {user}")
    return Check("privileges", "ok", f"role {user} may read and write deja's tables")


def ingest_lock_pg(conn: Any, machine: str) -> Check:
    """Whether a process ingests for this machine now: its advisory lock is held."""
    from ingest.pg.connect import APPLICATION_PREFIX
    from ingest.pg.lock import lock_key

    unsigned = lock_key(machine) & 0xFFFF_FFFF_FFFF_FFFF
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFF_FFFF)).fetchone()
    if row is None:
        return Check("ingest_lock", "ok", f"no process is ingesting for machine {machine!r}")
    name = row[0] or ""
    pid = name.removeprefix(APPLICATION_PREFIX) if name.startswith(APPLICATION_PREFIX) else "?"
    return Check("ingest_lock", "warn", f"pid {pid} holds machine {machine!r}'s ingest lock (a "
                 "deja server or ingest on this machine: others wait for it)",
                 "nothing if it is a running `deja serve`; else wait, or stop that process")


def embeddings_pg(conn: Any, model_id: str) -> Check:
    """Pending vectors, and the database's model against the one configured here."""
    pending = int(conn.execute("SELECT COUNT(*) FROM records WHERE embed_state = 0")
                  .fetchone()[0])
    stored = conn.execute("SELECT model_id FROM embedding_model WHERE id = 1").fetchone() \
        if conn.execute("SELECT to_regclass('embedding_model') IS NOT NULL").fetchone()[0] \
        else None
    if stored and stored[0] != model_id:
        return Check("embeddings", "fail", f"the vectors are of {stored[0]}, the model "
                     f"configured here is {model_id}: this machine's vector search is off",
                     "set DEJA_EMBED_MODEL to the database's model (or `deja reembed` them all)")
    if pending:
        return Check("embeddings", "warn", f"{pending} records await a vector, every machine's "
                     "(keyword search finds them already)", "run `deja embed`")
    return Check("embeddings", "ok", "every record that deserves a vector has one")


def registration_pg(target: PostgresUrl, env: Mapping[str, str], home: Path) -> Check | None:
    """Whether the MCP server Claude Code runs uses this database (`deja install` with this
    DEJA_DB or --db); None when no deja server is registered (claude_code() says so)."""
    from ingest.config import PostgresUrl as Url
    from mcp_server.install.entries import SERVER_NAME, is_deja_server

    from .claude import _read_json, _user_files

    _, config_path = _user_files(env, home)
    config, _ = _read_json(config_path)
    entry = ((config or {}).get("mcpServers") or {}).get(SERVER_NAME)
    if entry is None or not is_deja_server(entry):
        return None
    args = [str(a) for a in entry.get("args") or []]
    given = args[args.index("--db") + 1] if "--db" in args[:-1] else None
    server_env = entry.get("env") if isinstance(entry.get("env"), dict) else {}
    db = given or server_env.get("DEJA_DB")
    if db and str(Url(str(db))) == str(target):
        return Check("mcp_database", "ok", f"Claude Code's deja server uses {target}")
    shown = str(Url(str(db))) if db and str(db).lower().startswith("postgres") else db
    shown = shown or "the default SQLite file"
    return Check("mcp_database", "warn", f"Claude Code's deja server uses {shown}, not {target}",
                 f"DEJA_DB='{target}' deja install (add the password through ~/.pgpass)")
