"""LoCoMo on the PostgreSQL engine: bench/locomo.py's transcripts and questions, `search_pg`.

Why: issue 11 wants the PostgreSQL engine's recall within 0.02 of SQLite's
on the LoCoMo test split. bench/locomo.py `--engine postgresql` (or `both`)
calls `pg_tables` here: the transcripts locomo.py wrote for its SQLite
database are ingested with the CLI (`deja ingest --no-embed`) into a
database of a pgserver kept in <workdir>/pg (reused while the transcripts,
the model and the PostgreSQL schema are the same: a stamp in the database's
`meta` table), embedded with locomo's own embedder (`embed_pending_pg`),
and every question is asked in keyword, vector and hybrid mode through
`search_pg`, limited to its conversation's project as on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

__all__ = ["pg_tables"]


def _server(folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import pgserver

        return pgserver.get_server(folder, cleanup_mode=None)


def _database(handle: Any, stamp: str) -> tuple[str, bool]:
    """The URL of the database for `stamp`, and whether it already holds it."""
    import psycopg

    name = "locomo_" + hashlib.sha256(stamp.encode()).hexdigest()[:12]
    with psycopg.connect(handle.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone() is not None
        if exists:
            with psycopg.connect(handle.get_uri(name)) as db:
                row = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
                done = bool(row and row[0]) and db.execute(
                    "SELECT 1 FROM meta WHERE key = 'locomo_stamp' AND value = %s",
                    (stamp,)).fetchone() is not None
            if done:
                return handle.get_uri(name), True
            conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return handle.get_uri(name), False


async def _build(url: str, root: Path, embedder: Any, home: Path,
                 say: Callable[[str], None]) -> None:
    """Ingest `root` with the CLI, embed with `embedder`, stamp nothing (the caller does)."""
    from ingest.config import PostgresUrl
    from ingest.pg.store import PgStore
    from ingest.pg.vectors import embed_pending_pg

    env = {**os.environ, "HOME": str(home), "DEJA_EMBED": "0", "DEJA_MULTILINGUAL": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    deja = [sys.executable, "-c", "import sys; from mcp_server.cli import main; sys.exit(main())"]
    out = subprocess.run([*deja, "--db", url, "ingest",
                          "--root", str(root), "--no-embed", "--quiet", "--json"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise SystemExit(f"deja ingest into PostgreSQL failed:\n{out.stderr[-2000:]}")
    store = await PgStore.open(PostgresUrl(url), "locomo", os.environ)
    try:
        summary = await embed_pending_pg(store, embedder)
        say(f"PostgreSQL: embedded {summary.embedded_records} records in {summary.seconds:.1f} s")
    finally:
        await store.close()


async def pg_tables(questions_by_split: dict[str, Sequence[Any]], root: Path, stamp: dict[str, Any],
                    embedder: Any, workdir: Path, by_uuid: dict[str, str],
                    project_of: Callable[[str], str], limit: int,
                    score: Callable[[Sequence[Any], list[list[str]]], Any],
                    say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Per split, {"pg search:<mode>": score(questions, runs)} for keyword, vector, hybrid."""
    import time

    from ingest.config import PostgresUrl
    from ingest.pg.schema import SCHEMA_VERSION
    from ingest.pg.search_schema import SCHEMA_V4
    from ingest.pg.store import PgStore
    from mcp_server.search import SearchRequest
    from mcp_server.search.pg import search_pg

    handle = _server(workdir / "pg")
    # The schema's text too: a changed index definition (not yet a new version) rebuilds.
    key = json.dumps({**stamp, "pg_schema": SCHEMA_VERSION,
                      "v4": hashlib.sha256(SCHEMA_V4.encode()).hexdigest()[:12]}, sort_keys=True)
    url, cached = _database(handle, key)
    if not cached:
        started = time.perf_counter()
        await _build(url, root, embedder, workdir / "pg-home", say)
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('locomo_stamp', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key,))
        say(f"PostgreSQL database built in {time.perf_counter() - started:.1f} s")
    store = await PgStore.open(PostgresUrl(url), "locomo", os.environ, create=False)
    tables: dict[str, dict[str, Any]] = {}
    try:
        for split, qs in questions_by_split.items():
            tables[split] = {}
            for mode in ("keyword", "vector", "hybrid"):
                runs = []
                for q in qs:
                    res = await search_pg(store.conn, SearchRequest(
                        q.question, mode=mode, limit=limit, project=project_of(q.sample_id)),
                        embedder=embedder)
                    if mode != "keyword" and res.vector_status != "ok":
                        raise SystemExit(f"PostgreSQL vector search unavailable: "
                                         f"{res.vector_status}")
                    runs.append([by_uuid.get(h.uuid or "", "?") for h in res.hits])
                tables[split][f"pg search:{mode}"] = score(qs, runs)
    finally:
        await store.close()
    return tables
