"""Search latency at scale: hybrid queries over 10k, 100k and 1M chunks.

Targets (issue): hybrid p95 <= 50 ms at 100k chunks and <= 250 ms at 1M; the
database size per million chunks; whether sqlite-vec's int8 or bit vectors
keep recall while cutting the KNN scan.

Not a test: it prints numbers (and writes them as JSON with --json).

How the corpora are made (cached in --workdir, reused on the next run):
1. base: the shared real transcripts are ingested and embedded by deja itself
   (`deja ingest --no-embed`, `deja embed`) into base.db. Its chunks give real
   MiniLM vectors of real transcript windows, with the real record texts,
   kinds and tool names. Its size per chunk is reported too.
2. scale-N.db: N chunks in a database created by `Store.open` (the product
   schema), filled straight with SQL: records copied from the base texts
   (plus two tokens each, one real word and one fresh identifier, so the FTS
   vocabulary grows with the corpus), ~1.12 chunks per record as in the real
   corpus, sessions of ~180 records, projects of ~25 sessions, timestamps
   spread over two years. Each chunk's vector is a real base vector plus 0.35
   of another random base vector plus Gaussian noise, normalised (cosine to
   its source ~0.9): the distribution stays MiniLM-like without 300 exact
   copies of each point. The FTS index is filled by the product's triggers,
   then optimized.
3. Timing: `mcp_server.search.search(conn, q, mode="hybrid")` on a connection
   opened by `Store.open`, for the first 50 questions of bench/questions.json,
   once as warm-up and then measured: with a fixed, precomputed query vector
   (the database side alone) and with the real embedder (what a user waits
   for). Also the two rankers alone (`_keyword_ranks`, `_vector_ranks`) and
   a project-filtered hybrid query.
4. Alternatives (at the largest scale, --alt): one scratch database holding
   the same vectors as float32 vec0 (exact KNN, the reference), int8 vec0 and
   bit[384] vec0 (both with the product's metadata columns), plus a plain
   table of float32 blobs for re-ranking. Coarse KNN (k=200) over int8 or bit,
   then exact cosine over those candidates from the float table; recall@10 is
   the agreement with the exact top 10 (numpy), for the real question vectors
   and for held-out in-distribution vectors.

The machine may be shared: the load average is printed next to each timing.

Usage:
    python bench/search_scale.py                         # 10k, 100k, 1M + alternatives
    python bench/search_scale.py --scales 10k,100k --no-alt
    python bench/search_scale.py --workdir /tmp/deja-scale --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DEJA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402

from ingest.db import make_connector  # noqa: E402
from ingest.embed import DEFAULT_MODEL  # noqa: E402
from ingest.store import Store  # noqa: E402

DIM = 384
N_QUERIES = 50
COARSE_K = 200
SEED = 20260601


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return "load %.1f" % os.getloadavg()[0]
    except OSError:
        return "load ?"


def parse_scale(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad scale {text!r} (10k, 100k, 1M ...)")
    return int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])


def human(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))]


def summary(ms: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Wall-clock percentiles, and CPU-time ones: on a shared machine a query
    waits for a core, and the process's CPU time is what it would take alone."""
    out = {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 95), 1),
           "max_ms": round(max(ms), 1), "mean_ms": round(statistics.fmean(ms), 1)}
    if cpu:
        out.update({"cpu_p50_ms": round(statistics.median(cpu), 1),
                    "cpu_p95_ms": round(pct(cpu, 95), 1)})
    return out


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def env_for_cli() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEJA_MODEL_CACHE", str(REPO / ".pytest_cache" / "deja-models"))
    env.pop("DEJA_EMBED", None)
    return env


def load_embedder() -> Any:
    from ingest.cli import load_configured_embedder

    return load_configured_embedder(env_for_cli())


# -- 1. base: real vectors of real transcript windows ------------------------------------


