"""Keyword (FTS5 BM25) ranker latency at 100k / 1M records, and what speeds it up.

A research record: written against the schema-4 databases bench/search_scale.py
generated then (`scale-100k.db`, one-column records_fts). Its findings (rank
inside the FTS table, exact stems for document counts, a posting budget for
the OR query) are in mcp_server/search/keyword.py.

What it needs: a database bench/search_scale.py generated, in --dbdir:
`scale-<N>.db` (schema 4) when there is one, else today's `scale-<N>-v<schema>.db`
(`python bench/search_scale.py --scales 100k --generate-only`). A schema-5+
database has the context column: the vocabulary is then read for the text
column only and records_fts ranks with the product's weights (1.0, 0.25), as
mcp_server/search/keyword.py does; the variants do not model the context
column otherwise (--context estimates it on two tables of its own).

What it measures, on the databases bench/search_scale.py generates (opened
read-only, never written):

1. Latency of variants of `mcp_server.search.keyword.keyword_ranks` (re-implemented
   here synchronously on a plain sqlean connection with the product's pragmas,
   so no aiosqlite thread hop: add ~0.1 ms per statement for the product),
   for the first 50 questions of bench/questions.json (no filters, n=100
   candidates, as hybrid asks). Each variant: one warm-up pass, then
   --repeats measured passes; p50/p95 over the 50 queries of each pass, the
   median of those across passes is printed, with CPU-time p50/p95 (what the
   query costs alone on a shared machine) and the load average.
   Knobs a variant can turn:
     join    "full": the product's SQL (FTS JOIN records LEFT JOIN sources,
             ORDER BY bm25 LIMIT n): every matching row is looked up in
             `records` before the sort. "late": rank in the FTS table alone
             (SELECT rowid, bm25(...) ... ORDER BY bm25 LIMIT n); only the
             n winners would be joined (unfiltered queries need no join).
     share   OR terms found in more than this share of records are dropped
     terms   at most this many OR terms (the rarest)
     budget  keep the rarest OR terms while their summed document counts
             stay <= budget * records (at least one term): a bound on the
             postings BM25 has to score, which is what the time follows
     mmap    PRAGMA mmap_size for the connection (0 = off, the product)
     enough  skip the OR query when the AND query found >= this many
3. Agreement with the unpruned ranker (AND, then OR of every non-stopword
   term, exactly today's code with no pruning) at each scale: mean overlap
   of the top 10 and top 100 record ids (|A & R| / |R|).
4. --context: the effect of a second FTS column (the previous record's text
   in the same file, <= 2000 chars, bm25 weight 0.25). Builds, in --workdir,
   two contentless FTS5 tables over the same records with the product
   tokenizer, fts5(text) and fts5(text, context), and times the same OR
   queries over each (late join, with and without the pruning rule).

Usage:
    python bench/keyword_scale.py                     # 100k and 1M, all variants
    python bench/keyword_scale.py --scales 100k --repeats 5
    python bench/keyword_scale.py --context --scales 100k   # the two-column estimate
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.db import driver, fts_text  # noqa: E402
from ingest.migrations import SCHEMA_VERSION  # noqa: E402
from mcp_server.search.terms import FtsTerm, build_fts_terms  # noqa: E402

N = 100
N_QUERIES = 50


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load() -> str:
    return "%.1f/%.1f" % os.getloadavg()[:2]


def pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))]


@dataclass(frozen=True)
class Variant:
    name: str
    join: str = "full"
    share: float | None = 0.2
    terms: int | None = 8
    budget: float | None = None
    mmap: int = 0
    enough: int | None = None
    table: str = "records_fts"
    weights: str = ""
    cap: int | None = None  # like budget, in postings (summed document counts), not a share
    df: str = "prefix"  # "prefix": today's _doc_counts; "stem": exact porter stems


FULL_SQL = """
SELECT r.id, bm25({t}{w})
FROM {t}
JOIN records r ON r.id = {t}.rowid
LEFT JOIN sources src ON src.id = r.source_id
WHERE {t} MATCH ?
ORDER BY bm25({t}{w})
LIMIT ?
"""
LATE_SQL = "SELECT rowid, bm25({t}{w}) FROM {t} WHERE {t} MATCH ? ORDER BY bm25({t}{w}) LIMIT ?"


def connect(path: Path, mmap: int) -> Any:
    conn = driver().connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                            check_same_thread=False)
    conn.execute("PRAGMA cache_size = -32000")  # as ingest.db.make_connector
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA mmap_size = {int(mmap)}")
    return conn


def doc_counts(conn: Any, terms: list[FtsTerm], vocab: str = "records_fts_vocab") -> dict[str, int]:
    """As mcp_server.search's document counts once were: the stem guessed as a prefix."""
    words = {w for t in terms for w in t.words}
    prefixes = {w: [fts_text(w).strip()[:i] for i in range(len(w), 2, -1)] or [w] for w in words}
    wanted = sorted({p for ps in prefixes.values() for p in ps})
    if not wanted:
        return {}
    found = dict(conn.execute(
        f"SELECT term, doc FROM {vocab} WHERE term IN ({', '.join('?' for _ in wanted)})"
        f"{text_column(conn, vocab)}", wanted).fetchall())
    return {w: next((found[p] for p in ps if p in found), 0) for w, ps in prefixes.items()}


