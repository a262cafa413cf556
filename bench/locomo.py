"""LoCoMo turn retrieval through deja's real ingest and search code.

`../shared/eval/locomo10.json` (read its README; never copied here) holds 10
long conversations and ~2,000 questions, each with the turns ("D<session>:<turn>")
that answer it. This benchmark:

1. writes every conversation as Claude Code transcripts under a root laid out
   like ~/.claude/projects: one project folder per conversation
   (`-locomo-conv-26`, cwd `/locomo/conv-26`), one `<sessionId>.jsonl` per
   LoCoMo session, one line per turn, uuid = uuid5(sample, dia_id), timestamp =
   the session's date (plus one second per turn, to keep them ordered), text =
   "Speaker: what they said" and, for an image, " [shares a photo: <caption>]".
   `--layout ua` (default): speaker_a as a `user` line (string content),
   speaker_b as an `assistant` line (a text block); `--layout uu`: both as
   user prompts. `--text plain` drops the "Speaker: " prefix.
2. ingests that root with `ingest.runner.ingest_once` and embeds it with
   `ingest.vectors.embed_pending` (backend onnx by default, `--backend torch`
   for the reference) into `<workdir>/<layout>-<text>-<backend>/deja.db`, kept
   between runs (rebuilt when the transcripts, schema version or model change);
3. asks every question through `mcp_server.search.search(...,
   project="/locomo/<sample_id>", limit=10)` in keyword, vector and hybrid
   mode, and maps hits back to dia_ids through their uuid.

Metrics (per the eval README): a question's R@k is the share of its evidence
turns in the top k; nDCG@10 with binary relevance. Means over questions,
overall and per category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop,
5 adversarial), on the DEV split (conv-26, -30, -41, -42, -43) and the TEST
split (conv-44, -47, -48, -49, -50). Evidence is parsed defensively ("D8:6;
D9:17", "D:11:26", "D30:05"); ids that name no turn are dropped and counted,
questions left without evidence are skipped and counted.

`--tune`: fusion tuned on DEV only, reported on both. Each question is
embedded once and both candidate lists are fetched once with the engine's own
rankers (`keyword_ranks`, `vector_ranks`, 100 candidates; a shorter list is
a prefix of it; cached per database and mcp_server/search/ source). Every setting of a grid is
then scored with numpy (`Pair`; `Setting.fuse` is the plain-Python reference
and the two are compared): weighted RRF with one k or a k per ranker, min-max
and z-normalised score fusion, each with and without the engine's neighbour
smoothing. The best RRF setting is also run through `search(fusion=...)` (a
`dataclasses.replace` of the engine's FUSION, as `--fusion` is), and
a sensitivity table shows R@5/R@10 as each of its parameters moves.

`--explore`: prototypes of engine changes, measured without touching the
engine: keyword query forms, FTS without porter, other bm25 weights of the
context column (the previous record's text, migration m005), and what is embedded
(without the speaker, with the previous / next turn), each fused over a grid
chosen on dev; the best context weight then runs through `search()`.
`--context W` runs search() hybrid with context weight W in the plain runs too.

For bench/recall.py (the real-transcript questions), any fusion or context
weight as a ranker:
    python bench/recall.py --ranker 'bench.locomo:fusion {"k": 1}'
    python bench/recall.py --ranker 'bench.locomo:ctx {"weight": 0.25, "fusion": {"k": 1}}'

Usage:
    python bench/locomo.py                       # build (cached), engine modes, dev + test
    python bench/locomo.py --tune --explore      # everything (~8 minutes on 2 busy cores)
    python bench/locomo.py --backend torch       # sentence-transformers vectors
    python bench/locomo.py --layout uu --text plain
    python bench/locomo.py --fusion '{"k": 1}' --context 0.25
    python bench/locomo.py --json out.json       # every table as JSON
    python bench/locomo.py --engine both         # SQLite and PostgreSQL (bench/pg_locomo.py)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# First on the path even when PYTHONPATH names the repository: sys.path[0] is
# bench/, where a module named like a package (bench/ingest.py once) would shadow it.
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("DEJA_SHARED", REPO.parent / "shared"))
DATA = SHARED / "eval" / "locomo10.json"
DEV = ("conv-26", "conv-30", "conv-41", "conv-42", "conv-43")
TEST = ("conv-44", "conv-47", "conv-48", "conv-49", "conv-50")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
KS = (1, 5, 10)
LIMIT = 10
MAX_CANDIDATES = 100
# Bump when the transcripts written or the build steps change: the cached
# database of an older stamp is rebuilt.
STAMP = "locomo-transcripts/2"
_NAMESPACE = uuid.UUID("0c5a4f9e-6a43-4d7e-9a0e-3c1f2b7d8e61")


# ---------------------------------------------------------------------------
# the data set


@dataclass
class Turn:
    sample_id: str
    dia_id: str
    session: int
    index: int  # position within the session, from 0
    speaker: str
    text: str  # what was said, photo caption appended, no speaker prefix
    ts: datetime


@dataclass
class Question:
    sample_id: str
    qid: int
    question: str
    category: int
    evidence: list[str]  # valid dia_ids, deduplicated, in order


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[tuple[int, datetime, list[Turn]]]

    @property
    def turns(self) -> list[Turn]:
        return [t for _, _, turns in self.sessions for t in turns]


@dataclass
class DataSet:
    conversations: dict[str, Conversation]
    questions: list[Question]
    skipped: dict[str, int] = field(default_factory=dict)  # why -> count
    dropped_ids: list[tuple[str, str]] = field(default_factory=list)  # (sample, raw entry)
    repaired_ids: list[tuple[str, str]] = field(default_factory=list)


_EVIDENCE = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")


def parse_evidence(entries: Any) -> tuple[list[str], list[str]]:
    """(dia_ids found, raw entries that held none); "D8:6; D9:17" gives two ids."""
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list):
        return [], [repr(entries)]
    ids: list[str] = []
    bad: list[str] = []
    for entry in entries:
        found = _EVIDENCE.findall(str(entry))
        if not found:
            bad.append(str(entry))
        ids.extend(f"D{int(s)}:{int(t)}" for s, t in found)
    return list(dict.fromkeys(ids)), bad


def parse_date(value: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> an aware UTC datetime."""
    text = " ".join(value.replace(",", ", ").split())
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M%p on %d %B, %Y"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"unreadable LoCoMo date {value!r}")


