"""deja and a peer memory server side by side: recall.py's questions through both, over MCP.

The peer is claude-historian-mcp (npm, pinned by --peer-version). It has no index: it reads
`~/.claude/projects` at query time, so it runs with a scratch HOME whose
`.claude/projects` holds symlinks to the same transcripts deja ingested. deja runs as
`deja serve --no-ingest` over a database made from those transcripts by `deja ingest
--no-embed` + `deja embed` (as bench/recall.py makes it), with its model loaded before the
timed questions.

Both servers are driven by the MCP SDK's stdio client, one at a time, one question at a
time, with limit 10: deja's `search_memory` (project "all", its default answer budget) and
the peer's `search_conversations` (the tool its README gives for searching past
conversations; its default detail level).

Matching hits to lines:
- deja returns handles (rec:<id>), looked up in its database: a hit is the expected line when
  that record's uuid is an expected one.
- the peer's results carry no uuid, only the message text (`content`, which it may cut to
  3,000-4,000 characters, or rebuild from code blocks, errors and "Key elements"). Its hit
  matches an expected line when, after collapsing whitespace, (a) the longest piece of its
  text (split at the peer's "..." cut marks, its "--- Key elements:" tail dropped) is at
  least 20 characters and a substring of the line's text, or (b) the hit and the line share
  a run of at least RUN_MIN (80) characters. A line's text is the text the peer itself
  extracts from the raw JSONL line (`message.content`: text blocks, "[Tool: NAME]",
  "[Tool Result]", joined by spaces); the expected lines are those whose uuid, or leafUuid
  for summary lines, is expected. Every peer hit is also resolved against every line of the
  corpus, and the bench prints how many resolve to one line, to several, or to none.
- The peer ranks up to 2x limit candidates, re-sorts them by its own "information density"
  score and prints at most 8, whatever the limit: its hit@10 is a hit@8.

Printed per system: hit@5, hit@10, MRR@10, latency p50 / p95 per question (client side,
wall), the median answer size (characters of the tool result's text), the median number of
hits, per category; and each server's start-up: spawn to its first search answer.

Usage:
    python bench/peer.py                          # install the peer if missing, ingest, run
    python bench/peer.py --db /tmp/q.db           # reuse a database that has vectors
    python bench/peer.py --workdir /tmp/peer --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = Path(__file__).with_name("questions.json")
PEER = "claude-historian-mcp"
PEER_VERSION = "1.0.3"
PEER_TOOL = "search_conversations"
SPLITS = (None, "v1", "dev")  # never "holdout"
LIMIT = 10
PIECE_MIN = 20
COVER_MIN = 0.5
RUN_MIN = 80
DEJA_MAIN = "import sys; from mcp_server.cli import main; sys.exit(main())"
_WS = re.compile(r"\s+")
_SEAM = re.compile(r"\.\.\.|\n")


def shared_dir() -> Path:
    env = os.environ.get("DEJA_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def log(msg: str) -> None:
    sys.stderr.write(f"[peer] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- questions and corpus


def load_questions(path: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """The questions of the allowed splits, and the transcript roots they are asked over."""
    data = json.loads(path.read_text())
    questions = [q for q in data["questions"] if q.get("split") in SPLITS]
    corpora = data.get("corpus") or "shared/transcripts/projects"
    names = [corpora] if isinstance(corpora, str) else list(corpora)
    names += [q["corpus"] for q in questions if isinstance(q.get("corpus"), str)]
    roots = []
    for name in dict.fromkeys(names):
        rel = name.removeprefix("shared/").removeprefix("../shared/")
        root = shared_dir() / rel
        if not root.is_dir():
            raise SystemExit(f"corpus not found: {root} (set DEJA_SHARED)")
        roots.append(root)
    return questions, roots


def peer_text(line: dict[str, Any]) -> str:
    """The text claude-historian-mcp extracts from a JSONL line (utils.extractContentFromMessage)."""
    message = line.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind == "tool_use":
            parts.append(f"[Tool: {item.get('name')}]")
        elif kind == "tool_result":
            parts.append("[Tool Result]")
        else:
            parts.append("")
    return " ".join(parts).strip()


def norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass
class Line:
    uuid: str
    kind: str
    text: str  # normalized peer_text
    top: bool  # in a project folder's own *.jsonl (the only files the peer reads)


def read_corpus(roots: list[Path]) -> dict[str, list[Line]]:
    """Every JSONL line of the roots by uuid (summary lines under their leafUuid)."""
    lines: dict[str, list[Line]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.jsonl")):
            with path.open(encoding="utf-8", errors="replace") as f:
                for raw in f:
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(obj, dict):
                        continue
                    uuid = obj.get("uuid") or obj.get("leafUuid")
                    if isinstance(uuid, str):
                        line = Line(uuid, str(obj.get("type")), norm(peer_text(obj)),
                                    path.parent.parent == root)
                        lines.setdefault(uuid, []).append(line)
    return lines


# ---------------------------------------------------------------- matching peer hits


def pieces(content: str) -> list[str]:
    """The peer's text cut at its own seams: "..." marks and line breaks (it rebuilds long
    messages from chosen sections and sentences); its "Key elements" tail dropped."""
    core = content.split("\n--- Key elements: ")[0]
    core = core.replace("\n... (additional errors truncated)", "")
    return [p for p in (norm(p) for p in _SEAM.split(core)) if len(p) >= PIECE_MIN]


def coverage(parts: list[str], line_text: str) -> float:
    """Share of the pieces' characters found verbatim (each piece whole) in the line."""
    total = sum(len(p) for p in parts)
    return sum(len(p) for p in parts if p in line_text) / total if total else 0.0


