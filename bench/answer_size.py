"""Answer size: how many characters a search_memory answer costs the agent, and whether it carries the answer.

The shared corpus (`../shared/transcripts/projects`) is ingested and embedded
as bench/recall.py does it (`deja ingest --no-embed`, `deja embed`; `--db`
reuses a database). The real MCP server then runs IN PROCESS (`build_server`
driven by the SDK's in-memory `Client`, as tests/test_tools.py does), with the
model loaded and the in-memory vector index filled before the first question.
Every question of bench/questions.json whose split is "v1" or absent (never
the held-out ones) goes through `search_memory` with `project="all"` and
`limit=10`.

What it prints:
- answer: characters of the JSON text the agent receives (the tool result's
  text content), median / p90 / mean / max; and of the structured content as
  compact JSON (what a client reading `structuredContent` gets);
- snippet: the characters of that answer that are snippet text (the `snippet`
  values), and the rest (field names, ids, times, punctuation, whitespace);
- hit@10: the share of questions with an expected line among the hits (hits
  are matched to lines by `uuid` when the answer has it, else by the handle
  `rec:<id>` looked up in the database);
- answer in snippet: for the questions found in the top 10, does the snippet
  of the (best-ranked) expected hit show the answer? The answer's KEY is the
  up to 3 rarest content words of the question's `answer` field (no
  stopwords, 3+ characters or CJK, rarity = how many records' text holds the
  word, from FTS5) among the words that occur in that hit record's own text:
  a word the record does not hold can be in no snippet of it. A question
  whose answer shares no content word with its record is left out (counted).
  "carries" = the snippet holds more than half of the key words (2 of 3,
  2 of 2, 1 of 1); "all" = every key word.
  Words are compared as whole lowercase tokens, [brackets] removed.

Usage:
    python bench/answer_size.py                       # ingest + embed into a temp database
    python bench/answer_size.py --db /tmp/q.db        # reuse one (bench/recall.py --keep)
    python bench/answer_size.py --db /tmp/q.db --json out.json --show 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import recall  # noqa: E402  (bench/recall.py: the corpus, the tokenizer and the stopwords)

LIMIT = 10
KEY_WORDS = 3


def v1_questions(path: Path) -> list[dict[str, Any]]:
    """The first set only: split "v1" or no split (held-out questions are never read)."""
    return [q for q in json.loads(path.read_text())["questions"]
            if q.get("split", "v1") == "v1"]


def tokens(text: str) -> list[str]:
    return [w.lower() for w in recall._WORD.findall(recall.fts_text(text))]


def is_key_candidate(word: str) -> bool:
    return word not in recall._STOP and (len(word) >= 3 or not word.isascii())


def answer_key(db: sqlite3.Connection, answer: str, record_text: str) -> list[str]:
    """Up to KEY_WORDS rarest content words of `answer` that the record's own text holds."""
    own = set(tokens(record_text))
    words = [w for w in dict.fromkeys(tokens(answer)) if is_key_candidate(w) and w in own]
    df = {}
    for w in words:
        match = 'text : "' + w.replace('"', '""') + '"'
        df[w] = db.execute("SELECT COUNT(*) FROM records_fts WHERE records_fts MATCH ?",
                           (match,)).fetchone()[0]
    return sorted(words, key=lambda w: (df[w], w))[:KEY_WORDS]


def pctl(values: list[int], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)])