def load_dataset(path: Path = DATA, samples: Sequence[str] | None = None) -> DataSet:
    raw = json.loads(path.read_text(encoding="utf-8"))
    ds = DataSet({}, [])
    skipped: dict[str, int] = defaultdict(int)
    for sample in raw:
        sid = sample["sample_id"]
        if samples and sid not in samples:
            continue
        conv = sample["conversation"]
        sessions = []
        numbers = sorted(int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)))
        for n in numbers:
            turns_raw = conv.get(f"session_{n}")
            if not isinstance(turns_raw, list) or not turns_raw:
                continue
            date = parse_date(conv[f"session_{n}_date_time"])
            turns = []
            for i, t in enumerate(turns_raw):
                text = str(t.get("text") or "")
                caption = t.get("blip_caption")
                if caption:
                    text = f"{text} [shares a photo: {caption}]".strip()
                m = _EVIDENCE.fullmatch(t["dia_id"])
                dia = f"D{int(m.group(1))}:{int(m.group(2))}" if m else t["dia_id"]
                turns.append(Turn(sid, dia, n, i, t["speaker"], text, date + timedelta(seconds=i)))
            sessions.append((n, date, turns))
        ds.conversations[sid] = Conversation(sid, conv["speaker_a"], conv["speaker_b"], sessions)
        known = {t.dia_id for t in ds.conversations[sid].turns}
        for qid, qa in enumerate(sample["qa"]):
            ids, bad = parse_evidence(qa.get("evidence"))
            for entry in bad:
                ds.dropped_ids.append((sid, entry))
            for entry in qa.get("evidence") or []:
                if not re.fullmatch(r"D\d+:\d+", str(entry)) and _EVIDENCE.search(str(entry)):
                    ds.repaired_ids.append((sid, str(entry)))
            valid = [i for i in ids if i in known]
            ds.dropped_ids.extend((sid, i) for i in ids if i not in known)
            if not qa.get("evidence"):
                skipped["no evidence"] += 1
                continue
            if not valid:
                skipped["no valid evidence id"] += 1
                continue
            ds.questions.append(Question(sid, qid, str(qa["question"]), int(qa["category"]), valid))
    ds.skipped = dict(skipped)
    return ds


# ---------------------------------------------------------------------------
# transcripts


def turn_uuid(sample_id: str, dia_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{sample_id}:{dia_id}"))


def session_uuid(sample_id: str, session: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{sample_id}:session_{session}"))


def project_path(sample_id: str) -> str:
    return f"/locomo/{sample_id}"


def turn_text(turn: Turn, text_mode: str) -> str:
    return f"{turn.speaker}: {turn.text}" if text_mode == "prefix" else turn.text


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def transcript_lines(conv: Conversation, session: int, turns: list[Turn], layout: str,
                     text_mode: str) -> list[dict[str, Any]]:
    """The JSONL objects of one LoCoMo session, as Claude Code writes them."""
    sid = session_uuid(conv.sample_id, session)
    cwd = project_path(conv.sample_id)
    lines = []
    parent: str | None = None
    for turn in turns:
        line_uuid = turn_uuid(conv.sample_id, turn.dia_id)
        common = {
            "parentUuid": parent, "isSidechain": False, "userType": "external", "cwd": cwd,
            "sessionId": sid, "version": "2.0.0", "gitBranch": "", "uuid": line_uuid,
            "timestamp": _iso(turn.ts),
        }
        text = turn_text(turn, text_mode)
        if layout == "ua" and turn.speaker != conv.speaker_a:
            msg_id = "msg_locomo_" + line_uuid.replace("-", "")[:24]
            lines.append({**common, "type": "assistant", "requestId": "req_" + msg_id[4:], "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": "locomo",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 0, "output_tokens": 0}}})
        else:
            lines.append({**common, "type": "user", "message": {"role": "user", "content": text}})
        parent = line_uuid
    return lines