def match_rule(content: str, line_text: str) -> str | None:
    """'pieces' or 'run' when the peer's hit text comes from this line, else None."""
    if not line_text:
        return None
    if coverage(pieces(content), line_text) >= COVER_MIN:
        return "pieces"
    hit = norm(content)
    m = SequenceMatcher(None, hit, line_text, autojunk=False).find_longest_match(
        0, len(hit), 0, len(line_text))
    return "run" if m.size >= RUN_MIN else None


def resolve(content: str, corpus: dict[str, list[Line]]) -> int:
    """How many corpus lines the hit's pieces point at (the audit; pieces rule only)."""
    parts = pieces(content)
    return sum(1 for ls in corpus.values() for ln in ls if coverage(parts, ln.text) >= COVER_MIN)


# ---------------------------------------------------------------- the servers


@dataclass
class Answer:
    qid: str
    seconds: float
    chars: int
    n_hits: int
    rank: int | None
    how: str | None = None  # deja: "uuid"; peer: the rule that matched
    contents: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class Side:
    name: str
    version: str
    startup_s: float = 0.0
    ready_s: float | None = None
    tools: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def open_session(stack: AsyncExitStack, command: str, args: list[str],
                       env: dict[str, str], cwd: Path, errlog: Any) -> Any:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=command, args=args, env=env, cwd=str(cwd))
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await asyncio.wait_for(session.initialize(), 60)
    return session


def deja_hits(result: Any, db: Path) -> tuple[list[str], str | None]:
    """The hits' uuids: search_memory's answer gives a handle (rec:<id>, looked up in `db`);
    only `debug: true` answers carry the uuid, and they are larger."""
    from ingest.db import make_connector

    data = result.structured_content
    if not isinstance(data, dict):
        data = json.loads(text_of(result))
    conn = make_connector(db, readonly=True)()
    try:
        uuids = []
        for h in data.get("hits", []):
            row = conn.execute("SELECT uuid FROM records WHERE id = ?",
                               (int(str(h["handle"]).removeprefix("rec:")),)).fetchone()
            uuids.append(str(h.get("uuid") or (row[0] if row else None)))
    finally:
        conn.close()
    status = data.get("vector_status")
    return uuids, None if status in (None, "ok") else f"vector_status {status}"


def peer_hits(result: Any) -> list[str]:
    text = text_of(result)
    body = text[text.index("{"):] if "{" in text else "{}"
    return [str(r.get("content", "")) for r in json.loads(body).get("results", [])]


def rank_uuids(uuids: list[str], expected: set[str]) -> int | None:
    return next((i for i, u in enumerate(uuids[:LIMIT], 1) if u in expected), None)


