"""Exact scan or HNSW for deja's vectors on PostgreSQL: latency of a top-100 query, and recall.

Why: issue 11 asks for "pgvector, HNSW or exact, whichever measures better at
these sizes". This bench times both on the same chunks:

- `--url URL`: a database deja ingested and embedded (its `chunks` table; the
  shared corpus gives ~11.5k), queried with the vectors of bench/questions.json's
  questions;
- `--synthetic N` (default 100000): N random-ish unit vectors (clustered
  around 200 centres, so neighbours exist), in a scratch table of the same
  database, queried with vectors near random centres.

For each: p50/p95 of `ORDER BY vec <=> q LIMIT 100` by exact scan, then with
an HNSW index (m=16, ef_construction=64, the pgvector defaults) at
ef_search 100 and 400, the index build time, and the share of the exact top
100 the index returns (recall@100). Also a filtered query (a tenth of the
rows pass): what HNSW returns when it filters after its scan.

    python bench/pg_vectors.py --url postgresql://...  [--synthetic 100000] [--queries 50]

Without --url a pgserver (the `test` extra) is started in a temporary folder,
and only the synthetic part runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ingest.pg.vector_text import vector_literal  # noqa: E402

K = 100


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _time(conn: Any, sql: str, queries: list[str], params: tuple[Any, ...] = ()
          ) -> tuple[list[float], list[list[int]]]:
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        rows = conn.execute(sql, (q, *params)).fetchall()
        times.append((time.perf_counter() - started) * 1000)
        results.append([r[0] for r in rows])
    return times, results


def _recall(exact: list[list[int]], approx: list[list[int]]) -> float:
    return statistics.mean(len(set(a) & set(e)) / max(len(e), 1) for e, a in zip(exact, approx))


def measure(conn: Any, table: str, queries: list[str], label: str) -> dict[str, Any]:
    """Exact and HNSW timings over `table` (id, grp, vec)."""
    n = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    out: dict[str, Any] = {"label": label, "rows": n}
    plain = f"SELECT id FROM {table} ORDER BY vec <=> %s::vector LIMIT {K}"
    filtered = f"SELECT id FROM {table} WHERE grp = 3 ORDER BY vec <=> %s::vector LIMIT {K}"
    conn.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
    _time(conn, plain, queries[:3])  # warm the cache
    t, exact = _time(conn, plain, queries)
    out["exact"] = {"p50_ms": round(_pct(t, .5), 1), "p95_ms": round(_pct(t, .95), 1)}
    t, exact_f = _time(conn, filtered, queries)
    out["exact_filtered"] = {"p50_ms": round(_pct(t, .5), 1), "p95_ms": round(_pct(t, .95), 1),
                             "hits": statistics.mean(len(r) for r in exact_f)}
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (vec vector_cosine_ops)")
    out["hnsw_build_s"] = round(time.perf_counter() - started, 1)
    for ef in (100, 400):
        conn.execute(f"SET hnsw.ef_search = {ef}")
        _time(conn, plain, queries[:3])
        t, approx = _time(conn, plain, queries)
        tf, approx_f = _time(conn, filtered, queries)
        out[f"hnsw_ef{ef}"] = {
            "p50_ms": round(_pct(t, .5), 1), "p95_ms": round(_pct(t, .95), 1),
            "recall_at_100": round(_recall(exact, approx), 3),
            "filtered_p50_ms": round(_pct(tf, .5), 1),
            "filtered_hits": statistics.mean(len(r) for r in approx_f),
            "filtered_recall": round(_recall(exact_f, approx_f), 3),
        }
    conn.execute("RESET hnsw.ef_search")
    conn.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
    return out


def corpus_part(conn: Any, n_queries: int) -> dict[str, Any]:
    """The deja chunks, copied into a scratch table with a group column (id % 10)."""
    import os

    from ingest.embed import load_configured_embedder

    questions = json.loads((REPO / "bench" / "questions.json").read_text())
    items = questions["questions"] if isinstance(questions, dict) else questions
    texts = [q["question"] for q in items][:n_queries]
    embedder = load_configured_embedder(os.environ)
    queries = [vector_literal(v) for v in embedder.embed(texts)]
    conn.execute("DROP TABLE IF EXISTS bench_corpus")
    conn.execute("CREATE TABLE bench_corpus AS SELECT id, (id % 10)::int AS grp, vec FROM chunks")
    conn.execute("ANALYZE bench_corpus")
    try:
        return measure(conn, "bench_corpus", queries, "deja chunks (real questions)")
    finally:
        conn.execute("DROP TABLE IF EXISTS bench_corpus")


def synthetic_part(conn: Any, n: int, n_queries: int, dim: int = 384) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    conn.execute("DROP TABLE IF EXISTS bench_synth")
    conn.execute(f"CREATE TABLE bench_synth (id BIGINT PRIMARY KEY, grp INT, vec vector({dim}))")
    with conn.cursor() as cur, cur.copy("COPY bench_synth (id, grp, vec) FROM STDIN") as copy:
        for start in range(0, n, 5000):
            m = min(5000, n - start)
            v = centres[rng.integers(0, 200, m)] + 0.8 * rng.standard_normal((m, dim))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            for i, row in enumerate(v):
                copy.write_row((start + i, (start + i) % 10, vector_literal(row)))
    conn.execute("ANALYZE bench_synth")
    q = centres[rng.integers(0, 200, n_queries)] + 0.8 * rng.standard_normal((n_queries, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    try:
        return measure(conn, "bench_synth", [vector_literal(v) for v in q],
                       f"synthetic {n:,} unit vectors")
    finally:
        conn.execute("DROP TABLE IF EXISTS bench_synth")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a deja database on PostgreSQL with embedded chunks")
    parser.add_argument("--synthetic", type=int, default=100_000, help="rows (0: skip)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import psycopg

    server = None
    url = args.url
    if url is None:
        from fixtures.postgres import start_server

        server = start_server(Path(tempfile.mkdtemp(prefix="deja-pgbench-")))
        name = server.new_database()
        url = server.uri(name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        if args.url:
            results.append(corpus_part(conn, args.queries))
        if args.synthetic:
            results.append(synthetic_part(conn, args.synthetic, args.queries))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['label']}: {r['rows']:,} rows, top-{K}")
            e, ef = r["exact"], r["exact_filtered"]
            print(f"  exact          p50 {e['p50_ms']:7.1f} ms  p95 {e['p95_ms']:7.1f} ms   "
                  f"filtered (1/10) p50 {ef['p50_ms']:.1f} ms, {ef['hits']:.0f} hits")
            print(f"  hnsw build     {r['hnsw_build_s']} s")
            for ef_s in (100, 400):
                h = r[f"hnsw_ef{ef_s}"]
                print(f"  hnsw ef={ef_s:<4}  p50 {h['p50_ms']:7.1f} ms  p95 {h['p95_ms']:7.1f} ms   "
                      f"recall@100 {h['recall_at_100']:.3f}   filtered p50 "
                      f"{h['filtered_p50_ms']:.1f} ms, {h['filtered_hits']:.1f} hits "
                      f"(recall {h['filtered_recall']:.3f})")
    if server is not None:
        server.handle.cleanup()  # pgserver stops the server it started
    return 0


if __name__ == "__main__":
    sys.exit(main())