def text_column(conn: Any, vocab: str) -> str:
    """The vocabulary filter to the text column: a schema-5+ 'col' vocabulary
    (text and context) has a row per column; a 'row' one (schema 4) has none."""
    columns = {r[1] for r in conn.execute(f"PRAGMA table_info({vocab})").fetchall()}
    return " AND col = 'text'" if "col" in columns else ""


def stem_counts(conn: Any, terms: list[FtsTerm], vocab: str = "records_fts_vocab") -> dict[str, int]:
    """Records containing each term, from its exact indexed tokens: the term's
    words are tokenized by a temporary in-memory FTS5 table with the product
    tokenizer (fts5vocab 'instance' lists the stems), then looked up in the
    vocabulary; a phrase counts as its rarest token. _doc_counts guesses the stem
    as a prefix of the word, which misses use->us, only->onli, key->kei,
    library->librari, ...: those get 0 (rarest, always kept) or a wrong prefix's
    count."""
    conn.execute("DELETE FROM temp.deja_tok")
    conn.executemany("INSERT INTO temp.deja_tok (rowid, t) VALUES (?, ?)",
                     [(i, fts_text(" ".join(t.words))) for i, t in enumerate(terms)])
    stems: dict[int, list[str]] = {}
    for i, term in conn.execute("SELECT doc, term FROM temp.deja_tok_v").fetchall():
        stems.setdefault(i, []).append(term)
    wanted = sorted({s for ss in stems.values() for s in ss})
    found = dict(conn.execute(
        f"SELECT term, doc FROM {vocab} WHERE term IN ({', '.join('?' for _ in wanted)})"
        f"{text_column(conn, vocab)}", wanted).fetchall()) if wanted else {}
    return {t.fts: min((found.get(s, 0) for s in stems.get(i, [])), default=0)
            for i, t in enumerate(terms)}


def or_query(conn: Any, terms: list[FtsTerm], v: Variant, total: int, vocab: str) -> str | None:
    content = [t for t in terms if not t.stop] or terms
    if len(terms) < 2:
        return None
    if v.share is None and v.terms is None and v.budget is None and v.cap is None:
        return " OR ".join(t.fts for t in content)
    if v.df == "stem":
        df = stem_counts(conn, content, vocab)
    else:
        counts = doc_counts(conn, content, vocab)
        df = {t.fts: min((counts.get(w, 0) for w in t.words), default=0) for t in content}
    ranked = sorted(content, key=lambda t: df[t.fts])
    kept = ranked
    if v.share is not None:
        kept = [t for t in kept if df[t.fts] <= v.share * total]
    if v.terms is not None:
        kept = kept[:v.terms]
    limit = min(v.budget * total if v.budget is not None else float("inf"),
                v.cap if v.cap is not None else float("inf"))
    if limit != float("inf"):
        acc, cut = 0, []
        for t in kept:
            acc += df[t.fts]
            if cut and acc > limit:
                break
            cut.append(t)
        kept = cut
    if not kept:
        kept = ranked[:2] if limit == float("inf") else ranked[:1]
    return " OR ".join(t.fts for t in kept)