async def ask_all(db_path: Path, questions: list[dict[str, Any]], debug: bool,
                  log: Any) -> list[dict[str, Any]]:
    """Every question through search_memory in an in-process server; raw answers back."""
    import anyio
    from mcp import Client

    from mcp_server.server import ServerConfig, build_server

    chunks = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    config = ServerConfig(db_path=db_path, roots=[], environ=dict(os.environ), ingest=False,
                          load_model=True, index_refresh_seconds=0.5)
    out = []
    async with Client(build_server(config)) as client:
        started = time.perf_counter()
        with anyio.fail_after(180):
            while True:
                status = (await client.call_tool("memory_status", {})).structured_content
                assert status is not None
                if status["model_error"] and not status["model_loaded"] and \
                        "loading" not in status["model_error"]:
                    raise SystemExit(f"model did not load: {status['model_error']}")
                if status["model_loaded"] and status["vector_index_chunks"] == chunks:
                    break
                await anyio.sleep(0.2)
        log(f"model up, {chunks} chunks indexed in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        for q in questions:
            args: dict[str, Any] = {"query": q["question"], "project": "all", "limit": LIMIT}
            if debug:
                args["debug"] = True
            result = await client.call_tool("search_memory", args)
            text = "".join(getattr(c, "text", "") for c in result.content)
            if result.is_error:
                raise SystemExit(f"{q['id']}: {text}")
            out.append({"text": text, "structured": result.structured_content})
        log(f"{len(questions)} questions in {time.perf_counter() - started:.1f}s")
    return out


def hit_uuid(db: sqlite3.Connection, hit: dict[str, Any]) -> str | None:
    if hit.get("uuid"):
        return str(hit["uuid"])
    rid = int(str(hit["handle"]).removeprefix("rec:"))
    row = db.execute("SELECT uuid FROM records WHERE id = ?", (rid,)).fetchone()
    return row[0] if row else None


def score(db: sqlite3.Connection, q: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """One question's figures: sizes, rank, and whether the hit's snippet holds the key."""
    data = json.loads(answer["text"])
    hits = data["hits"]
    snippet_chars = sum(len(h["snippet"]) for h in hits)
    row: dict[str, Any] = {
        "id": q["id"], "chars": len(answer["text"]), "snippet_chars": snippet_chars,
        "structured_chars": len(json.dumps(answer["structured"], ensure_ascii=False,
                                           separators=(",", ":"))),
        "hits": len(hits), "rank": None, "key": None, "key_found": None,
    }
    expected = set(q["expected"])
    for i, h in enumerate(hits, 1):
        uuid = hit_uuid(db, h)
        if uuid not in expected:
            continue
        row["rank"] = i
        text = db.execute("SELECT text FROM records WHERE uuid = ? ORDER BY id LIMIT 1",
                          (uuid,)).fetchone()[0]
        key = answer_key(db, q["answer"], text)
        if key:
            shown = set(tokens(h["snippet"].replace("[", " ").replace("]", " ")))
            row["key"], row["key_found"] = key, [w for w in key if w in shown]
        row["snippet"] = h["snippet"]
        break
    return row


def report(rows: list[dict[str, Any]]) -> None:
    n = len(rows)
    chars = [r["chars"] for r in rows]
    snip = [r["snippet_chars"] for r in rows]
    rest = [r["chars"] - r["snippet_chars"] for r in rows]
    struct = [r["structured_chars"] for r in rows]
    hits = statistics.mean(r["hits"] for r in rows)
    print(f"\n{n} questions (v1), search_memory limit {LIMIT}, mean {hits:.1f} hits")
    print(f"{'characters':<30} {'median':>7} {'p90':>7} {'mean':>7} {'max':>7}")
    for name, vals in (("answer (text content)", chars), ("  snippet text", snip),
                       ("  everything else", rest), ("structured, compact JSON", struct)):
        print(f"{name:<30} {statistics.median(vals):7.0f} {pctl(vals, .9):7.0f} "
              f"{statistics.mean(vals):7.0f} {max(vals):7d}")
    found = [r for r in rows if r["rank"] is not None]
    keyed = [r for r in found if r["key"]]
    carries = [r for r in keyed if 2 * len(r["key_found"]) > len(r["key"])]
    every = [r for r in keyed if len(r["key_found"]) == len(r["key"])]
    share = statistics.mean(len(r["key_found"]) / len(r["key"]) for r in keyed) if keyed else 0
    print(f"\nhit@10 {100 * len(found) / n:.1f}% ({len(found)}/{n})")
    print(f"answer in snippet (of the {len(keyed)} found with a key; {len(found) - len(keyed)} "
          f"found without one): carries {100 * len(carries) / max(1, len(keyed)):.1f}% "
          f"({len(carries)}), all key words {100 * len(every) / max(1, len(keyed)):.1f}% "
          f"({len(every)}), mean share of key words {100 * share:.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", default=str(recall.QUESTIONS))
    p.add_argument("--db", help="an already-ingested and embedded database (bench/recall.py --keep)")
    p.add_argument("--keep", action="store_true", help="keep the temporary database")
    p.add_argument("--debug", action="store_true", help="ask with debug=true (scores included)")
    p.add_argument("--json", metavar="PATH", help="write every question's figures as JSON")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print the hit snippet of N found questions whose key is not all shown")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"[answer_size] {msg}\n")

    import anyio

    questions = v1_questions(Path(args.questions))
    tmp: Path | None = None
    if args.db:
        db_path = Path(args.db)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="deja-answer-size-"))
        db_path = tmp / "answer.db"
        why = recall.ingest_corpus(db_path, True, log)
        if why:
            raise SystemExit(f"no vectors: {why}")
    try:
        answers = anyio.run(ask_all, db_path, questions, args.debug, log)
        from ingest.db import make_connector  # FTS5 options this Python's sqlite3 may lack

        db = make_connector(db_path, readonly=True)()
        rows = [score(db, q, a) for q, a in zip(questions, answers)]
        report(rows)
        missed = [r for r in rows if r["key"] and len(r["key_found"]) < len(r["key"])]
        for r in missed[: args.show]:
            print(f"\n{r['id']} rank {r['rank']} key {r['key']} shown {r['key_found']}\n  "
                  f"{r['snippet']}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    finally:
        if tmp is not None:
            if args.keep:
                log(f"database kept at {db_path}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
