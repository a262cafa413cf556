"""From the rankers' lists to hits: the steps both engines share, with no SQL in them.

Why a module of its own: the SQLite engine (engine.py) and the PostgreSQL one
(pg/engine.py) rank with their own SQL, but must order and present what
they found the same way, so hybrid search means one thing on both. Each
engine reads the rows these functions need in its own SQL and hands them
over: `fused_order` is the final ranking before neighbour smoothing (one
ranker's list as it is, or the weighted fusion of fusion.py), `build_hits`
turns the ranked ids and their rows into hits, one per transcript line,
with snippets, within the token budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .fusion import Fusion, fuse
from .request import SearchRequest
from .results import Hit, SearchResult
from .snippets import make_snippet, word_pattern
from .terms import has_cjk, query_words

__all__ = ["HIT_COLUMNS", "Keyword", "Vector", "Ml", "fused_order", "build_hits", "rows_wanted"]

Keyword = list[tuple[int, float]]             # (record id, keyword score), best first
Vector = list[tuple[int, float, int]]         # (record id, cosine, best chunk id), best first
Ml = list[tuple[int, float]]                  # (record id, multilingual cosine), best first

# The row of a hit, as both engines select it (r: records, s: sessions); PostgreSQL adds
# r.machine after these.
HIT_COLUMNS = ("r.id, r.uuid, r.session_id, COALESCE(s.cwd, r.cwd, s.project_dir), r.kind, "
               "r.ts, r.text, r.tool_name, r.agent_id, r.part")


def fused_order(request: SearchRequest, keyword: Keyword, vector: Vector, fusion: Fusion,
                ml: Ml | None = None) -> tuple[list[tuple[int, float]], bool]:
    """The ranking before smoothing, and whether it is a fusion (then neighbours smooth it)."""
    if request.mode == "keyword" or not (vector or ml):
        return [(rid, score) for rid, score in keyword], False
    if request.mode == "vector":
        return [(rid, sim) for rid, sim, _ in vector], False
    w_vector = fusion.vector
    if has_cjk(request.query):
        # all-MiniLM-L6-v2 was trained on English: its vectors of Chinese or
        # Japanese text are near noise, so let the keywords lead.
        w_vector *= fusion.cjk_vector
    order = fuse(keyword, vector, k=fusion.k, w_keyword=fusion.keyword, w_vector=w_vector,
                 multilingual=ml or (), w_multilingual=fusion.multilingual)
    return order, bool(fusion.neighbors)


def rows_wanted(order: Sequence[tuple[int, float]], limit: int) -> list[int]:
    """The ids whose rows `build_hits` may need: more than the limit, as one line's parts
    and replays collapse into one hit."""
    return [rid for rid, _ in order[: limit * 3 + 10]]


def build_hits(request: SearchRequest, order: Sequence[tuple[int, float]],
               by_id: Mapping[int, Sequence[Any]], spans: Mapping[int, int],
               kw_rank: Mapping[int, tuple[int, float]],
               vec_rank: Mapping[int, tuple[int, float, int]], result: SearchResult,
               passages: Mapping[int, int],
               ml_rank: Mapping[int, tuple[int, float]] | None = None) -> list[Hit]:
    """Hits for the ranked ids: `by_id` their rows (HIT_COLUMNS, then the machine on
    PostgreSQL), `spans` where each best vector chunk starts.

    A snippet centres on the keyword passage that matched, else on the best
    vector chunk, else on the first query word."""
    limit, max_tokens = request.limit, request.max_tokens
    words = query_words(request.query)
    pattern = word_pattern(words) if words else None
    hits: list[Hit] = []
    seen: set[Any] = set()
    used_tokens = 0
    for rid, score in order:
        row = by_id.get(rid)
        if row is None:
            continue
        # One hit per transcript line: its parts (several tool results of one
        # user line) and its replays in other files (a /btw side question)
        # would crowd out other answers. The handle leads to the rest.
        key = row[1] or row[0]
        if key in seen:
            continue
        seen.add(key)
        around = passages.get(rid)
        if around is None and rid in vec_rank:
            around = spans.get(vec_rank[rid][2])
        snippet = make_snippet(row[6], words, around)
        cost = len(snippet) // 4 + 30  # the snippet and the hit's fields
        if max_tokens is not None and used_tokens + cost > max_tokens and hits:
            result.truncated_by_budget = True
            break
        used_tokens += cost
        scores: dict[str, Any] = {}
        if rid in kw_rank:
            scores["bm25_rank"], scores["bm25"] = kw_rank[rid][0], round(kw_rank[rid][1], 4)
            # Matched in its own words, or only in the record before it (context).
            own = pattern is not None and pattern.search(row[6]) is not None
            scores["bm25_match"] = "text" if own else "previous"
        if rid in vec_rank:
            scores["vector_rank"], scores["cosine"] = vec_rank[rid][0], round(vec_rank[rid][1], 4)
        if ml_rank and rid in ml_rank:
            scores["ml_rank"], scores["ml_cosine"] = ml_rank[rid][0], round(ml_rank[rid][1], 4)
        hits.append(Hit(
            id=row[0], uuid=row[1], session_id=row[2], project=row[3], kind=row[4],
            timestamp=row[5], snippet=snippet, tool_name=row[7], agent_id=row[8],
            score=float(score), scores=scores, machine=row[10] if len(row) > 10 else None,
        ))
        if len(hits) >= limit:
            break
    return hits