class Ranker:
    def __init__(self, path: Path, v: Variant) -> None:
        self.v = v
        self.conn = connect(path, v.mmap)
        self.total = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
        sql = FULL_SQL if v.join == "full" else LATE_SQL
        self.vocab = v.table + "_vocab"
        weights = v.weights
        if v.table == "records_fts" and not weights and text_column(self.conn, self.vocab):
            weights = ", 1.0, 0.25"  # the product's bm25 weights of text and context
        self.sql = sql.format(t=v.table, w=weights)
        tok = "tokenize='porter unicode61 remove_diacritics 2'"
        self.conn.execute(f"CREATE VIRTUAL TABLE temp.deja_tok USING fts5(t, {tok})")
        self.conn.execute("CREATE VIRTUAL TABLE temp.deja_tok_v USING fts5vocab(temp, deja_tok, 'instance')")

    def __call__(self, query: str) -> list[int]:
        terms = build_fts_terms(query)
        if not terms:
            return []
        and_q = " ".join(t.fts for t in terms)
        out = [rid for rid, _ in self.conn.execute(self.sql, (and_q, N)).fetchall()]
        need = N if self.v.enough is None else self.v.enough
        if len(out) < need:
            or_q = or_query(self.conn, terms, self.v, self.total, self.vocab)
            if or_q is not None:
                seen = set(out)
                for rid, _ in self.conn.execute(self.sql, (or_q, N)).fetchall():
                    if rid not in seen:
                        seen.add(rid)
                        out.append(rid)
        # "late": the winners would now be joined to records (cheap, n rows); the
        # benchmark has no filters, so the join is only a lookup of n ids.
        if self.v.join == "late" and self.v.table == "records_fts" and out:
            self.conn.execute(f"SELECT id FROM records WHERE id IN ({','.join('?' * len(out[:N]))})",
                              out[:N]).fetchall()
        return out[:N]

    def close(self) -> None:
        self.conn.close()


