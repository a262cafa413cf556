"""SQLite and PostgreSQL at scale in one run: hybrid p50/p95 at 100k and 1M chunks, size, load.

Why: issue 11 wants the latency of both engines measured side by side at
100k and 1M chunks, with the database size per million chunks and the
ingest speed. The corpora are bench/search_scale.py's (same generator, same
cache folder layout): real MiniLM vectors of the shared transcripts, jittered,
with the real record texts. For each scale this:

1. builds (or reuses) search_scale's SQLite database `scale-N-vV.db`;
2. copies it into a PostgreSQL database of a pgserver kept in
   <workdir>/pg (reused when complete): sources, sessions, records by COPY,
   through the v4 triggers (stemmed tsvector with context, passages), then
   the chunks with their float vectors. The records' COPY is timed: text MB/s
   through PostgreSQL's full-text indexing (the CLI's end-to-end ingest speed
   on real transcripts is bench/pg_vs_sqlite.py's);
3. optionally (`--hnsw`) builds pgvector's HNSW index on the chunks (m 16,
   ef_construction 64), timed;
4. times hybrid search with fixed query vectors (the database side alone:
   bench/questions.json's first 50), 50 warm-up queries then 50 measured, on
   SQLite as the MCP server runs it (vector index in memory, second
   connection) and on PostgreSQL through `search_pg` (exact scan, and HNSW
   when built), unfiltered and with a project filter; and the vector rankers'
   agreement: the share of the exact top-10 records the HNSW path returns.

    python bench/pg_scale.py [--scales 100k,1M] [--workdir /tmp/deja-pgscale] [--hnsw]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402
import search_scale as ss  # noqa: E402  (bench/ is on sys.path: this script's folder)

from ingest.config import PostgresUrl  # noqa: E402
from ingest.pg.schema import SCHEMA_VERSION as PG_SCHEMA  # noqa: E402
from ingest.pg.search_schema import SCHEMA_V4  # noqa: E402

STEP = 20_000
WORKERS = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def server(folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(folder, cleanup_mode=None)


def pg_database(handle: Any, sqlite_path: Path, n_chunks: int) -> tuple[str, dict[str, Any]]:
    """The PostgreSQL copy of a scale database (built once); its URL and how it was built."""
    import hashlib

    import psycopg

    # The index definition's text too: a changed one (not yet a new version) rebuilds.
    name = (f"scale_{ss.human(n_chunks).lower()}_v{PG_SCHEMA}_"
            f"{hashlib.sha256(SCHEMA_V4.encode()).hexdigest()[:8]}")
    with psycopg.connect(handle.get_uri("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            with psycopg.connect(handle.get_uri(name)) as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'scale_done'").fetchone() \
                    if db.execute("SELECT to_regclass('meta')").fetchone()[0] else None
            if row:
                return handle.get_uri(name), json.loads(row[0])
            conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = handle.get_uri(name)
    info = copy_into(url, sqlite_path, n_chunks)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("INSERT INTO meta (key, value) VALUES ('scale_done', %s)", (json.dumps(info),))
    return url, info


def copy_into(url: str, sqlite_path: Path, n_chunks: int) -> dict[str, Any]:
    """Copy sources, sessions, records and chunks (float vectors) of the SQLite database."""
    import psycopg

    from ingest.db import make_connector
    from ingest.pg.store import PgStore

    async def create() -> None:
        store = await PgStore.open(PostgresUrl(url), "gen", os.environ)
        await store.close()

    anyio.run(create)
    lite = make_connector(sqlite_path, readonly=True)()
    info: dict[str, Any] = {}
    with psycopg.connect(url) as pg:
        with pg.cursor() as cur, cur.copy(
                "COPY sources (id, machine, path, display_path, project_dir, layout, session_hint, "
                "session_id) FROM STDIN") as cp:
            for row in lite.execute("SELECT id, path, display_path, project_dir, layout, "
                                    "session_hint, session_id FROM sources ORDER BY id"):
                cp.write_row((row[0], "gen", bytes(row[1]), *row[2:]))
        with pg.cursor() as cur, cur.copy(
                "COPY sessions (session_id, project_dir, cwd, first_ts) FROM STDIN") as cp:
            for row in lite.execute("SELECT session_id, project_dir, cwd, first_ts FROM sessions"):
                cp.write_row(row)
        pg.commit()
        started = time.perf_counter()
        # Two COPY streams (the machine's two cores), each a half of the files: a record's
        # context is the one before it in its file, which its own stream wrote first.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(WORKERS) as pool:
            text_bytes = sum(pool.map(lambda k: copy_records(url, sqlite_path, k),
                                      range(WORKERS)))
        info["records_s"] = round(time.perf_counter() - started, 1)
        info["text_mb"] = round(text_bytes / 1e6, 1)
        info["records_mb_per_s"] = round(text_bytes / 1e6 / (time.perf_counter() - started), 2)
        info["copy_streams"] = WORKERS
        log(f"    records: {info['text_mb']} MB of text in {info['records_s']} s "
            f"({info['records_mb_per_s']} MB/s in {WORKERS} streams, full-text indexing "
            "included)")
        vectors = np.load(sqlite_path.parent / f"vectors-{ss.human(n_chunks)}.npy", mmap_mode="r")
        started = time.perf_counter()
        pg.execute("INSERT INTO embedding_model (id, model_id, dim) VALUES (1, %s, %s)",
                   (ss.DEFAULT_MODEL, ss.DIM))
        last = 0
        while True:
            rows = lite.execute("SELECT id, record_id, seq, char_start, char_end FROM chunks "
                                "WHERE id > ? ORDER BY id LIMIT ?", (last, STEP)).fetchall()
            if not rows:
                break
            with pg.cursor() as cur, cur.copy(
                    "COPY chunks (id, record_id, seq, char_start, char_end, vec) FROM STDIN") as cp:
                for r in rows:
                    v = vectors[r[0] - 1]
                    cp.write_row((*r, "[" + ",".join(f"{x:.6g}" for x in v.tolist()) + "]"))
            pg.commit()
            last = rows[-1][0]
            if last // STEP % 10 == 0:
                log(f"    chunks {last:,} ({time.perf_counter() - started:.0f} s)")
        info["chunks_s"] = round(time.perf_counter() - started, 1)
        pg.execute("UPDATE records SET embed_state = 1 WHERE embed_state = 0")
        pg.commit()
    lite.close()
    with psycopg.connect(url, autocommit=True) as pg:
        started = time.perf_counter()
        pg.execute("VACUUM ANALYZE")
        info["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
    return info


def copy_records(url: str, sqlite_path: Path, k: int) -> int:
    """COPY the records of the files with source id = k mod WORKERS, in id order; text bytes."""
    import psycopg

    from ingest.db import make_connector

    lite = make_connector(sqlite_path, readonly=True)()
    cols = ("id, machine, source_id, line_key, part, uuid, session_id, kind, tool_name, "
            "text, text_len, ts, cwd, embed_state")
    text_bytes = 0
    last = 0
    with psycopg.connect(url) as pg:
        while True:
            rows = lite.execute(
                "SELECT id, source_id, line_key, part, uuid, session_id, kind, tool_name, text, "
                "text_len, ts, cwd, embed_state FROM records WHERE id > ? AND source_id % ? = ? "
                "ORDER BY id LIMIT ?", (last, WORKERS, k, STEP)).fetchall()
            if not rows:
                break
            with pg.cursor() as cur, cur.copy(f"COPY records ({cols}) FROM STDIN") as cp:
                for r in rows:
                    text_bytes += len(r[8].encode())
                    cp.write_row((r[0], "gen", *r[1:]))
            pg.commit()
            last = rows[-1][0]
            if k == 0 and len(rows) == STEP and last // STEP % 5 == 0:
                log(f"    records ~{last:,}")
    lite.close()
    return text_bytes


def hnsw(url: str) -> float | None:
    """Build the HNSW index if it is not there; seconds it took (None: it was there)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        if pg.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'chunks_vec_hnsw'").fetchone():
            return None
        started = time.perf_counter()
        pg.execute("SET maintenance_work_mem = '2GB'")
        pg.execute("CREATE INDEX chunks_vec_hnsw ON chunks USING hnsw (vec vector_cosine_ops) "
                   "WITH (m = 16, ef_construction = 64)")
        return time.perf_counter() - started


