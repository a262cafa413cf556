"""`deja doctor`: each thing deja needs, checked and explained, with the fix.

Why a library module: the CLI (`deja doctor`) and the terminal UI's
diagnostics view (`deja browse`) show the same checks, so both call
`run_checks(db_path, env)` and render the `Check`s it returns.

The rules:
- Synchronous and fast (a fraction of a second): nothing heavy is imported
  (no torch, no onnxruntime: the model is resolved, never loaded), the
  database is opened read-only, with the driver deja itself uses.
- It never raises for a broken database: a file that is not a database, or one
  that cannot be read, is a failed Check, and the checks that need the
  database say they were not run.
- Status: "fail" when deja cannot work as configured (no readable database, a
  damaged one, a schema newer than this deja, sqlite-vec or FTS5 missing, a
  model setting that does not resolve, a model mismatch); "warn" when it works
  but something wants attention (embeddings pending, transcripts newer than the
  last ingest, deja not registered with Claude Code, the ingest lock held).
  `deja doctor` exits 1 when any check failed; warnings alone exit 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ingest.config import PostgresUrl

from .check import STATUSES, Check, checks_json, failed
from .claude import claude_code, ingest_lock, retention, transcripts
from .store import database, extensions, model, open_read_only

__all__ = ["Check", "run_checks", "STATUSES", "failed", "checks_json"]


def run_checks(db_path: Path | PostgresUrl, env: Mapping[str, str]) -> list[Check]:
    """Every check, in the order a person would fix them. Never raises for a broken database.
    A PostgreSQL URL gets the checks that make sense on a server (postgres.py)."""
    home = Path(env.get("HOME") or Path.home())
    if isinstance(db_path, PostgresUrl):
        return _postgres_checks(db_path, env, home)
    checks: list[Check] = []
    conn = None
    db_checks = database(db_path)
    checks.extend(db_checks)
    if all(c.status != "fail" for c in db_checks):
        conn, opened = open_read_only(db_path)
        checks.extend(opened)
    checks.extend(extensions())
    try:
        checks.extend(model(conn, env, home))
        checks.extend(transcripts(conn, env, home))
        checks.extend(retention(conn, env, home))
        checks.extend(claude_code(env, home))
        checks.append(ingest_lock(db_path))
    finally:
        if conn is not None:
            conn.close()
    return checks




def _postgres_checks(target: PostgresUrl, env: Mapping[str, str], home: Path) -> list[Check]:
    """The checks of a PostgreSQL database; a failing statement is a failed check."""
    from ingest.config import machine_from
    from ingest.embed.configured import configured_model
    from ingest.errors import DejaError
    from ingest.pg.connect import describe

    from . import postgres as pg

    conn, checks = pg.connection(target, env)
    ready = False
    try:
        if conn is not None:
            ready, found = pg.server(conn, target, env)
            checks.extend(found)
            if ready:
                checks.append(pg.privileges(conn))
        checks.extend(model(None, env, home))
        if ready:
            try:
                checks.append(pg.embeddings_pg(conn, configured_model(env).spec.model_id))
            except DejaError:
                pass  # the model check said why it does not resolve
        checks.extend(transcripts(conn if ready else None, env, home))
        checks.extend(retention(None, env, home))
        checks.extend(claude_code(env, home))
        registered = pg.registration_pg(target, env, home)
        if registered is not None:
            checks.append(registered)
        if conn is not None:
            checks.append(pg.ingest_lock_pg(conn, machine_from(env)))
    except Exception as exc:  # noqa: BLE001 - psycopg's errors (a lost server...): a failed check
        checks.append(Check("database", "fail", f"PostgreSQL at {target}: "
                            f"{describe(exc, target, env)}", "run `deja doctor` again; check "
                            "the server's log"))
    finally:
        if conn is not None:
            conn.close()
    return checks