def rank_texts(contents: list[str], expected: list[Line]) -> tuple[int | None, str | None]:
    for i, content in enumerate(contents[:LIMIT], 1):
        for line in expected:
            how = match_rule(content, line.text)
            if how:
                return i, how
    return None, None


async def run_deja(db: Path, workdir: Path, questions: list[dict[str, Any]]) -> Side:
    from ingest import __version__

    side = Side("deja", __version__)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    args = ["-c", DEJA_MAIN, "--db", str(db), "serve", "--no-ingest",
            "--log-file", str(workdir / "deja-server.log")]
    with (workdir / "deja-stderr.log").open("w") as errlog:
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            session = await open_session(stack, sys.executable, args, env, REPO, errlog)
            first = await session.call_tool("search_memory", {
                "query": questions[0]["question"], "project": "all", "limit": LIMIT})
            side.startup_s = time.perf_counter() - started
            _, note = deja_hits(first, db)
            side.notes.append(f"first answer: {note or 'vectors used'}")
            side.tools = [t.name for t in (await session.list_tools()).tools]
            deadline = time.perf_counter() + 180
            while True:
                status = json.loads(text_of(await session.call_tool("memory_status", {})))
                if status.get("model_loaded") and status.get("vector_index_chunks") is not None:
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit(f"deja's model did not load: {status.get('model_error')}")
                await asyncio.sleep(0.1)
            side.ready_s = time.perf_counter() - started
            model = status.get("embedding_model") or {}
            side.notes.append(f"model {model.get('model_id') if isinstance(model, dict) else model}")
            for q in questions:
                t0 = time.perf_counter()
                result = await session.call_tool("search_memory", {
                    "query": q["question"], "project": "all", "limit": LIMIT})
                dt = time.perf_counter() - t0
                uuids, note = deja_hits(result, db)
                rank = rank_uuids(uuids, set(q["expected"]))
                side.answers.append(Answer(q["id"], dt, len(text_of(result)), len(uuids), rank,
                                           "uuid" if rank else None, note=note))
    return side


def peer_home(workdir: Path, roots: list[Path]) -> Path:
    """A scratch HOME whose .claude/projects links every project folder of the roots."""
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    projects = home / ".claude" / "projects"
    projects.mkdir(parents=True)
    for root in roots:
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            link = projects / d.name
            if link.exists():
                raise SystemExit(f"two roots hold project folder {d.name}")
            link.symlink_to(d.resolve(), target_is_directory=True)
    return home


async def run_peer(entry: Path, version: str, home: Path, questions: list[dict[str, Any]],
                   corpus: dict[str, list[Line]], workdir: Path) -> Side:
    side = Side(PEER, version)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config"), "LANG": os.environ.get("LANG", "C.UTF-8")}
    node = shutil.which("node") or "node"
    with (workdir / "peer-stderr.log").open("w") as errlog:
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            session = await open_session(stack, node, [str(entry)], env, home, errlog)
            await session.call_tool(PEER_TOOL, {"query": questions[0]["question"], "limit": LIMIT})
            side.startup_s = time.perf_counter() - started
            side.tools = [t.name for t in (await session.list_tools()).tools]
            for q in questions:
                expected = [ln for u in q["expected"] for ln in corpus.get(u, [])]
                t0 = time.perf_counter()
                result = await session.call_tool(PEER_TOOL, {"query": q["question"], "limit": LIMIT})
                dt = time.perf_counter() - t0
                contents = peer_hits(result)
                rank, how = rank_texts(contents, expected)
                side.answers.append(Answer(q["id"], dt, len(text_of(result)), len(contents),
                                           rank, how, contents))
    return side


# ---------------------------------------------------------------- setup