def build_base(workdir: Path) -> dict[str, Any]:
    """Ingest and embed the shared corpus with deja; cache what the generator needs."""
    cache = workdir / "base.npz"
    db = workdir / "base.db"
    if cache.exists():
        data = dict(np.load(cache, allow_pickle=False))
        meta = json.loads((workdir / "base.json").read_text())
        return {**data, **meta}
    projects = SHARED / "transcripts" / "projects"
    if not projects.is_dir():
        sys.exit(f"no shared transcripts at {projects}")
    cli = [sys.executable, "-m", "mcp_server.cli", "--db", str(db)]
    log(f"base: ingesting {projects}")
    subprocess.run([*cli, "ingest", "--root", str(projects), "--no-embed", "--json"], check=True,
                   env=env_for_cli(), cwd=REPO, stdout=subprocess.DEVNULL)
    log("base: embedding with the product (`deja embed`), ~1-2 min")
    t = time.perf_counter()
    subprocess.run([*cli, "embed", "--json", "--quiet"], check=True, env=env_for_cli(), cwd=REPO,
                   stdout=subprocess.DEVNULL)
    embed_s = time.perf_counter() - t  # ~0 when an earlier run left base.db complete
    conn = make_connector(db)()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = conn.execute(
        "SELECT c.id, c.record_id, v.embedding FROM chunks c JOIN vec_chunks v ON v.chunk_id = c.id "
        "ORDER BY c.id").fetchall()
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    chunk_record = np.array([r[1] for r in rows], dtype=np.int64)
    recs = conn.execute(
        "SELECT id, kind, COALESCE(tool_name, ''), text FROM records WHERE embed_state = 1 "
        "ORDER BY id").fetchall()
    rec_index = {r[0]: i for i, r in enumerate(recs)}
    n_chunks = len(rows)
    size = os.path.getsize(db)
    vocab: dict[str, int] = {}
    for r in recs:
        for w in re.findall(r"[A-Za-z][A-Za-z0-9_]{3,20}", r[3]):
            vocab[w.lower()] = vocab.get(w.lower(), 0) + 1
    conn.close()
    questions = json.loads((REPO / "bench" / "questions.json").read_text())["questions"]
    queries = [q["question"] for q in questions][:N_QUERIES]
    embedder = load_embedder()
    qvecs = embedder.embed(queries).astype(np.float32)
    meta = {
        "kinds": [r[1] for r in recs], "tools": [r[2] for r in recs], "texts": [r[3] for r in recs],
        "vocab": [w for w, _ in sorted(vocab.items(), key=lambda kv: -kv[1])[:20000]],
        "queries": queries, "base_db_bytes": size, "base_chunks": n_chunks,
        "base_records": len(recs), "base_embed_seconds": round(embed_s, 1),
    }
    chunk_rec = np.array([rec_index[r] for r in chunk_record], dtype=np.int64)
    np.savez(cache, vectors=vectors, chunk_rec=chunk_rec, qvecs=qvecs)
    (workdir / "base.json").write_text(json.dumps(meta))
    return {"vectors": vectors, "chunk_rec": chunk_rec, "qvecs": qvecs, **meta}


# -- 2. a synthetic database of N chunks ---------------------------------------------------