def time_variant(path: Path, v: Variant, queries: list[str], repeats: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    r = Ranker(path, v)
    try:
        results = {q: r(q) for q in queries}  # warm-up, and the answers
        p50, p95, c50, c95 = [], [], [], []
        for _ in range(repeats):
            ms, cpu = [], []
            for q in queries:
                t, c = time.perf_counter(), time.process_time()
                r(q)
                ms.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            p50.append(statistics.median(ms))
            p95.append(pct(ms, 95))
            c50.append(statistics.median(cpu))
            c95.append(pct(cpu, 95))
    finally:
        r.close()
    stats = {"p50": round(statistics.median(p50), 1), "p95": round(statistics.median(p95), 1),
             "cpu_p50": round(statistics.median(c50), 1), "cpu_p95": round(statistics.median(c95), 1),
             "p95_runs": [round(x, 1) for x in p95], "load": load()}
    return stats, results


def overlap(got: dict[str, list[int]], ref: dict[str, list[int]], k: int,
            key: dict[int, str] | None = None) -> float:
    """Mean |top k of got & top k of ref| / |top k of ref|, by record id, or by
    `key` (a record's base text: the generator copies each real text hundreds of
    times, so equal-scoring copies make id overlap look worse than it is)."""
    vals = []
    for q, r in ref.items():
        f = (lambda ids: {key[i] for i in ids}) if key else set
        rk = f(r[:k])
        if rk:
            vals.append(len(f(got[q][:k]) & rk) / len(rk))
    return round(statistics.fmean(vals), 3) if vals else 1.0


def base_texts(path: Path, *answers: dict[str, list[int]]) -> dict[int, str]:
    """Record id -> its base text (the generator appends ' <word> id<hex>')."""
    ids = sorted({i for a in answers for r in a.values() for i in r})
    conn = connect(path, 0)
    out: dict[int, str] = {}
    for lo in range(0, len(ids), 500):
        part = ids[lo:lo + 500]
        for rid, text in conn.execute(
                f"SELECT id, text FROM records WHERE id IN ({','.join('?' * len(part))})", part):
            out[rid] = text.rsplit(" ", 2)[0]
    conn.close()
    return out


MM = 8 << 30
VARIANTS = [
    Variant("product: full join, share 20%, 8 terms"),
    Variant("late, stem df, 20%/8, mmap", join="late", df="stem", mmap=MM),
    Variant("late, stem df, 10%/8, mmap", join="late", df="stem", share=0.10, mmap=MM),
    Variant("late, stem df, 5%/8, mmap", join="late", df="stem", share=0.05, mmap=MM),
    Variant("late, stem df, 20%/8 budget 20%, mmap", join="late", df="stem", budget=0.2, mmap=MM),
    Variant("late, stem df, 20%/8 budget 10%, mmap", join="late", df="stem", budget=0.1, mmap=MM),
    Variant("late, stem df, 10%/8 budget 10%, mmap", join="late", df="stem", share=0.1, budget=0.1, mmap=MM),
    Variant("late, stem df, 20%/12, mmap", join="late", df="stem", terms=12, mmap=MM),
    Variant("late, stem df, 12 terms, cap 400k, mmap", join="late", df="stem", share=None, terms=12, cap=400_000, mmap=MM),
    Variant("late, stem df, 12 terms, cap 250k, mmap", join="late", df="stem", share=None, terms=12, cap=250_000, mmap=MM),
    Variant("late, stem df, 12 terms, cap 150k, mmap", join="late", df="stem", share=None, terms=12, cap=150_000, mmap=MM),
    Variant("late, stem df, 20%/12, cap 250k, mmap", join="late", df="stem", terms=12, cap=250_000, mmap=MM),
    Variant("product + mmap 8 GB", mmap=8 << 30),
    Variant("late join, 20%/8", join="late"),
    Variant("late join, 20%/8, mmap", join="late", mmap=8 << 30),
    Variant("late, 10%/8, mmap", join="late", share=0.10, mmap=8 << 30),
    Variant("late, 5%/8, mmap", join="late", share=0.05, mmap=8 << 30),
    Variant("late, 20%/4, mmap", join="late", terms=4, mmap=8 << 30),
    Variant("late, 20%/8, budget 10%, mmap", join="late", budget=0.10, mmap=8 << 30),
    Variant("late, 20%/8, budget 5%, mmap", join="late", budget=0.05, mmap=8 << 30),
    Variant("late, 20%/8, budget 3%, mmap", join="late", budget=0.03, mmap=8 << 30),
    Variant("late, 20%/8, skip OR if AND>=10, mmap", join="late", enough=10, mmap=8 << 30),
]
REFERENCE = Variant("reference: unpruned", join="late", share=None, terms=None, mmap=8 << 30)


def run_scale(path: Path, queries: list[str], repeats: int, variants: list[Variant]) -> dict[str, Any]:
    log(f"{path.name}: reference (unpruned OR) ...")
    ref_stats, ref = time_variant(path, REFERENCE, queries, 1)
    out: dict[str, Any] = {REFERENCE.name: {**ref_stats, "top10": 1.0, "top100": 1.0}}
    log(f"  {REFERENCE.name:44s} p50 {ref_stats['p50']:7.1f}  p95 {ref_stats['p95']:7.1f}  ({ref_stats['load']})")
    for v in variants:
        stats, got = time_variant(path, v, queries, repeats)
        key = base_texts(path, ref, got)
        stats["top10"], stats["top100"] = overlap(got, ref, 10), overlap(got, ref, 100)
        stats["text10"], stats["text100"] = overlap(got, ref, 10, key), overlap(got, ref, 100, key)
        out[v.name] = stats
        log(f"  {v.name:44s} p50 {stats['p50']:7.1f}  p95 {stats['p95']:7.1f}  cpu p50 {stats['cpu_p50']:7.1f}"
            f"  p95 {stats['cpu_p95']:7.1f}  ids@10 {stats['top10']:.3f} @100 {stats['top100']:.3f}"
            f"  texts@10 {stats['text10']:.3f} @100 {stats['text100']:.3f}"
            f"  p95 runs {stats['p95_runs']}  ({stats['load']})")
    return out


# -- the second column (context) estimate -------------------------------------------------


def build_context(src: Path, dest: Path) -> None:
    """Two contentless FTS5 tables over src's records: fts1(text), fts2(text, context)."""
    done = Path(str(dest) + ".done")
    if dest.exists() and done.exists():
        return
    for suffix in ("", "-wal", "-shm"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
    conn = driver().connect(str(dest), isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")
    conn.execute(f"ATTACH 'file:{src}?mode=ro' AS s")
    tok = "tokenize='porter unicode61 remove_diacritics 2'"
    conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE VIRTUAL TABLE fts1 USING fts5(text, content='', {tok})")
    conn.execute(f"CREATE VIRTUAL TABLE fts2 USING fts5(text, context, content='', {tok})")
    conn.execute("CREATE VIRTUAL TABLE fts1_vocab USING fts5vocab(fts1, 'row')")
    conn.execute("CREATE VIRTUAL TABLE fts2_vocab USING fts5vocab(fts2, 'row')")
    conn.create_function("deja_fts_text", 1, fts_text, deterministic=True)
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO records (id) SELECT id FROM s.records")
    conn.execute("INSERT INTO fts1 (rowid, text) SELECT id, deja_fts_text(text) FROM s.records")
    log(f"  fts1 built ({time.perf_counter() - started:.0f} s)")
    conn.execute(
        "INSERT INTO fts2 (rowid, text, context) SELECT id, deja_fts_text(text), "
        "deja_fts_text(substr(LAG(text) OVER (PARTITION BY source_id ORDER BY id), 1, 2000)) "
        "FROM s.records")
    conn.execute("COMMIT")
    log(f"  fts2 built ({time.perf_counter() - started:.0f} s), optimizing")
    conn.execute("INSERT INTO fts1(fts1) VALUES ('optimize')")
    conn.execute("INSERT INTO fts2(fts2) VALUES ('optimize')")
    sizes = dict(conn.execute("SELECT substr(name, 1, 4), SUM(pgsize) FROM dbstat "
                              "WHERE name LIKE 'fts%' GROUP BY 1").fetchall())
    conn.close()
    done.write_text(json.dumps({"seconds": round(time.perf_counter() - started), "bytes": sizes}))


def run_context(path: Path, workdir: Path, queries: list[str], repeats: int) -> dict[str, Any]:
    dest = workdir / f"context-{path.stem}.db"
    log(f"{dest.name}: building (once)")
    build_context(path, dest)
    log(f"  sizes: {Path(str(dest) + '.done').read_text()}")
    mm = 8 << 30
    variants = [
        Variant("fts(text): unpruned", join="late", share=None, terms=None, mmap=mm, table="fts1"),
        Variant("fts(text): 20%/8", join="late", mmap=mm, table="fts1"),
        Variant("fts(text): stem, 20%/12 cap 250k", join="late", df="stem", terms=12, cap=250_000,
                mmap=mm, table="fts1"),
        Variant("fts(text,context): unpruned", join="late", share=None, terms=None, mmap=mm,
                table="fts2", weights=", 1.0, 0.25"),
        Variant("fts(text,context): 20%/8", join="late", mmap=mm, table="fts2", weights=", 1.0, 0.25"),
        Variant("fts(text,context): stem, 20%/12 cap 250k", join="late", df="stem", terms=12,
                cap=250_000, mmap=mm, table="fts2", weights=", 1.0, 0.25"),
    ]
    out: dict[str, Any] = {}
    ref: dict[str, dict[str, list[int]]] = {}
    for v in variants:
        stats, got = time_variant(dest, v, queries, repeats)
        key = v.table
        if "unpruned" in v.name:
            ref[key] = got
        stats["top10"], stats["top100"] = overlap(got, ref[key], 10), overlap(got, ref[key], 100)
        out[v.name] = stats
        log(f"  {v.name:44s} p50 {stats['p50']:7.1f}  p95 {stats['p95']:7.1f}  cpu p50 {stats['cpu_p50']:7.1f}"
            f"  p95 {stats['cpu_p95']:7.1f}  top10 {stats['top10']:.3f}  top100 {stats['top100']:.3f}"
            f"  ({stats['load']})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbdir", type=Path, default=Path("/tmp/deja-search-scale"),
                        help="where search_scale.py left scale-100k(-v<schema>).db / "
                        "scale-1M(-v<schema>).db (read only)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kwexp"),
                        help="scratch space for --context")
    parser.add_argument("--scales", default="100k,1M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated substrings: run the matching variants only")
    parser.add_argument("--context", action="store_true", help="the two-column estimate only")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    questions = json.loads((REPO / "bench" / "questions.json").read_text())["questions"]
    queries = [q["question"] for q in questions][:N_QUERIES]
    variants = VARIANTS
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        variants = [v for v in VARIANTS if any(k in v.name for k in keys)]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": load(), "scales": {}}
    for scale in args.scales.split(","):
        path = args.dbdir / f"scale-{scale.strip()}.db"
        if not path.exists():
            path = args.dbdir / f"scale-{scale.strip()}-v{SCHEMA_VERSION}.db"
        if not path.exists():
            sys.exit(f"no {path}: run bench/search_scale.py --scales {scale.strip()} "
                     f"--generate-only --workdir {args.dbdir}")
        if args.context:
            args.workdir.mkdir(parents=True, exist_ok=True)
            report["scales"][scale] = run_context(path, args.workdir, queries, args.repeats)
        else:
            report["scales"][scale] = run_scale(path, queries, args.repeats, variants)
    report["load_at_end"] = load()
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