def install_peer(cache: Path, version: str) -> tuple[Path, str]:
    """npm-install the pinned peer into `cache` unless there; its entry point and version."""
    pkg = cache / "node_modules" / PEER / "package.json"
    have = json.loads(pkg.read_text()).get("version") if pkg.is_file() else None
    if have != version:
        npm, node = shutil.which("npm"), shutil.which("node")
        if not npm or not node:
            raise SystemExit(f"npm and node are needed to install {PEER} (found npm={npm}, "
                             f"node={node}); install Node.js >= 20")
        cache.mkdir(parents=True, exist_ok=True)
        log(f"npm install --prefix {cache} {PEER}@{version}")
        out = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund",
                              f"{PEER}@{version}"], capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or not pkg.is_file():
            raise SystemExit(f"npm install {PEER}@{version} failed ({out.returncode}); is the "
                             f"network (registry.npmjs.org) reachable?\n{out.stderr[-2000:]}")
    meta = json.loads(pkg.read_text())
    bin_ = meta["bin"][PEER] if isinstance(meta["bin"], dict) else meta["bin"]
    return (pkg.parent / bin_).resolve(), str(meta["version"])


def ingest(db: Path, roots: list[Path]) -> None:
    """`deja ingest --no-embed` over the roots, then `deja embed`, as bench/recall.py does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-c", DEJA_MAIN, "--db", str(db)]
    steps = [[*base, "ingest", *(a for r in roots for a in ("--root", str(r))), "--json",
              "--no-embed", "--quiet"], [*base, "embed", "--json", "--quiet"]]
    for cmd in steps:
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[3:6])} failed ({out.returncode}):\n"
                             f"{out.stderr[-2000:]}")
        log(f"deja {cmd[5]} in {time.perf_counter() - started:.1f}s: {out.stdout.strip()[-200:]}")


# ---------------------------------------------------------------- report


def metrics(answers: list[Answer]) -> dict[str, float]:
    n = len(answers) or 1
    secs = sorted(a.seconds for a in answers) or [0.0]
    return {
        "n": len(answers),
        "hit@5": sum(1 for a in answers if a.rank and a.rank <= 5) / n,
        "hit@10": sum(1 for a in answers if a.rank and a.rank <= 10) / n,
        "mrr": sum(1 / a.rank for a in answers if a.rank) / n,
        "p50_ms": 1000 * statistics.median(secs),
        "p95_ms": 1000 * secs[min(len(secs) - 1, round(0.95 * (len(secs) - 1)))],
        "chars": statistics.median(a.chars for a in answers) if answers else 0,
        "hits": statistics.median(a.n_hits for a in answers) if answers else 0,
    }


def report(sides: list[Side], questions: list[dict[str, Any]], corpus: dict[str, list[Line]],
           show: int) -> None:
    print(f"\n{len(questions)} questions (splits {', '.join(str(s) for s in SPLITS)}), "
          f"limit {LIMIT}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'system':<28} {'hit@5':>6} {'hit@10':>6} {'MRR':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'chars':>7} {'hits':>5} {'start s':>8}")
    for s in sides:
        m = metrics(s.answers)
        print(f"{s.name + ' ' + s.version:<28} {100 * m['hit@5']:6.1f} {100 * m['hit@10']:6.1f} "
              f"{m['mrr']:6.3f} {m['p50_ms']:8.1f} {m['p95_ms']:8.1f} {m['chars']:7.0f} "
              f"{m['hits']:5.0f} {s.startup_s:8.2f}")
    print("(chars: median characters of the tool result text; hits: median hits per answer; "
          "start: spawn to the first search answer)")
    for s in sides:
        ready = f", model and vector index ready {s.ready_s:.2f} s after spawn" if s.ready_s else ""
        print(f"  {s.name}: tools {', '.join(s.tools)}{ready}; {'; '.join(s.notes)}")
        bad = [a for a in s.answers if a.note]
        if bad:
            print(f"  {s.name}: {len(bad)} answers with notes, e.g. {bad[0].qid}: {bad[0].note}")

    cats: dict[str, set[str]] = {}
    for q in questions:
        cats.setdefault(q["category"], set()).add(q["id"])
    print("\nper category: hit@5 / hit@10 / MRR")
    print(f"{'category':<13} {'n':>3}" + "".join(f"  {s.name:>22}" for s in sides))
    for cat in sorted(cats):
        row = f"{cat:<13} {len(cats[cat]):>3}"
        for s in sides:
            m = metrics([a for a in s.answers if a.qid in cats[cat]])
            row += f"  {100 * m['hit@5']:8.1f}/{100 * m['hit@10']:5.1f}/{m['mrr']:.2f}"
        print(row)
    audit(sides, questions, corpus, show)


def audit(sides: list[Side], questions: list[dict[str, Any]], corpus: dict[str, list[Line]],
          show: int) -> None:
    """How the peer's hits map to lines: rule counts, resolution over the corpus, samples."""
    by_id = {q["id"]: q for q in questions}
    for s in sides:
        if not any(a.contents for a in s.answers):
            continue
        hits = [c for a in s.answers for c in a.contents]
        counts = [resolve(c, corpus) for c in hits]
        rules = {r: sum(1 for a in s.answers if a.how == r) for r in ("pieces", "run")}
        print(f"\n{s.name}: {len(hits)} hits; each resolved over all {len(corpus)} corpus uuids "
              f"(pieces rule): {sum(1 for c in counts if c == 1)} to one line, "
              f"{sum(1 for c in counts if c > 1)} to several, {sum(1 for c in counts if c == 0)} "
              f"to none. Questions found by rule: pieces {rules['pieces']}, "
              f"run >= {RUN_MIN} chars {rules['run']}.")
        reach = sum(1 for q in questions if any(ln.top and len(ln.text) >= 40 for u in q["expected"]
                                                for ln in corpus.get(u, [])))
        print(f"  {reach} of {len(questions)} questions have an expected line the peer can return "
              f"(in a project folder's own .jsonl, >= 40 characters of text as it extracts it)")
        missing = [q["id"] for q in questions if not any(corpus.get(u) for u in q["expected"])]
        if missing:
            print(f"  expected uuids not in the corpus for: {', '.join(missing)}")
        for a in [a for a in s.answers if a.rank][:show]:
            q = by_id[a.qid]
            hit = a.contents[a.rank - 1] if a.rank else ""
            line = next((ln for u in q["expected"] for ln in corpus.get(u, [])
                         if match_rule(hit, ln.text)), None)
            print(f"  {a.qid} rank {a.rank} by {a.how}: hit {norm(hit)[:90]!r}")
            print(f"        line {line.uuid if line else '?'} ({line.kind if line else '?'}): "
                  f"{(line.text if line else '')[:90]!r}")


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, db: Path, workdir: Path, peer: tuple[Path, str],
              questions: list[dict[str, Any]], roots: list[Path]) -> list[Side]:
    entry, version = peer
    corpus = read_corpus(roots)
    home = peer_home(workdir, roots)
    sides = []
    log("deja serve ...")
    sides.append(await run_deja(db, workdir, questions))
    log(f"{PEER} ...")
    sides.append(await run_peer(entry, version, home, questions, corpus, workdir))
    report(sides, questions, corpus, args.show)
    if args.json:
        Path(args.json).write_text(json.dumps([{
            "system": s.name, "version": s.version, "startup_s": s.startup_s,
            "ready_s": s.ready_s, "tools": s.tools, "summary": metrics(s.answers),
            "answers": [{"id": a.qid, "rank": a.rank, "how": a.how, "seconds": a.seconds,
                         "chars": a.chars, "hits": a.n_hits, "note": a.note,
                          "contents": a.contents}
                        for a in s.answers]} for s in sides], indent=1))
    return sides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=Path, default=QUESTIONS)
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "peer",
                   help="npm cache, scratch HOME and logs (default: %(default)s)")
    p.add_argument("--db", type=Path, help="an ingested and embedded database to reuse")
    p.add_argument("--peer-version", default=PEER_VERSION, help="default: %(default)s")
    p.add_argument("--show", type=int, default=8, help="peer matches to print for checking")
    p.add_argument("--json", help="write every figure and rank to this file")
    args = p.parse_args(argv)
    questions, roots = load_questions(args.questions)
    if not questions:
        raise SystemExit(f"no questions of splits {SPLITS} in {args.questions}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    entry, version = install_peer(workdir / "npm", args.peer_version)
    log(f"{PEER} {version}: {entry}")
    tmp = None
    if args.db:
        db = args.db
    else:
        tmp = Path(tempfile.mkdtemp(prefix="deja-peer-"))
        db = tmp / "peer.db"
        ingest(db, roots)
    try:
        asyncio.run(run(args, db, workdir, (entry, version), questions, roots))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
