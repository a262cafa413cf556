"""Fusion of the two rankers' lists, neighbour smoothing, and the tuned constants.

Hybrid search fuses the keyword and vector candidate lists by a weighted sum
of rank-based scores (weighted reciprocal rank). Equal-weight RRF with k=60
hurts the top ranks (DESIGN.md); the constants in `FUSION` were tuned instead.
Then a candidate gains a share of the scores of its neighbours in the same
file that matched too (`smooth`): an answer often sits next to the line that
matches the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .vector import COARSE_K

__all__ = ["FUSION", "Fusion", "fuse", "smooth", "smooth_by_source"]


# Tuned on the LoCoMo dev split (bench/locomo.py) and checked on the real-transcript
# questions (bench/recall.py): k=1 lifts LoCoMo test hybrid from R@5/R@10 .544/.667
# (k=10) to .593/.699 and leaves the real questions at hit@10 80%. The dev-best
# vector 0.5 / neighbours 0.5 cost the real questions 8 points: not taken.
@dataclass(frozen=True)
class Fusion:
    """How hybrid search weighs and feeds its rankers; override with `dataclasses.replace`."""

    k: float = 1.0           # reciprocal-rank offset: score = weight / (k + rank)
    keyword: float = 1.0     # weight of the keyword (BM25) list
    vector: float = 1.0      # weight of the vector list
    candidates: int = 100    # candidates each ranker returns (at least twice the limit)
    neighbors: float = 0.25  # share of a neighbour's fused score a candidate gains (0: off)
    radius: int = 2          # neighbours: at most this many records away in the same file
    cjk_vector: float = 0.3  # the vector weight is multiplied by this for a CJK query
    context: float = 0.25    # bm25 weight of the previous record's words (hybrid only)
    coarse: int = COARSE_K   # chunks the vector ranker re-ranks exactly (vector.py)
    # weight of the multilingual-e5 list over the non-English records (multilingual.py;
    # the optional extra): +3.9 hit@10 on bench/recall.py v1+dev, issue 12
    multilingual: float = 0.5


FUSION = Fusion()


def fuse(keyword: Sequence[tuple[int, float]], vector: Sequence[tuple[int, float, int]],
         *, k: float, w_keyword: float, w_vector: float,
         multilingual: Sequence[tuple[int, float]] = (), w_multilingual: float = 0.0
         ) -> list[tuple[int, float]]:
    """Weighted reciprocal-rank fusion: score = sum of w / (k + rank)."""
    scores: dict[int, float] = {}
    for rank, (rid, _sim) in enumerate(multilingual, 1):
        scores[rid] = scores.get(rid, 0.0) + w_multilingual / (k + rank)
    for rank, (rid, _score) in enumerate(keyword, 1):
        scores[rid] = scores.get(rid, 0.0) + w_keyword / (k + rank)
    for rank, (rid, _sim, _cid) in enumerate(vector, 1):
        scores[rid] = scores.get(rid, 0.0) + w_vector / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


async def smooth(conn: aiosqlite.Connection, order: list[tuple[int, float]], weight: float,
                 radius: int) -> list[tuple[int, float]]:
    """Lift candidates whose neighbours in the same file also matched.

    An answer often sits next to the line that matches the question (the tool
    output after the command, the reply after the prompt). A candidate gains
    `weight` times the fused scores of other candidates at most `radius`
    records away in the same file. Records of a file get consecutive ids as
    they are read, so id distance stands for distance in the conversation.
    """
    if len(order) < 2:
        return order
    ids = [rid for rid, _ in order]
    rows = await conn.execute_fetchall(
        f"SELECT id, source_id FROM records WHERE id IN ({', '.join('?' for _ in ids)}) "
        f"AND kind != 'memory'", ids)
    # Memories share one pseudo-source per project but are no conversation:
    # they have no neighbours.
    return smooth_by_source(order, {rid: src for rid, src in rows}, weight, radius)


def smooth_by_source(order: list[tuple[int, float]], source: dict[int, Any], weight: float,
                     radius: int) -> list[tuple[int, float]]:
    """`smooth` once each candidate's file is known (`source`: record id -> source id, the
    records without neighbours left out); both engines share it."""
    by_source: dict[Any, list[tuple[int, float]]] = {}
    for rid, score in order:
        if rid in source:
            by_source.setdefault(source[rid], []).append((rid, score))
    smoothed = []
    for rid, score in order:
        bonus = 0.0
        if rid in source:
            bonus = sum(s for other, s in by_source[source[rid]]
                        if other != rid and abs(other - rid) <= radius)
        smoothed.append((rid, score + weight * bonus))
    return sorted(smoothed, key=lambda kv: -kv[1])