def pg_size(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as pg:
        row = pg.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


async def timed(label: str, queries: list[str], fn: Any, out: dict[str, Any]) -> None:
    for q in queries:
        await fn(q)
    ms = []
    for q in queries:
        t = time.perf_counter()
        await fn(q)
        ms.append((time.perf_counter() - t) * 1000)
    out[label] = {**ss.summary(ms), "load": ss.loadavg()}
    log(f"    {label:40s} p50 {out[label]['p50_ms']:7.1f} ms  p95 {out[label]['p95_ms']:7.1f} ms "
        f"({out[label]['load']})")


async def time_sqlite(path: Path, base: dict[str, Any], project: str) -> dict[str, Any]:
    from ingest.db import connect
    from ingest.store import Store
    from mcp_server.search import Resources, SearchRequest, VectorIndex, search

    queries = base["queries"]
    fixed = ss.FixedEmbedder({q: v for q, v in zip(queries, base["qvecs"])})
    store = await Store.open(path)
    second = await connect(path, readonly=True)
    index = VectorIndex()
    await index.refresh(second)
    res = Resources(embedder=fixed, vector_index=index, vector_conn=second)
    out: dict[str, Any] = {}
    try:
        await timed("sqlite hybrid", queries, lambda q: search(
            store.conn, SearchRequest(q, limit=10), res), out)
        await timed("sqlite hybrid, project filter", queries, lambda q: search(
            store.conn, SearchRequest(q, limit=10, project=project), res), out)
    finally:
        await store.close()
        await second.close()
    return out


async def time_pg(url: str, base: dict[str, Any], project: str, label: str) -> dict[str, Any]:
    from ingest.pg.store import PgStore
    from mcp_server.search import SearchRequest
    from mcp_server.search.pg import search_pg

    queries = base["queries"]
    fixed = ss.FixedEmbedder({q: v for q, v in zip(queries, base["qvecs"])})
    store = await PgStore.open(PostgresUrl(url), "bench", os.environ, create=False)
    out: dict[str, Any] = {}
    try:
        await timed(f"postgresql hybrid ({label})", queries, lambda q: search_pg(
            store.conn, SearchRequest(q, limit=10), embedder=fixed), out)
        await timed(f"postgresql hybrid, project filter ({label})", queries, lambda q: search_pg(
            store.conn, SearchRequest(q, limit=10, project=project), embedder=fixed), out)
    finally:
        await store.close()
    return out


async def vector_agreement(url: str, base: dict[str, Any]) -> dict[str, float]:
    """Share of the exact scan's top-10 records the HNSW path returns (unfiltered)."""
    from ingest.pg.store import PgStore
    from mcp_server.search import SearchFilters
    from mcp_server.search.pg import vector as pgv

    store = await PgStore.open(PostgresUrl(url), "bench", os.environ, create=False)
    shares = []
    try:
        for q in base["qvecs"]:
            exact = await pgv.vector_ranks_pg(store.conn, q, SearchFilters(), 100, use_hnsw=False)
            approx = await pgv.vector_ranks_pg(store.conn, q, SearchFilters(), 100, use_hnsw=True)
            top = {rid for rid, _, _ in exact[:10]}
            shares.append(len(top & {rid for rid, _, _ in approx[:10]}) / max(len(top), 1))
    finally:
        await store.close()
    return {"recall@10": float(np.mean(shares))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deja-pgscale"))
    parser.add_argument("--scales", default="100k,1M")
    parser.add_argument("--hnsw", action="store_true", help="also build and time pgvector HNSW")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = ss.build_base(args.workdir)
    handle = server(args.workdir / "pg")
    report: dict[str, Any] = {}
    for scale in [ss.parse_scale(s) for s in args.scales.split(",")]:
        log(f"{ss.human(scale)} chunks")
        started = time.perf_counter()
        path = ss.generate(args.workdir, base, scale)
        log(f"  SQLite database ready ({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        url, info = pg_database(handle, path, scale)
        log(f"  PostgreSQL database ready ({time.perf_counter() - started:.0f} s)")
        from ingest.config import database_bytes

        entry: dict[str, Any] = {
            "sqlite_mb_per_1m_chunks": database_bytes(path) / 1e6 * 1e6 / scale,
            "postgresql_mb_per_1m_chunks": pg_size(url) / 1e6 * 1e6 / scale,
            "postgresql_load": info}
        lite = ss.make_connector(path, readonly=True)()
        project = lite.execute("SELECT project_dir FROM sources GROUP BY project_dir "
                               "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
        lite.close()
        entry.update(anyio.run(time_sqlite, path, base, project))
        entry.update(anyio.run(time_pg, url, base, project, "exact"))
        if args.hnsw:
            built = hnsw(url)
            if built is not None:
                info["hnsw_build_s"] = round(built, 1)
                log(f"  HNSW built in {built:.0f} s")
            entry["postgresql_mb_per_1m_chunks_hnsw"] = pg_size(url) / 1e6 * 1e6 / scale
            entry.update(anyio.run(time_pg, url, base, project, "hnsw"))
            entry["hnsw_agreement"] = anyio.run(vector_agreement, url, base)
            log(f"  HNSW top-10 agreement with exact: {entry['hnsw_agreement']}")
        report[ss.human(scale)] = entry
        log(json.dumps(entry, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