def write_transcripts(ds: DataSet, root: Path, layout: str, text_mode: str) -> str:
    """Write every conversation under `root`; returns a digest of what was written."""
    digest = hashlib.sha256()
    for sid, conv in sorted(ds.conversations.items()):
        folder = root / re.sub(r"[^A-Za-z0-9]", "-", project_path(sid))
        folder.mkdir(parents=True, exist_ok=True)
        for n, _date, turns in conv.sessions:
            body = "".join(json.dumps(o, ensure_ascii=False) + "\n"
                           for o in transcript_lines(conv, n, turns, layout, text_mode))
            (folder / f"{session_uuid(sid, n)}.jsonl").write_text(body, encoding="utf-8")
            digest.update(body.encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# building the database with the real ingest and embedding code


def model_cache_dir() -> Path:
    from ingest.config import default_data_dir

    env = os.environ.get("DEJA_MODEL_CACHE")
    return Path(env) if env else default_data_dir(os.environ) / "models"


def load_bench_embedder(backend: str) -> Any:
    from ingest.embed import load_embedder

    return load_embedder(None, backend=backend, cache_dir=model_cache_dir())


async def build(ds: DataSet, workdir: Path, layout: str, text_mode: str, embedder: Any,
                log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Transcripts written, ingested and embedded into <workdir>/<variant>/deja.db (cached)."""
    from ingest.runner import ingest_once
    from ingest.store import Store
    from ingest.vectors import embed_pending

    variant = workdir / f"{layout}-{text_mode}-{embedder.backend}"
    root = variant / "projects"
    db = variant / "deja.db"
    stamp_file = variant / "stamp.json"
    scratch = variant / "projects.new"
    shutil.rmtree(scratch, ignore_errors=True)
    digest = write_transcripts(ds, scratch, layout, text_mode)
    from ingest.migrations import SCHEMA_VERSION

    stamp = {"stamp": STAMP, "schema": SCHEMA_VERSION, "transcripts": digest, "model": embedder.model_id,
             "backend": embedder.backend, "samples": sorted(ds.conversations)}
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    info: dict[str, Any] = {"db": str(db), "cached": old == stamp, "stamp": stamp}
    if old != stamp:
        for p in (root, db, db.with_name("deja.db-wal"), db.with_name("deja.db-shm"), stamp_file):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        scratch.rename(root)
    else:
        shutil.rmtree(scratch)
    store = await Store.open(db)
    try:
        started = time.perf_counter()
        summary = await ingest_once(store, [root])
        info["ingest_s"] = round(time.perf_counter() - started, 2)
        info["new_records"] = summary.new_records
        started = time.perf_counter()
        emb = await embed_pending(store, embedder)
        info["embed_s"] = round(time.perf_counter() - started, 2)
        info["embedded"] = emb.embedded_records
        info["pending"] = emb.pending
        rows = await store.conn.execute_fetchall("SELECT COUNT(*) FROM records")
        info["records"] = rows[0][0]
    finally:
        await store.close()
    if info["pending"]:
        raise SystemExit(f"{info['pending']} records still await embedding in {db}")
    stamp_file.write_text(json.dumps(stamp))
    if not info["cached"]:
        log(f"built {db}: {info['records']} records, ingest {info['ingest_s']} s, "
            f"embed {info['embedded']} in {info['embed_s']} s")
    return db, info


# ---------------------------------------------------------------------------
# metrics


def question_metrics(ranked: Sequence[str], evidence: Sequence[str]) -> dict[str, float]:
    relevant = set(evidence)
    top = list(dict.fromkeys(ranked))[:LIMIT]
    out = {f"R@{k}": len(relevant.intersection(top[:k])) / len(relevant) for k in KS}
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(top) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), LIMIT)))
    out["nDCG@10"] = dcg / ideal
    return out


METRICS = ("R@1", "R@5", "R@10", "nDCG@10")


def aggregate(per_q: Sequence[tuple[Question, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{'all' | category name: {metric: mean, 'n': count}}."""
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for q, m in per_q:
        groups["all"].append(m)
        groups[f"{q.category} {CATEGORIES.get(q.category, '?')}"].append(m)
    out = {}
    for name in ["all"] + sorted(k for k in groups if k != "all"):
        ms = groups[name]
        out[name] = {k: statistics.fmean(m[k] for m in ms) for k in METRICS}
        out[name]["n"] = len(ms)
    return out


def objective(per_q: Sequence[dict[str, float]]) -> float:
    """What tuning maximises: R@5 + R@10 (the targets), nDCG@10 as a light tie-break."""
    return statistics.fmean(m["R@5"] + m["R@10"] + 0.1 * m["nDCG@10"] for m in per_q)


def format_table(title: str, tables: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: ranker x group; columns: metrics."""
    width = max([28, *(len(r) + 2 for r in tables)])
    lines = [title, f"{'ranker':<{width}}{'group':<16}{'n':>5}" + "".join(f"{m:>9}" for m in METRICS)]
    for ranker, groups in tables.items():
        for group, vals in groups.items():
            lines.append(f"{ranker:<{width}}{group:<16}{int(vals['n']):>5}"
                         + "".join(f"{vals[m]:>9.3f}" for m in METRICS))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the engine, as users call it


class Bench:
    def __init__(self, ds: DataSet, conn: Any, embedder: Any) -> None:
        self.ds = ds
        self.conn = conn
        self.embedder = embedder
        self.by_uuid = {turn_uuid(sid, t.dia_id): t.dia_id
                        for sid, c in ds.conversations.items() for t in c.turns}
        self.qvec: dict[tuple[str, int], bytes] = {}
        self.filters: dict[str, Any] = {}

    def split(self, name: str) -> list[Question]:
        ids = DEV if name == "dev" else TEST if name == "test" else None
        return [q for q in self.ds.questions if ids is None or q.sample_id in ids]

    async def engine_run(self, questions: Sequence[Question], mode: str,
                         fusion: dict[str, Any] | None = None) -> list[list[str]]:
        """search() over each question; `fusion` overrides fields of the engine's FUSION."""
        from mcp_server.search import FUSION, Resources, SearchRequest, search

        tuned = dataclasses.replace(FUSION, **(fusion or {}))
        out = []
        for q in questions:
            res = await search(self.conn, SearchRequest(q.question, mode=mode, limit=LIMIT,
                                                        project=project_path(q.sample_id)),
                               Resources(embedder=self.embedder), fusion=tuned)
            if mode != "keyword" and res.vector_status != "ok":
                raise SystemExit(f"vector search unavailable: {res.vector_status}")
            out.append([self.by_uuid.get(h.uuid or "", "?") for h in res.hits])
        return out

    async def embed_queries(self, questions: Sequence[Question]) -> None:
        import anyio

        todo = [q for q in questions if (q.sample_id, q.qid) not in self.qvec]
        vecs = await anyio.to_thread.run_sync(self.embedder.embed, [q.question for q in todo])
        for q, v in zip(todo, vecs):
            self.qvec[(q.sample_id, q.qid)] = v.astype("float32").tobytes()

    async def project_filter(self, sample_id: str) -> Any:
        from mcp_server.projects import resolve_project
        from mcp_server.search import SearchFilters

        if sample_id not in self.filters:
            dirs = await resolve_project(self.conn, project_path(sample_id))
            self.filters[sample_id] = SearchFilters(project_dirs=dirs)
        return self.filters[sample_id]

    async def candidates(self, questions: Sequence[Question], n: int = MAX_CANDIDATES
                         ) -> tuple[list[list[tuple[int, float]]], list[list[tuple[int, float]]]]:
        """Per question: the engine's keyword and vector candidate lists (record id, score)."""
        import numpy as np

        from mcp_server.search.keyword import keyword_ranks
        from mcp_server.search.vector import vector_ranks

        await self.embed_queries(questions)
        kw_all, vec_all = [], []
        for q in questions:
            f = await self.project_filter(q.sample_id)
            kw_all.append(await keyword_ranks(self.conn, q.question, f, n))
            vec = await vector_ranks(
                self.conn, np.frombuffer(self.qvec[(q.sample_id, q.qid)], dtype=np.float32), f, n)
            vec_all.append([(rid, sim) for rid, sim, _ in vec])
        return kw_all, vec_all

    async def record_uuid(self) -> dict[int, str]:
        return dict(await self.conn.execute_fetchall("SELECT id, uuid FROM records"))

    async def record_source(self) -> dict[int, Any]:
        return dict(await self.conn.execute_fetchall("SELECT id, source_id FROM records"))

    async def record_dia(self) -> dict[int, str]:
        rows = await self.conn.execute_fetchall("SELECT id, uuid FROM records")
        return {rid: self.by_uuid.get(u or "", "?") for rid, u in rows}


def score_runs(questions: Sequence[Question], runs: Sequence[Sequence[str]]
               ) -> list[dict[str, float]]:
    return [question_metrics(r, q.evidence) for q, r in zip(questions, runs)]


# ---------------------------------------------------------------------------
# fusion, in pure Python over candidate lists


Ranked = Sequence[tuple[int, float]]


def rrf(lists: Sequence[Ranked], ks: Sequence[float], weights: Sequence[float],
        n: int) -> list[tuple[int, float]]:
    """Weighted reciprocal-rank fusion (one k per list): every candidate, best first."""
    scores: dict[int, float] = {}
    for items, k, w in zip(lists, ks, weights):
        for rank, (rid, _s) in enumerate(items[:n], 1):
            scores[rid] = scores.get(rid, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _normalise(items: Ranked, how: str) -> tuple[dict[int, float], float]:
    """(id -> normalised score, the score given to ids missing from the list)."""
    if not items:
        return {}, 0.0
    vals = [s for _, s in items]
    if how == "minmax":
        lo, hi = min(vals), max(vals)
        span = hi - lo or 1.0
        return {rid: (s - lo) / span for rid, s in items}, 0.0
    mean = statistics.fmean(vals)
    sd = statistics.pstdev(vals) or 1.0
    norm = {rid: (s - mean) / sd for rid, s in items}
    return norm, min(norm.values())


def score_fusion(lists: Sequence[Ranked], how: str, weights: Sequence[float],
                 n: int) -> list[tuple[int, float]]:
    """Weighted sum of per-list normalised scores (min-max or z): every candidate, best first."""
    normed = [_normalise(items[:n], how) for items in lists]
    ids = list(dict.fromkeys(rid for items in lists for rid, _ in items[:n]))
    scores = {rid: sum(w * norm.get(rid, floor) for (norm, floor), w in zip(normed, weights))
              for rid in ids}
    return sorted(scores.items(), key=lambda kv: -kv[1])


def smooth(order: list[tuple[int, float]], source: dict[int, Any], weight: float,
           radius: int) -> list[tuple[int, float]]:
    """The engine's neighbour smoothing (mcp_server.search.fusion.smooth), without the database."""
    by_source: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    for rid, score in order:
        by_source[source.get(rid)].append((rid, score))
    out = []
    for rid, score in order:
        bonus = sum(s for other, s in by_source[source.get(rid)]
                    if other != rid and abs(other - rid) <= radius)
        out.append((rid, score + weight * bonus))
    return sorted(out, key=lambda kv: -kv[1])


@dataclass
class Setting:
    name: str
    params: dict[str, Any]

    def fuse(self, a: Ranked, b: Ranked, source: dict[int, Any]) -> list[int]:
        """The top LIMIT record ids for one question (the reference implementation)."""
        p, n = self.params, self.params["candidates"]
        weights = (p["keyword"], p["vector"])
        if p["method"] in ("rrf", "rrf2"):
            ks = (p["k"], p["k"]) if p["method"] == "rrf" else (p["k_keyword"], p["k_vector"])
            order = rrf((a, b), ks, weights, n)
        else:
            order = score_fusion((a, b), p["method"], weights, n)
        if p.get("neighbors"):
            order = smooth(order, source, p["neighbors"], int(p["radius"]))
        return [rid for rid, _ in order[:LIMIT]]


def _name(p: dict[str, Any]) -> str:
    if p["method"] == "rrf":
        head = f"rrf k={p['k']}"
    elif p["method"] == "rrf2":
        head = f"rrf k_kw={p['k_keyword']} k_vec={p['k_vector']}"
    else:
        head = p["method"]
    tail = f" nb={p['neighbors']} r={p['radius']}" if p.get("neighbors") else ""
    return f"{head} kw={p['keyword']} vec={p['vector']} cand={p['candidates']}{tail}"


SMOOTHING = ((0.0, 0), (0.1, 1), (0.25, 1), (0.5, 1), (0.1, 2), (0.25, 2), (0.5, 2), (1.0, 2),
             (0.25, 3), (0.5, 3))


def fusion_grid(candidates: Iterable[int] = (30, 50, 100),
                ks: Sequence[float] = (1, 3, 5, 10, 20, 60),
                weights: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5),
                rrf2_weights: Sequence[float] = (0.5, 0.7, 0.85, 1.0, 1.2),
                score_weights: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0),
                smoothing: Sequence[tuple[float, int]] = SMOOTHING) -> list[Setting]:
    """Weighted RRF (one k; a k per ranker), min-max and z score fusion, each with and
    without the engine's neighbour smoothing (weight, radius)."""
    params: list[dict[str, Any]] = []
    for n in candidates:
        for k in ks:
            for wv in weights:
                params.append({"method": "rrf", "k": k, "keyword": 1.0, "vector": wv,
                               "candidates": n})
        for kk, kv in itertools.product(ks, ks):
            if kk != kv:
                for wv in rrf2_weights:
                    params.append({"method": "rrf2", "k_keyword": kk, "k_vector": kv,
                                   "keyword": 1.0, "vector": wv, "candidates": n})
        for how in ("minmax", "z"):
            for wv in score_weights:
                params.append({"method": how, "keyword": 1.0, "vector": wv, "candidates": n})
    out = []
    for p in params:
        for nb, radius in smoothing:
            if nb and p["method"] == "rrf" and p["vector"] == 0.0:
                continue
            q = {**p, "neighbors": nb, "radius": radius}
            out.append(Setting(_name(q), q))
    return out


def explore_grid() -> list[Setting]:
    """A smaller grid, run for every pair of candidate lists."""
    return fusion_grid(candidates=(50, 100), ks=(1, 3, 5, 10, 20), weights=(0.5, 0.7, 1.0, 1.2),
                       rrf2_weights=(), score_weights=(0.3, 0.5, 0.7, 1.0),
                       smoothing=((0.0, 0), (0.25, 1), (0.25, 2), (0.5, 2), (0.5, 3)))


class Pair:
    """Two candidate lists per question as padded numpy arrays: a setting scores in milliseconds.

    Columns are the union of the lists, keyword items first then vector-only
    items, each in rank order, so a stable sort breaks ties the way the
    engine's dict-based fusion does. `Setting.fuse` is the reference
    implementation; `check()` compares the two.
    """

    MAX_DIST = 100

    def __init__(self, questions: Sequence[Question], kw: Sequence[Ranked], vec: Sequence[Ranked],
                 dia: dict[int, str], source: dict[int, Any]) -> None:
        import numpy as np

        self.np = np
        self.questions, self.kw, self.vec, self.dia, self.source = questions, kw, vec, dia, source
        cols = [list(dict.fromkeys([r for r, _ in a] + [r for r, _ in b])) for a, b in zip(kw, vec)]
        width = max(max((len(c) for c in cols), default=1), LIMIT)
        shape = (len(questions), width)
        self.pad = np.ones(shape, dtype=bool)
        self.rel = np.zeros(shape, dtype=bool)
        self.rank = [np.full(shape, np.inf), np.full(shape, np.inf)]
        self.score = [np.full(shape, np.nan), np.full(shape, np.nan)]
        # distance in records between two candidates of the same file, else MAX_DIST
        self.dist = np.full((len(questions), width, width), self.MAX_DIST, dtype=np.int8)
        for i, (q, c, a, b) in enumerate(zip(questions, cols, kw, vec)):
            pos = {r: j for j, r in enumerate(c)}
            evidence = set(q.evidence)
            self.pad[i, : len(c)] = False
            self.rel[i, : len(c)] = [dia.get(r) in evidence for r in c]
            for side, items in enumerate((a, b)):
                for rank, (rid, s) in enumerate(items, 1):
                    self.rank[side][i, pos[rid]] = rank
                    self.score[side][i, pos[rid]] = s
            ids = np.array(c, dtype=np.int64)
            src = np.array([hash(source.get(r)) for r in c], dtype=np.int64)
            d = np.abs(ids[:, None] - ids[None, :])
            d = np.where(src[:, None] == src[None, :], np.minimum(d, self.MAX_DIST), self.MAX_DIST)
            self.dist[i, : len(c), : len(c)] = d
        self.nev = np.array([len(q.evidence) for q in questions], dtype=float)
        self.discount = 1 / np.log2(np.arange(LIMIT) + 2)
        self.ideal = np.array([self.discount[: min(int(n), LIMIT)].sum() for n in self.nev])
        self._near: dict[int, Any] = {}

    def near(self, radius: int) -> Any:
        if radius not in self._near:
            self._near[radius] = ((self.dist <= radius) & (self.dist > 0)).astype(self.np.float32)
        return self._near[radius]

    def fused(self, setting: Setting) -> Any:
        np, p, n = self.np, setting.params, setting.params["candidates"]
        total = np.zeros(self.pad.shape)
        weights = (p["keyword"], p["vector"])
        present = ((self.rank[0] <= n) | (self.rank[1] <= n)) & ~self.pad
        if p["method"] in ("rrf", "rrf2"):
            ks = (p["k"], p["k"]) if p["method"] == "rrf" else (p["k_keyword"], p["k_vector"])
            for side in (0, 1):
                rank = self.rank[side]
                total += np.where(rank <= n, weights[side] / (ks[side] + rank), 0.0)
        else:
            for side in (0, 1):
                inside = self.rank[side] <= n
                s = np.where(inside, self.score[side], np.nan)
                any_ = inside.any(axis=1)
                with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                    __import__("warnings").simplefilter("ignore")
                    if p["method"] == "minmax":
                        lo, hi = np.nanmin(s, axis=1), np.nanmax(s, axis=1)
                        span = np.where(hi - lo > 0, hi - lo, 1.0)
                        norm = (s - lo[:, None]) / span[:, None]
                        floor = np.zeros(len(s))
                    else:
                        mean, sd = np.nanmean(s, axis=1), np.nanstd(s, axis=1)
                        sd = np.where(sd > 0, sd, 1.0)
                        norm = (s - mean[:, None]) / sd[:, None]
                        floor = np.nanmin(norm, axis=1)
                floor = np.where(any_, floor, 0.0)
                norm = np.where(inside, norm, floor[:, None])
                total += weights[side] * np.nan_to_num(norm)
        total = np.where(present, total, 0.0)
        if p.get("neighbors"):
            bonus = np.matmul(self.near(int(p["radius"])), total[:, :, None].astype(np.float32))[:, :, 0]
            total = total + p["neighbors"] * bonus
        return np.where(present, total, -np.inf)

    def metrics(self, setting: Setting) -> Any:
        """Per question rows of R@1, R@5, R@10, nDCG@10 (an array, METRICS order)."""
        np = self.np
        total = self.fused(setting)
        top = np.argsort(-total, axis=1, kind="stable")[:, :LIMIT]
        valid = np.take_along_axis(total, top, axis=1) > -np.inf
        hits = np.take_along_axis(self.rel, top, axis=1) & valid
        cols = [hits[:, :k].sum(axis=1) / self.nev for k in KS]
        cols.append((hits * self.discount).sum(axis=1) / self.ideal)
        return np.stack(cols, axis=1)

    def per_question(self, setting: Setting) -> list[dict[str, float]]:
        return [dict(zip(METRICS, map(float, row))) for row in self.metrics(setting)]

    def objective(self, setting: Setting) -> float:
        m = self.metrics(setting)
        return float((m[:, 1] + m[:, 2] + 0.1 * m[:, 3]).mean())

    def reference(self, setting: Setting) -> list[dict[str, float]]:
        return [question_metrics([self.dia.get(r, "?") for r in setting.fuse(a, b, self.source)],
                                 q.evidence)
                for q, a, b in zip(self.questions, self.kw, self.vec)]

    def check(self, setting: Setting) -> float:
        """Largest difference of the mean metrics, numpy against the reference (should be ~0)."""
        ref = aggregate(list(zip(self.questions, self.reference(setting))))["all"]
        got = aggregate(list(zip(self.questions, self.per_question(setting))))["all"]
        return max(abs(ref[m] - got[m]) for m in METRICS)


def sensitivity(best: Setting, pairs: dict[str, Pair]) -> str:
    """R@5 / R@10 when one parameter of `best` moves, on every split: how sharp is the optimum?"""
    moves = {"k": (1, 3, 5, 10, 20, 60), "vector": (0.3, 0.5, 0.7, 1.0, 1.5),
             "candidates": (30, 50, 100), "neighbors": (0.0, 0.25, 0.5, 0.75, 1.0),
             "radius": (1, 2, 3, 4)}
    lines = [f"\nsensitivity around {best.name} (R@5/R@10 per split):"]
    for key, values in moves.items():
        if key not in best.params:
            continue
        for v in values:
            p = {**best.params, key: v}
            cells = []
            for split, pair in pairs.items():
                m = pair.metrics(Setting("", p)).mean(axis=0)
                cells.append(f"{split} {m[1]:.3f}/{m[2]:.3f}")
            mark = " *" if v == best.params[key] else ""
            lines.append(f"  {key:<10} {v!s:<5} " + "   ".join(cells) + mark)
    return "\n".join(lines)


def method_key(s: Setting) -> str:
    return s.params["method"] + ("+smooth" if s.params.get("neighbors") else "")


def tune(settings: Sequence[Setting], pair: Pair
         ) -> list[tuple[float, Setting]]:
    scored = [(pair.objective(s), s) for s in settings]
    scored.sort(key=lambda t: -t[0])
    return scored


def only(per_q: Sequence[dict[str, float]], questions: Sequence[Question]
         ) -> dict[str, dict[str, float]]:
    return aggregate(list(zip(questions, per_q)))


# ---------------------------------------------------------------------------
# prototypes of engine changes (--explore)


_OR_WORD = re.compile(r"\w+", re.UNICODE)


from ingest.db import fts_text


async def keyword_variant(bench: Bench, questions: Sequence[Question], form: str,
                          table: str = "records_fts", n: int = MAX_CANDIDATES,
                          columns: str = "") -> list[Ranked]:
    """Keyword candidates with another query form or FTS table (the engine's filters)."""
    from mcp_server.search.terms import STOPWORDS

    out = []
    for q in questions:
        words = list(dict.fromkeys(w.lower() for w in _OR_WORD.findall(q.question)))
        if form == "or_content":
            words = [w for w in words if w not in STOPWORDS] or words
        terms = ['"' + fts_text(w).strip().replace('"', '""') + '"' for w in words]
        if not terms:
            out.append([])
            continue
        f = await bench.project_filter(q.sample_id)
        where, params = f.sql()
        bm25 = f"bm25({table}{columns})"
        sql = (f"SELECT r.id, {bm25} FROM {table} JOIN records r ON r.id = {table}.rowid "
               f"LEFT JOIN sources src ON src.id = r.source_id WHERE {table} MATCH ? {where} "
               f"ORDER BY {bm25} LIMIT ?")
        rows = await bench.conn.execute_fetchall(sql, (" OR ".join(terms), *params, n))
        out.append([(rid, -float(s)) for rid, s in rows])
    return out


async def make_plain_fts(bench: Bench) -> None:
    """A temp FTS5 table without the porter stemmer over the same records."""
    await bench.conn.execute("DROP TABLE IF EXISTS temp.fts_plain")
    await bench.conn.execute(
        "CREATE VIRTUAL TABLE temp.fts_plain USING fts5(text, "
        "tokenize='unicode61 remove_diacritics 2')")
    await bench.conn.execute(
        "INSERT INTO temp.fts_plain(rowid, text) SELECT id, deja_fts_text(text) FROM records")


async def vector_variant(bench: Bench, questions: Sequence[Question], texts: dict[str, list[str]],
                         cache: Path) -> list[Ranked]:
    """Dense candidates over other record texts: {sample: text per turn}, numpy cosine."""
    import numpy as np

    mats: dict[str, tuple[np.ndarray, list[int]]] = {}
    rid_of = {v: k for k, v in (await bench.record_uuid()).items()}
    flat = [(sid, i, t) for sid, ts in sorted(texts.items()) for i, t in enumerate(ts)]
    key = hashlib.sha256("\0".join(t for _, _, t in flat).encode()).hexdigest()[:16]
    path = cache / f"vectors-{bench.embedder.backend}-{key}.npy"
    if path.is_file():
        vecs = np.load(path)
    else:
        import anyio

        vecs = await anyio.to_thread.run_sync(bench.embedder.embed, [t for _, _, t in flat])
        np.save(path, vecs)
    row = 0
    for sid, ts in sorted(texts.items()):
        conv = bench.ds.conversations[sid]
        ids = [rid_of[turn_uuid(sid, t.dia_id)] for t in conv.turns]
        mats[sid] = (vecs[row:row + len(ts)], ids)
        row += len(ts)
    await bench.embed_queries(questions)
    out = []
    for q in questions:
        mat, ids = mats[q.sample_id]
        qv = np.frombuffer(bench.qvec[(q.sample_id, q.qid)], dtype=np.float32)
        sims = mat @ qv
        order = np.argsort(-sims)[:MAX_CANDIDATES]
        out.append([(ids[i], float(sims[i])) for i in order])
    return out


def context_texts(ds: DataSet, how: str) -> dict[str, list[str]]:
    """Per sample, a text per turn (in conversation order) for the embedding variants."""
    out: dict[str, list[str]] = {}
    for sid, conv in ds.conversations.items():
        texts = []
        for _n, _d, turns in conv.sessions:
            for i, t in enumerate(turns):
                own = turn_text(t, "plain" if how == "plain" else "prefix")
                if how == "prev":
                    prev = turns[i - 1] if i else None
                    own = (turn_text(prev, "prefix") + "\n" if prev else "") + own
                elif how == "prev_next":
                    prev = turns[i - 1] if i else None
                    nxt = turns[i + 1] if i + 1 < len(turns) else None
                    own = ((turn_text(prev, "prefix") + "\n" if prev else "") + own
                           + ("\n" + turn_text(nxt, "prefix") if nxt else ""))
                texts.append(own)
        out[sid] = texts
    return out


def ranked_ids(lists: Sequence[Ranked], n: int = LIMIT) -> list[list[int]]:
    return [[rid for rid, _ in items[:n]] for items in lists]


def runs_from_ids(ids: Sequence[Sequence[int]], dia: dict[int, str]) -> list[list[str]]:
    return [[dia.get(r, "?") for r in row] for row in ids]


# ---------------------------------------------------------------------------
# rankers for bench/recall.py (real-transcript questions): the tuned fusion there too
#   python bench/recall.py --rankers search:hybrid --ranker bench.locomo:tuned_hybrid

# Chosen on the LoCoMo dev split by `--tune` (the best single-k RRF with smoothing). It
# does not transfer: on bench/questions.json it loses 5 points of hit@10 (80 -> 71.7).
TUNED_FUSION: dict[str, float] = {"k": 1, "keyword": 1.0, "vector": 0.5, "candidates": 50,
                                  "neighbors": 0.5, "radius": 2}
# Chosen on LoCoMo dev under "no loss on bench/questions.json": k=1, the rest as the engine's.
RECOMMENDED_FUSION: dict[str, float] = {"k": 1, "keyword": 1.0, "vector": 1.0, "candidates": 100,
                                        "neighbors": 0.25, "radius": 2}


def hybrid_ranker(fusion: dict[str, float] | None) -> Callable[..., Any]:
    """A bench/recall.py ranker: search() hybrid over all projects with these fusion overrides."""

    async def ranker(ctx: Any, query: str, limit: int) -> list[str | None]:
        from mcp_server.search import FUSION, Resources, SearchRequest, search

        result = await search(ctx.conn, SearchRequest(query, mode="hybrid", limit=limit,
                                                      project="all"),
                              Resources(embedder=ctx.embedder),
                              fusion=dataclasses.replace(FUSION, **(fusion or {})))
        if result.vector_status != "ok":
            raise RuntimeError(f"vector search not used: {result.vector_status}")
        return [h.uuid for h in result.hits]

    return ranker


tuned_hybrid = hybrid_ranker(TUNED_FUSION)


def __getattr__(name: str) -> Any:
    """`bench.locomo:fusion {"k": 3, "vector": 0.7}` or `bench.locomo:ctx {"weight": 0.5,
    "fusion": {...}}`: a recall.py ranker for any fusion or context weight."""
    if name.startswith("fusion "):
        return hybrid_ranker(json.loads(name[len("fusion "):]))
    if name.startswith("ctx "):
        spec = json.loads(name[len("ctx "):])
        return hybrid_ranker({**(spec.get("fusion") or {}), "context": spec.get("weight", 0.25)})
    raise AttributeError(name)


# ---------------------------------------------------------------------------
# main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from ingest.db import connect

    report: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v)
                                       for k, v in vars(args).items()}}
    say = (lambda s: print(s, flush=True))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    samples = args.samples.split(",") if args.samples else None
    ds = load_dataset(Path(args.data), samples)
    report["data"] = {"questions": len(ds.questions), "skipped_questions": ds.skipped,
                      "dropped_evidence_ids": ds.dropped_ids, "repaired_evidence_entries": ds.repaired_ids}
    say(f"LoCoMo: {len(ds.conversations)} conversations, {sum(len(c.turns) for c in ds.conversations.values())} "
        f"turns, {len(ds.questions)} questions kept; skipped {ds.skipped}; evidence ids dropped "
        f"{ds.dropped_ids}; entries repaired {ds.repaired_ids}")

    started = time.perf_counter()
    embedder = load_bench_embedder(args.backend)
    timings["model_load_s"] = time.perf_counter() - started
    say(f"embedder: {embedder.model_id} ({embedder.backend}), loaded in {timings['model_load_s']:.1f} s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    db, info = await build(ds, workdir, args.layout, args.text, embedder, say)
    timings["build_s"] = time.perf_counter() - started
    report["build"] = info
    say(f"database {db} ({'cached' if info['cached'] else 'built'}; {info['records']} records; "
        f"ingest {info['ingest_s']} s, embed {info['embedded']} records in {info['embed_s']} s)")

    conn = await connect(db)
    try:
        bench = Bench(ds, conn, embedder)
        splits = [s for s in ("dev", "test") if not args.split or s == args.split]
        if samples:
            splits = ["all"]
        tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {} for s in splits}

        # 1. the engine as it is, through search()
        if not args.no_engine:
            for split in splits:
                qs = bench.split(split)
                for mode in ("keyword", "vector", "hybrid"):
                    started = time.perf_counter()
                    runs = await bench.engine_run(qs, mode)
                    dt = time.perf_counter() - started
                    timings[f"search_{mode}_{split}_ms_per_q"] = 1000 * dt / max(len(qs), 1)
                    tables[split][f"search:{mode}"] = aggregate(list(zip(qs, score_runs(qs, runs))))
                if args.fusion:
                    runs = await bench.engine_run(qs, "hybrid", json.loads(args.fusion))
                    tables[split]["search:hybrid --fusion"] = aggregate(list(zip(qs, score_runs(qs, runs))))
                if args.context is not None:
                    f = {**json.loads(args.fusion or "{}"), "context": args.context}
                    runs = await bench.engine_run(qs, "hybrid", f)
                    tables[split][f"search+ctx{args.context}:hybrid"] = aggregate(
                        list(zip(qs, score_runs(qs, runs))))
                say(format_table(f"\n[{split}] engine search() (FUSION defaults)",
                                 {k: {"all": v["all"]} for k, v in tables[split].items()}))

        dia = await bench.record_dia()
        if args.engine in ("postgresql", "both"):
            from pg_locomo import pg_tables

            started = time.perf_counter()
            pg = await pg_tables({s: bench.split(s) for s in splits}, db.parent / "projects",
                                 info["stamp"], embedder, workdir, bench.by_uuid, project_path,
                                 LIMIT, lambda qs, runs: aggregate(list(zip(qs, score_runs(qs, runs)))),
                                 say)
            timings["postgresql_s"] = time.perf_counter() - started
            for split in splits:
                tables[split].update(pg[split])
                say(format_table(f"\n[{split}] PostgreSQL search_pg() (FUSION defaults)",
                                 {k: {"all": v["all"]} for k, v in pg[split].items()}))

        if args.tune or args.explore:
            started = time.perf_counter()
            cand = {}
            # Cached per database and engine source: reruns of the tuning are quick.
            engine_src = b"".join(f.read_bytes() for f in
                                  sorted((REPO / "mcp_server" / "search").glob("*.py")))
            key = hashlib.sha256(json.dumps(info["stamp"]).encode() + engine_src).hexdigest()[:16]
            cache_file = db.parent / f"candidates-{key}.json"
            cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
            for split in splits:
                qs = bench.split(split)
                if split in cached:
                    kw, vec = cached[split]
                    cand[split] = (qs, [[tuple(x) for x in row] for row in kw],
                                   [[tuple(x) for x in row] for row in vec])
                else:
                    cand[split] = (qs, *await bench.candidates(qs))
                    cached[split] = [cand[split][1], cand[split][2]]
            cache_file.write_text(json.dumps(cached))
            timings["candidates_s"] = time.perf_counter() - started

        if args.tune and "dev" in cand:
            started = time.perf_counter()
            source = await bench.record_source()
            pairs = {split: Pair(*cand[split], dia, source) for split in splits}
            grid = fusion_grid()
            scored = tune(grid, pairs["dev"])
            timings["tune_s"] = time.perf_counter() - started
            say(f"\n[dev] fusion grid: {len(grid)} settings in {timings['tune_s']:.1f} s; best 15 "
                f"by R@5+R@10 (+0.1 nDCG):")
            for obj, s in scored[:15]:
                a = pairs["dev"].metrics(s).mean(axis=0)
                say(f"  {obj:.4f}  R@1 {a[0]:.3f} R@5 {a[1]:.3f} R@10 {a[2]:.3f} "
                    f"nDCG {a[3]:.3f}  {s.name}")
            best_by_method: dict[str, tuple[float, Setting]] = {}
            for obj, s in scored:
                best_by_method.setdefault(method_key(s), (obj, s))
            from mcp_server.search import FUSION

            engine = Setting("engine FUSION", {"method": "rrf", **dataclasses.asdict(FUSION)})
            engine.name = "engine FUSION: " + _name(engine.params)
            say("  best per method:\n" + "\n".join(f"    {m:<10} {o:.4f}  {s.name}"
                                                     for m, (o, s) in best_by_method.items()))
            say(f"    {'engine':<10} {pairs['dev'].objective(engine):.4f}  {engine.name}")
            worst = max(pairs["dev"].check(s) for _, s in [*best_by_method.values(), (0, engine)])
            say(f"  numpy scorer vs reference fusion, largest difference in a mean: {worst:.2g}")
            report["tuned"] = {"best_per_method": {m: s.params for m, (o, s) in best_by_method.items()},
                               "top": [(round(o, 4), s.params) for o, s in scored[:30]]}
            for split in splits:
                qs = cand[split][0]
                tables[split]["fusion:engine FUSION"] = only(pairs[split].per_question(engine), qs)
                for m, (_o, s) in best_by_method.items():
                    tables[split][f"tuned:{m}"] = only(pairs[split].per_question(s), qs)
            # The engine with the best RRF setting, through search(fusion=...):
            # also checks the bench's fusion against the engine's.
            best_rrf = max((v for m, v in best_by_method.items() if m.startswith("rrf") and "2" not in m),
                           key=lambda v: v[0])[1]
            fusion = {k: best_rrf.params[k] for k in ("k", "keyword", "vector", "candidates",
                                                       "neighbors", "radius")}
            for split in splits:
                qs = bench.split(split)
                started = time.perf_counter()
                runs = await bench.engine_run(qs, "hybrid", fusion)
                timings[f"search_hybrid_tuned_{split}_ms_per_q"] = 1000 * (time.perf_counter() - started) / len(qs)
                tables[split]["search:hybrid tuned"] = aggregate(list(zip(qs, score_runs(qs, runs))))
                tables[split]["fusion:same, in the bench"] = only(pairs[split].per_question(best_rrf), qs)
            report["tuned"]["engine_fusion"] = fusion
            say(sensitivity(best_rrf, pairs))

        if args.explore and "dev" in cand:
            await explore(bench, cand, tables, dia, workdir / "explore", report, say, timings)

        for split in splits:
            say(format_table(f"\n[{split}] all rankers, overall and per category", tables[split]))
        report["tables"] = tables
    finally:
        await conn.close()
    timings["total_s"] = time.perf_counter() - t0
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    say("\ntimings: " + ", ".join(f"{k} {v:.2f}" for k, v in report["timings"].items()))
    return report