def make_vectors(base: dict[str, Any], src_chunks: np.ndarray, rng: np.random.Generator,
                 out: np.ndarray) -> None:
    """out[i] = normalise(base[src[i]] + 0.35 * base[random] + noise)."""
    bv = base["vectors"]
    step = 50_000
    for lo in range(0, len(src_chunks), step):
        hi = min(lo + step, len(src_chunks))
        v = bv[src_chunks[lo:hi]].copy()
        v += 0.35 * bv[rng.integers(0, len(bv), hi - lo)]
        v += rng.normal(0.0, 0.02, size=v.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[lo:hi] = v


def generate(workdir: Path, base: dict[str, Any], n_chunks: int) -> Path:
    path = workdir / f"scale-{human(n_chunks)}.db"
    done = workdir / f"scale-{human(n_chunks)}.done"
    if path.exists() and done.exists():
        return path
    remove_db(path)
    started = time.perf_counter()
    rng = np.random.default_rng(SEED + n_chunks)

    async def create() -> None:
        store = await Store.open(path)
        await store.close()

    anyio.run(create)
    conn = make_connector(path)()
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")

    ratio = base["base_chunks"] / base["base_records"]  # ~1.12 chunks per record
    n_records = max(1, int(round(n_chunks / ratio)))
    per_session = 180
    n_sessions = max(4, n_records // per_session)
    n_projects = max(2, n_sessions // 25)
    texts, kinds, tools, vocab = base["texts"], base["kinds"], base["tools"], base["vocab"]
    n_base = len(texts)

    # Sources and sessions: one file per session, sessions grouped into projects.
    t0 = np.datetime64("2024-06-01T00:00:00")
    span_s = 2 * 365 * 86400
    session_start = np.sort(rng.integers(0, span_s, n_sessions))
    project_of = rng.integers(0, n_projects, n_sessions)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sources (id, path, display_path, project_dir, layout, session_hint, session_id) "
        "VALUES (?, ?, ?, ?, 'session', ?, ?)",
        [(s + 1, f"/gen/-home-gen-p{project_of[s]}/{s:08d}.jsonl".encode(),
          f"/gen/-home-gen-p{project_of[s]}/{s:08d}.jsonl", f"-home-gen-p{project_of[s]}",
          f"sess-{s:08d}", f"sess-{s:08d}") for s in range(n_sessions)])
    conn.executemany(
        "INSERT INTO sessions (session_id, project_dir, cwd, first_ts) VALUES (?, ?, ?, ?)",
        [(f"sess-{s:08d}", f"-home-gen-p{project_of[s]}", f"/home/gen/p{project_of[s]}",
          str(t0 + np.timedelta64(int(session_start[s]), "s")) + ".000Z") for s in range(n_sessions)])
    conn.execute("COMMIT")

    # Records: a random base record each, sessions in contiguous blocks.
    rec_src = rng.integers(0, n_base, n_records)
    rec_session = np.minimum(np.arange(n_records) * n_sessions // n_records, n_sessions - 1)
    rec_ts_s = session_start[rec_session] + (np.arange(n_records) % per_session) * 20
    word_pick = rng.zipf(1.3, n_records) % len(vocab)
    ident = rng.integers(0, 1 << 40, n_records)
    log(f"  {human(n_chunks)}: {n_records} records, {n_sessions} sessions, {n_projects} projects")
    step = 20_000
    conn.execute("BEGIN")
    for lo in range(0, n_records, step):
        hi = min(lo + step, n_records)
        rows = []
        for i in range(lo, hi):
            b = int(rec_src[i])
            s = int(rec_session[i])
            ts = str(t0 + np.timedelta64(int(rec_ts_s[i]), "s")) + ".000Z"
            text = f"{texts[b]} {vocab[int(word_pick[i])]} id{int(ident[i]):x}"
            rows.append((i + 1, s + 1, f"g{i}", 0, f"{i:032x}", f"sess-{s:08d}", kinds[b],
                         tools[b] or None, text, len(text), ts, f"/home/gen/p{project_of[s]}", 1))
        conn.executemany(
            "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, tool_name, "
            "text, text_len, ts, cwd, embed_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows)
        if (lo // step) % 10 == 0:
            log(f"    records {hi}/{n_records} ({time.perf_counter() - started:.0f} s)")
    conn.execute("COMMIT")

    # Chunks: one per record, the rest as extra windows of random records.
    extra = n_chunks - n_records
    chunk_rec = np.concatenate([np.arange(n_records), rng.integers(0, n_records, max(extra, 0))])
    chunk_rec = np.sort(chunk_rec)[:n_chunks]
    seq = np.zeros(n_chunks, dtype=np.int64)
    same = np.concatenate([[False], chunk_rec[1:] == chunk_rec[:-1]])
    run = 0
    for i in range(n_chunks):  # seq within each record
        run = run + 1 if same[i] else 0
        seq[i] = run
    # A base chunk of the same base record when there is one, else any base chunk.
    by_rec: dict[int, list[int]] = {}
    for ci, ri in enumerate(base["chunk_rec"]):
        by_rec.setdefault(int(ri), []).append(ci)
    src_chunk = np.empty(n_chunks, dtype=np.int64)
    for i in range(n_chunks):
        options = by_rec.get(int(rec_src[chunk_rec[i]]))
        src_chunk[i] = options[min(int(seq[i]), len(options) - 1)] if options else rng.integers(
            0, len(base["vectors"]))
    vec_path = workdir / f"vectors-{human(n_chunks)}.npy"
    vectors = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n_chunks, DIM))
    make_vectors(base, src_chunk, rng, vectors)
    vectors.flush()

    conn.execute("BEGIN")
    conn.execute("INSERT INTO embedding_model (id, model_id, dim, created_at) VALUES "
                 "(1, ?, ?, '2026-06-01T00:00:00.000Z')", (DEFAULT_MODEL, DIM))
    for lo in range(0, n_chunks, step):
        hi = min(lo + step, n_chunks)
        crow, vrow = [], []
        for i in range(lo, hi):
            r = int(chunk_rec[i])
            b = int(rec_src[r])
            s = int(rec_session[r])
            ts = str(t0 + np.timedelta64(int(rec_ts_s[r]), "s")) + ".000Z"
            crow.append((i + 1, r + 1, int(seq[i]), 0, min(len(texts[b]), 1000)))
            vrow.append((i + 1, vectors[i].tobytes(), kinds[b], f"-home-gen-p{project_of[s]}",
                         f"sess-{s:08d}", tools[b], ts))
        conn.executemany("INSERT INTO chunks (id, record_id, seq, char_start, char_end) "
                         "VALUES (?, ?, ?, ?, ?)", crow)
        conn.executemany("INSERT INTO vec_chunks (chunk_id, embedding, kind, project_dir, "
                         "session_id, tool_name, ts) VALUES (?, ?, ?, ?, ?, ?, ?)", vrow)
        if (lo // step) % 10 == 0:
            log(f"    chunks {hi}/{n_chunks} ({time.perf_counter() - started:.0f} s)")
    conn.execute("COMMIT")
    log("    optimizing FTS")
    conn.execute("INSERT INTO records_fts(records_fts) VALUES ('optimize')")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    done.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
    log(f"  generated {path.name} in {time.perf_counter() - started:.0f} s")
    return path


def table_sizes(path: Path) -> dict[str, int]:
    """Bytes per logical table (vec0 and FTS shadow tables folded into their table)."""
    conn = make_connector(path)()
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        conn.close()
    out: dict[str, int] = {}
    for name, size in rows:
        key = ("vec_chunks" if name.startswith("vec_chunks") else
               "records_fts" if name.startswith("records_fts") else
               "records (+indexes)" if name.startswith(("records", "sqlite_autoindex_records")) else
               "chunks (+index)" if name.startswith(("chunks", "sqlite_autoindex_chunks")) else
               name.split("_")[0] if name.startswith("v") else "other")
        out[key] = out.get(key, 0) + int(size)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- 3. timing the product's search ----------------------------------------------------------


class FixedEmbedder:
    """Query vectors computed beforehand: times the database side alone."""

    model_id = DEFAULT_MODEL
    dim = DIM
    backend = "fixed"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


async def time_search(path: Path, base: dict[str, Any], embedder: Any) -> dict[str, Any]:
    from mcp_server import search as S

    queries = base["queries"]
    fixed: Any = FixedEmbedder({q: v for q, v in zip(queries, base["qvecs"])})
    store = await Store.open(path)
    conn = store.conn
    out: dict[str, Any] = {}
    try:
        project = list(await conn.execute_fetchall(
            "SELECT project_dir FROM sources GROUP BY project_dir ORDER BY COUNT(*) DESC LIMIT 1"))[0][0]

        async def run(label: str, fn: Any) -> None:
            for q in queries:  # warm-up: page cache and statement cache
                await fn(q)
            ms, cpu = [], []
            for q in queries:
                t, c = time.perf_counter(), time.process_time()
                await fn(q)
                ms.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            e = out[label] = {**summary(ms, cpu), "load": loadavg()}
            log(f"    {label:34s} p50 {e['p50_ms']:7.1f} ms  p95 {e['p95_ms']:7.1f} ms   "
                f"cpu p50 {e['cpu_p50_ms']:7.1f} ms  p95 {e['cpu_p95_ms']:7.1f} ms  ({e['load']})")

        hits_seen: list[int] = []

        async def hybrid_fixed(q: str) -> None:
            r = await S.search(conn, q, embedder=fixed, mode="hybrid", limit=10)
            assert r.vector_status == "ok", r.vector_status
            hits_seen.append(len(r.hits))

        await run("hybrid, fixed query vector", hybrid_fixed)
        out["hybrid_stages_mean_ms"] = await stage_breakdown(S, conn, queries, fixed)
        log("    stages (mean wall ms): " + ", ".join(
            f"{k} {v}" for k, v in out["hybrid_stages_mean_ms"].items()))
        await run("hybrid, real embedder", lambda q: S.search(conn, q, embedder=embedder,
                                                              mode="hybrid", limit=10))
        await run("hybrid, project filter", lambda q: S.search(
            conn, q, embedder=fixed, mode="hybrid", limit=10, project=project))
        await run("keyword mode", lambda q: S.search(conn, q, mode="keyword", limit=10))
        filters = S.SearchFilters()
        n = int(getattr(S, "FUSION", {}).get("candidates", 50))  # what hybrid asks each ranker
        if hasattr(S, "_keyword_ranks") and hasattr(S, "_vector_ranks"):
            await run(f"  FTS ranker alone ({n} cand.)", lambda q: S._keyword_ranks(conn, q, filters, n))
            await run(f"  KNN ranker alone ({n} cand.)", lambda q: S._vector_ranks(
                conn, fixed.table[q].tobytes(), filters, n))
        t = time.perf_counter()
        for q in queries:
            embedder.embed([q])
        out["query_embedding_ms"] = round((time.perf_counter() - t) * 1000 / len(queries), 1)
        out["mean_hits"] = statistics.fmean(hits_seen)
    finally:
        await store.close()
    return out


async def stage_breakdown(S: Any, conn: Any, queries: list[str], fixed: Any) -> dict[str, float]:
    """Mean wall time of each step of a hybrid search (the module's helpers, wrapped)."""
    names = [n for n in ("resolve_project", "_keyword_ranks", "_vector_search", "_vector_ranks",
                         "_add_pending", "_smooth", "_materialize") if hasattr(S, n)]
    spent: dict[str, float] = {n: 0.0 for n in names}
    originals = {n: getattr(S, n) for n in names}

    def wrap(name: str, fn: Any) -> Any:
        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return timed

    total = 0.0
    try:
        for n in names:
            setattr(S, n, wrap(n, originals[n]))
        for q in queries:
            t = time.perf_counter()
            await S.search(conn, q, embedder=fixed, mode="hybrid", limit=10)
            total += time.perf_counter() - t
    finally:
        for n, fn in originals.items():
            setattr(S, n, fn)
    out = {n: round(v * 1000 / len(queries), 1) for n, v in spent.items()}
    out["total"] = round(total * 1000 / len(queries), 1)
    return out


# -- 4. int8 / bit coarse KNN + float re-rank --------------------------------------------------


def build_alt(workdir: Path, n: int) -> Path:
    path = workdir / f"alt-{human(n)}.db"
    done = workdir / f"alt-{human(n)}.done"
    if path.exists() and done.exists():
        return path
    remove_db(path)
    vectors = np.load(workdir / f"vectors-{human(n)}.npy", mmap_mode="r")
    src = make_connector(workdir / f"scale-{human(n)}.db", readonly=True)()
    meta = src.execute("SELECT chunk_id, kind, project_dir, session_id, tool_name, ts "
                       "FROM vec_chunks ORDER BY chunk_id").fetchall()
    src.close()
    conn = make_connector(path)()
    conn.execute("PRAGMA synchronous = OFF")
    md = "kind text, project_dir text, session_id text, tool_name text, ts text"
    conn.execute(f"CREATE VIRTUAL TABLE vf USING vec0(chunk_id INTEGER PRIMARY KEY, "
                 f"embedding float[{DIM}] distance_metric=cosine)")
    conn.execute(f"CREATE VIRTUAL TABLE vi8 USING vec0(chunk_id INTEGER PRIMARY KEY, "
                 f"embedding int8[{DIM}] distance_metric=cosine, {md})")
    conn.execute(f"CREATE VIRTUAL TABLE vbit USING vec0(chunk_id INTEGER PRIMARY KEY, "
                 f"embedding bit[{DIM}], {md})")
    conn.execute("CREATE TABLE fstore (chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")
    scale = int8_scale(vectors)
    (workdir / f"alt-{human(n)}.json").write_text(json.dumps({"int8_scale": scale}))
    step = 20_000
    started = time.perf_counter()
    conn.execute("BEGIN")
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        v = np.asarray(vectors[lo:hi])
        q8 = quantize_int8(v, scale)
        qb = quantize_bit(v)
        rows = meta[lo:hi]
        conn.executemany("INSERT INTO vf VALUES (?, ?)",
                         [(r[0], v[j].tobytes()) for j, r in enumerate(rows)])
        conn.executemany("INSERT INTO vi8 VALUES (?, vec_int8(?), ?, ?, ?, ?, ?)",
                         [(r[0], q8[j].tobytes(), *r[1:]) for j, r in enumerate(rows)])
        conn.executemany("INSERT INTO vbit VALUES (?, vec_bit(?), ?, ?, ?, ?, ?)",
                         [(r[0], qb[j].tobytes(), *r[1:]) for j, r in enumerate(rows)])
        conn.executemany("INSERT INTO fstore VALUES (?, ?)",
                         [(r[0], v[j].tobytes()) for j, r in enumerate(rows)])
        if (lo // step) % 10 == 0:
            log(f"    alt {hi}/{n} ({time.perf_counter() - started:.0f} s)")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    done.write_text("ok")
    return path


def int8_scale(vectors: np.ndarray) -> float:
    """Map the components' range (99.99th percentile of |x|) onto int8."""
    sample = np.asarray(vectors[: min(len(vectors), 100_000)])
    return float(127.0 / np.quantile(np.abs(sample), 0.9999))


def quantize_int8(v: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(v * scale), -127, 127).astype(np.int8)


def quantize_bit(v: np.ndarray) -> np.ndarray:
    return np.packbits(v > 0, axis=1, bitorder="little")


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    """chunk ids (1-based) of the exact cosine top k, by numpy in blocks."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    step = 200_000
    for lo in range(0, len(vectors), step):
        block = np.asarray(vectors[lo:lo + step])
        sims = queries @ block.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, idx, axis=1)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, idx + lo], axis=1)
        order = np.argsort(-all_s, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return [[int(i) + 1 for i in row] for row in best_i]


def time_alt(workdir: Path, base: dict[str, Any], n: int) -> dict[str, Any]:
    path = build_alt(workdir, n)
    scale = json.loads((workdir / f"alt-{human(n)}.json").read_text())["int8_scale"]
    vectors = np.load(workdir / f"vectors-{human(n)}.npy", mmap_mode="r")
    rng = np.random.default_rng(SEED)
    # Held-out in-distribution queries: noisy versions of random corpus points.
    held = np.asarray(vectors[np.sort(rng.choice(n, N_QUERIES, replace=False))]).copy()
    held += rng.normal(0, 0.03, held.shape).astype(np.float32)
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    sets = {"questions": np.asarray(base["qvecs"], dtype=np.float32), "in-distribution": held}
    conn = make_connector(path, readonly=True)()
    conn.execute("PRAGMA cache_size = -2000000")
    sizes = table_sizes(path)
    results: dict[str, Any] = {"sizes_bytes": sizes}

    def rerank(cands: list[int], q: np.ndarray) -> list[int]:
        rows = conn.execute(
            f"SELECT chunk_id, embedding FROM fstore WHERE chunk_id IN ({','.join('?' * len(cands))})",
            cands).fetchall()
        ids = np.array([r[0] for r in rows])
        m = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
        return [int(i) for i in ids[np.argsort(-(m @ q))[:10]]]

    def f32(q: np.ndarray) -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT chunk_id FROM vf WHERE embedding MATCH ? AND k = 10", (q.tobytes(),))]

    def i8(q: np.ndarray, k: int = COARSE_K) -> list[int]:
        c = [r[0] for r in conn.execute(
            "SELECT chunk_id FROM vi8 WHERE embedding MATCH vec_int8(?) AND k = ?",
            (quantize_int8(q[None], scale)[0].tobytes(), k))]
        return rerank(c, q)

    def i8_only(q: np.ndarray) -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT chunk_id FROM vi8 WHERE embedding MATCH vec_int8(?) AND k = 10",
            (quantize_int8(q[None], scale)[0].tobytes(),))]

    def bit(q: np.ndarray, k: int = COARSE_K) -> list[int]:
        c = [r[0] for r in conn.execute(
            "SELECT chunk_id FROM vbit WHERE embedding MATCH vec_bit(?) AND k = ?",
            (quantize_bit(q[None])[0].tobytes(), k))]
        return rerank(c, q)

    # The same bits in numpy (48 MB per million in RAM): Hamming distance by
    # XOR + popcount, with none of vec0's per-k cost (its top-k merge grows with k).
    packed = np.concatenate([quantize_bit(np.asarray(vectors[lo:lo + 100_000]))
                             for lo in range(0, n, 100_000)])
    words = np.ascontiguousarray(packed).view(np.uint64)

    def np_bit(q: np.ndarray, k: int) -> list[int]:
        qw = quantize_bit(q[None])[0].view(np.uint64)
        d = np.bitwise_count(words ^ qw).sum(axis=1, dtype=np.uint16)
        idx = np.argpartition(d, k)[:k]
        return rerank([int(i) + 1 for i in idx], q)

    variants = {
        "float32 vec0 exact (k=10)": f32,
        "int8 vec0 alone (k=10)": i8_only,
        f"int8 vec0 k={COARSE_K} + float rerank": i8,
        f"bit[384] vec0 k={COARSE_K} + float rerank": bit,
        "bit[384] vec0 k=400 + float rerank": lambda q: bit(q, 400),
        "bit[384] vec0 k=1000 + float rerank": lambda q: bit(q, 1000),
        "bit in numpy k=1000 + float rerank": lambda q: np_bit(q, 1000),
        "bit in numpy k=3000 + float rerank": lambda q: np_bit(q, 3000),
    }
    for set_name, qs in sets.items():
        truth = exact_top(vectors, qs)
        for name, fn in variants.items():
            for q in qs[:10]:
                fn(q)  # warm-up
            ms, cpu, recall = [], [], []
            for q, t in zip(qs, truth):
                t0, c0 = time.perf_counter(), time.process_time()
                got = fn(q)
                ms.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                recall.append(len(set(got[:10]) & set(t)) / 10)
            entry = {**summary(ms, cpu), "recall_at_10": round(statistics.fmean(recall), 3),
                     "min_recall": round(min(recall), 2), "load": loadavg()}
            results[f"{set_name}: {name}"] = entry
            log(f"    [{set_name}] {name:38s} p50 {entry['p50_ms']:7.1f} ms  p95 {entry['p95_ms']:7.1f} ms"
                f"  cpu p50 {entry['cpu_p50_ms']:7.1f}  p95 {entry['cpu_p95_ms']:7.1f}"
                f"  recall@10 {entry['recall_at_10']:.3f} (min {entry['min_recall']})  ({entry['load']})")
    # Recall of bit coarse + exact rerank against k, computed in numpy alone.
    curve: dict[str, dict[int, float]] = {}
    for set_name, qs in sets.items():
        truth = exact_top(vectors, qs)
        curve[set_name] = {}
        for k in (200, 500, 1000, 2000, 5000, 10000):
            rec = []
            for q, t in zip(qs, truth):
                d = np.bitwise_count(words ^ quantize_bit(q[None])[0].view(np.uint64)).sum(
                    axis=1, dtype=np.uint16)
                idx = np.sort(np.argpartition(d, k)[:k])
                sims = np.asarray(vectors[idx]) @ q
                top = {int(i) + 1 for i in idx[np.argsort(-sims)[:10]]}
                rec.append(len(top & set(t)) / 10)
            curve[set_name][k] = round(statistics.fmean(rec), 3)
        log(f"    [{set_name}] bit coarse + rerank, recall@10 by k: {curve[set_name]}")
    results["bit_recall_by_k"] = curve
    conn.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deja-search-scale"),
                        help="where generated databases are cached (several GB at 1M)")
    parser.add_argument("--scales", default="10k,100k,1M",
                        help="comma-separated chunk counts (default 10k,100k,1M)")
    parser.add_argument("--no-alt", action="store_true", help="skip the int8/bit comparison")
    parser.add_argument("--alt-scale", type=parse_scale, help="scale for the comparison "
                        "(default: the largest)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--alt-only", action="store_true",
                        help="only the int8/bit comparison (at --alt-scale, default the largest)")
    parser.add_argument("--generate-only", action="store_true",
                        help="build and cache the databases, time nothing")
    args = parser.parse_args(argv)
    scales = [parse_scale(s) for s in args.scales.split(",") if s.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)

    base = build_base(args.workdir)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_at_start": loadavg()},
        "search_py": {"mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(
            (REPO / "mcp_server" / "search.py").stat().st_mtime)),
            "fusion": getattr(__import__("mcp_server.search").search, "FUSION", None)},
        "base": {"db_bytes": base["base_db_bytes"], "chunks": base["base_chunks"],
                 "records": base["base_records"],
                 "bytes_per_million_chunks": round(base["base_db_bytes"] / base["base_chunks"] * 1e6)},
        "scales": {},
    }
    log(f"base corpus: {base['base_records']} records, {base['base_chunks']} chunks, "
        f"{base['base_db_bytes'] / 1e6:.1f} MB "
        f"({base['base_db_bytes'] / base['base_chunks'] * 1e6 / 1e9:.2f} GB per 1M chunks)")
    embedder = load_embedder()
    for n in ([] if args.alt_only else scales):
        log(f"scale {human(n)}")
        path = generate(args.workdir, base, n)
        if args.generate_only:
            continue
        size = os.path.getsize(path)
        entry: dict[str, Any] = {
            "db_bytes": size, "gb_per_million_chunks": round(size / n * 1e6 / 1e9, 2),
            "tables_bytes": table_sizes(path),
        }
        log(f"    file {size / 1e9:.2f} GB = {entry['gb_per_million_chunks']} GB per 1M chunks; "
            + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in entry["tables_bytes"].items()))
        entry.update(anyio.run(time_search, path, base, embedder))
        report["scales"][human(n)] = entry
    if args.generate_only:
        if not args.no_alt and scales:
            build_alt(args.workdir, args.alt_scale or max(scales))
        return 0
    if not args.no_alt and scales:
        n = args.alt_scale or max(scales)
        log(f"alternatives at {human(n)}")
        report["alternatives"] = {human(n): time_alt(args.workdir, base, n)}
    report["machine"]["load_at_end"] = loadavg()
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