async def explore(bench: Bench, cand: dict[str, Any], tables: dict[str, Any], dia: dict[int, str],
                  cache: Path, report: dict[str, Any], say: Callable[[str], None],
                  timings: dict[str, float]) -> None:
    """Candidate-list variants, each fused over a grid chosen on dev, reported on both splits.

    keyword: the engine's ranker (AND, then OR of the rarer content words);
    or_content / or_all: one OR query of the content words / of every word;
    nostem: FTS without porter; ctx<w>: the engine's ranker with bm25 weight w
    for the context column (the previous record's text; the engine's is 0.25).
    vector: the engine's (the record's text, "Speaker: ..."); np_plain: without
    the speaker; np_prev / np_prev_next: with the previous (and next) turn of
    the session prepended (appended) - computed here, ranked with numpy.
    The best (keyword, vector) pair's RRF setting then runs through search().
    """
    from mcp_server.search.keyword import keyword_ranks

    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    await make_plain_fts(bench)
    kw_lists: dict[str, dict[str, list[Ranked]]] = defaultdict(dict)
    vec_lists: dict[str, dict[str, list[Ranked]]] = defaultdict(dict)
    for split, (qs, kw, vec) in cand.items():
        kw_lists["engine"][split] = kw
        vec_lists["engine"][split] = vec
        kw_lists["or_content"][split] = await keyword_variant(bench, qs, "or_content")
        kw_lists["or_all"][split] = await keyword_variant(bench, qs, "or_all")
        kw_lists["nostem_or_content"][split] = await keyword_variant(bench, qs, "or_content", "fts_plain")
        for w in (0.0, 0.5, 1.0):  # the engine's list is 0.25 (FUSION.context)
            kw_lists[f"ctx{w}"][split] = [
                await keyword_ranks(bench.conn, q.question, await bench.project_filter(q.sample_id),
                                     MAX_CANDIDATES, w) for q in qs]
    for how in ("plain", "prev", "prev_next"):
        texts = context_texts(bench.ds, how)
        for split, (qs, _kw, _vec) in cand.items():
            vec_lists["np_" + how][split] = await vector_variant(bench, qs, texts, cache)
    timings["explore_lists_s"] = time.perf_counter() - started

    for split, (qs, _kw, _vec) in cand.items():
        for name, lists in kw_lists.items():
            tables[split][f"kw:{name}"] = only(score_runs(qs, runs_from_ids(ranked_ids(lists[split]), dia)), qs)
        for name, lists in vec_lists.items():
            tables[split][f"vec:{name}"] = only(score_runs(qs, runs_from_ids(ranked_ids(lists[split]), dia)), qs)

    # The fusion grid over each (keyword, vector) pair: chosen on dev.
    started = time.perf_counter()
    grid = explore_grid()
    source = await bench.record_source()
    dev_q = cand["dev"][0]
    results = []
    for kname, vname in itertools.product(kw_lists, vec_lists):
        pair = Pair(dev_q, kw_lists[kname]["dev"], vec_lists[vname]["dev"], dia, source)
        scored = tune(grid, pair)
        best_rrf = next(s for _, s in scored if s.params["method"] == "rrf")
        results.append((scored[0][0], kname, vname, scored[0][1], best_rrf))
    results.sort(key=lambda r: -r[0])
    timings["explore_tune_s"] = time.perf_counter() - started
    say(f"\n[dev] best fusion per (keyword list, vector list), {len(grid)} settings each:")
    for obj, kname, vname, s, _ in results:
        say(f"  {obj:.4f}  kw={kname:<18} vec={vname:<13} {s.name}")
    report["explore"] = [{"objective": round(o, 4), "keyword": k, "vector": v, "best": s.params,
                          "best_rrf": r.params} for o, k, v, s, r in results]
    for _obj, kname, vname, s, r in results[:3]:
        for split, (qs, _kw, _vec) in cand.items():
            pair = Pair(qs, kw_lists[kname][split], vec_lists[vname][split], dia, source)
            tables[split][f"proto:{kname}+{vname} {_name(s.params)}"] = only(pair.per_question(s), qs)
            if r is not s:
                tables[split][f"proto:{kname}+{vname} {_name(r.params)}"] = only(pair.per_question(r), qs)

    # The best context weight with the engine's own vectors, through search().
    ctx = next(r for r in results
               if r[2] == "engine" and (r[1] == "engine" or r[1].startswith("ctx")))
    weight = 0.25 if ctx[1] == "engine" else float(ctx[1][3:])
    fusion = {k: ctx[4].params[k] for k in ("k", "keyword", "vector", "candidates", "neighbors", "radius")}
    fusion["context"] = weight
    report["context_best"] = {"weight": weight, "fusion": fusion}
    say(f"\nbest context weight through search(): bm25 weight {weight}, fusion {fusion}")
    for split, (qs, _kw, _vec) in cand.items():
        runs = await bench.engine_run(qs, "hybrid", fusion)
        tables[split][f"search+ctx{weight}:hybrid tuned"] = aggregate(list(zip(qs, score_runs(qs, runs))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="locomo10.json")
    parser.add_argument("--workdir", default="/tmp/deja-locomo",
                        help="transcripts and databases, kept between runs")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch", "auto"))
    parser.add_argument("--layout", default="ua", choices=("ua", "uu"),
                        help="ua: speaker_a user, speaker_b assistant; uu: both user prompts")
    parser.add_argument("--text", default="prefix", choices=("prefix", "plain"),
                        help="prefix: 'Speaker: text'; plain: the text alone")
    parser.add_argument("--split", choices=("dev", "test"), help="only this split")
    parser.add_argument("--samples", help="comma-separated sample ids (a quick run; no split)")
    parser.add_argument("--tune", action="store_true", help="tune fusion on dev, report test")
    parser.add_argument("--explore", action="store_true", help="prototype engine changes")
    parser.add_argument("--no-engine", action="store_true", help="skip the plain search() runs")
    parser.add_argument("--fusion", help="JSON fusion overrides for an extra search() hybrid run, "
                        'e.g. \'{"k": 1, "vector": 0.5, "candidates": 50, "neighbors": 0.5}\'')
    parser.add_argument("--context", type=float, metavar="W",
                        help="also run search() hybrid with bm25 weight W for the previous "
                        "record's text (the context column; the engine uses 0.25)")
    parser.add_argument("--json", help="write every table and setting to this file")
    parser.add_argument("--engine", default="sqlite", choices=("sqlite", "postgresql", "both"),
                        help="postgresql/both: also ask every question through the PostgreSQL "
                        "engine (a pgserver kept in the workdir; bench/pg_locomo.py)")
    args = parser.parse_args(argv)
    if args.split == "test" and (args.tune or args.explore):
        parser.error("--tune and --explore choose on dev: they need the dev split")
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
