"""One search engine for the CLI and the MCP tools: BM25 + vectors, fused.

Rankers
- keyword: FTS5 BM25 over records. User text is never passed to MATCH as is:
  it is split into words and phrases, each quoted (an embedded `"` doubled),
  so `foo-bar`, `a.b()`, `"`, `*`, `NEAR`, `AND` or parentheses are searched
  as text and never raise. A trailing `*` on a word is kept as a prefix query.
  All words are required first (AND); if that finds too few, an OR of the
  non-stopwords fills the list, still ranked by BM25.
- vector: nearest chunks by sign bits, re-ranked by exact cosine over their
  int8 vectors (vector_search.py); a record scores as its best chunk. Filters
  apply before the candidates are cut, so a filtered query is never starved.
- hybrid: both candidate lists fused by a weighted sum of rank-based scores
  (weighted reciprocal rank, FUSION_K and the weights tuned on the LoCoMo dev
  split and our real-transcript questions; DESIGN.md: equal-weight RRF with
  k=60 hurts the top ranks). Each hit carries every ranker's rank and score.

When the model cannot load or no vectors exist yet, hybrid answers from
keyword search alone and says so in `notes` / `vector_status`.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from ingest.db import fts_text
from ingest.errors import InvalidQuery
from ingest.parse import KINDS

from .projects import resolve_project
from .vector_search import COARSE_K, vector_ranks

if TYPE_CHECKING:
    from ingest.embed import Embedder

    from .vector_index import VectorIndex

__all__ = [
    "Hit", "SearchResult", "SearchFilters", "build_fts_queries", "keyword_search", "search",
    "parse_time", "MODES", "FUSION",
]

logger = logging.getLogger(__name__)

MODES = ("hybrid", "keyword", "vector")

# Tuned on the LoCoMo dev split (bench/locomo.py) and checked on the real-transcript
# questions (bench/recall.py): k=1 lifts LoCoMo test hybrid from R@5/R@10 .544/.667
# (k=10) to .593/.699 and leaves the real questions at hit@10 80%. The dev-best
# vector 0.5 / neighbours 0.5 cost the real questions 8 points: not taken.
FUSION: dict[str, float] = {"k": 1.0, "keyword": 1.0, "vector": 1.0, "candidates": 100,
                            "neighbors": 0.25, "radius": 2, "cjk_vector": 0.3, "context": 0.25,
                            "coarse": COARSE_K}

# A quoted phrase, or a run of word characters joined by . - _ / : (foo-bar,
# a.b, path/to/x), optionally followed by * (prefix).
_TOKEN = re.compile(r'"([^"]*)"?|([\w][\w.\-/:@#+]*\w|\w)(\*?)', re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)

_STOPWORDS = frozenset(
    """a an and are as at be but by did do does for from had has have how i if in into is it
    its me my of on or our so that the their them then there these they this to was we were
    what when where which who whom why will with would you your can could should about after
    before done get got his her he she him any all been being very just also than too
    """.split()
)


_CJK_RUN = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _cjk_terms(word: str) -> list[str]:
    """Bigrams of the CJK characters of `word`, other characters kept as words."""
    out: list[str] = []
    run = ""
    for ch in word + " ":
        if _CJK_RUN.match(ch):
            run += ch
            continue
        if run:
            out.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
            run = ""
        if ch.strip():
            if out and not _CJK_RUN.match(out[-1][-1:]) and out[-1].isalnum():
                out[-1] += ch
            else:
                out.append(ch)
    return out


def _quote(words: list[str]) -> str:
    text = fts_text(" ".join(words)).strip()
    return '"' + text.replace('"', '""') + '"'


@dataclass(frozen=True)
class FtsTerm:
    """One term of a user query, quoted for MATCH, with the words it is made of."""

    fts: str
    words: tuple[str, ...]
    stop: bool


def build_fts_terms(query: str) -> list[FtsTerm]:
    """The query's terms, in order, deduplicated; see the module docstring."""
    terms: list[FtsTerm] = []
    for m in _TOKEN.finditer(query):
        phrase, word, star = m.group(1), m.group(2), m.group(3)
        source = phrase if phrase is not None else word
        words = _WORD.findall(source or "")
        if not words:
            continue
        if phrase is None and len(words) == 1 and _CJK_RUN.search(words[0]):
            # Chinese/Japanese/Korean have no spaces: a run of characters is a
            # sentence, not a word. Overlapping character pairs match the words
            # inside it wherever they appear.
            for gram in _cjk_terms(words[0]):
                terms.append(FtsTerm(_quote([gram]), (gram.lower(),), False))
            continue
        fts = _quote(words)
        if star and phrase is None:
            fts += " *"
        stop = len(words) == 1 and words[0].lower() in _STOPWORDS
        terms.append(FtsTerm(fts, tuple(w.lower() for w in words), stop))
    unique: dict[str, FtsTerm] = {}
    for t in terms:
        unique.setdefault(t.fts, t)
    return list(unique.values())


def build_fts_queries(query: str) -> tuple[str | None, str | None]:
    """(AND query, OR query) for FTS5 MATCH from free text; None when nothing searchable."""
    terms = build_fts_terms(query)
    if not terms:
        return None, None
    and_query = " ".join(t.fts for t in terms)
    content = [t.fts for t in terms if not t.stop] or [t.fts for t in terms]
    or_query = " OR ".join(content) if len(terms) > 1 else None
    return and_query, or_query


def query_words(query: str) -> list[str]:
    """The non-stopword words of a query, lowercased, for highlighting snippets."""
    words: list[str] = []
    for w in _WORD.findall(query):
        words.extend(_cjk_terms(w) if _CJK_RUN.search(w) else [w])
    return [w for w in dict.fromkeys(w.lower() for w in words) if w not in _STOPWORDS]


# -- time filters ------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|hr|hours?|d|days?|w|wk|weeks?|mo|months?|y|years?)\s*(ago)?\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400, "y": 365 * 86400}


def _unit(u: str) -> str:
    u = u.lower()
    if u.startswith("mo"):
        return "mo"
    if u in ("m", "min"):
        return "m"
    return u[0]


def parse_time(value: str, now: datetime | None = None) -> str:
    """An ISO-8601 UTC bound ('2026-05-01T00:00:00.000Z') from what a person types.

    Accepts ISO dates and datetimes, `7d`, `2w`, `3h`, `30min`, `6mo`, `1y`
    (optionally followed by "ago"), `today`, `yesterday`, `now`.
    Raises InvalidQuery with the accepted forms.
    """
    now = now or datetime.now(timezone.utc)
    text = value.strip().lower()
    when: datetime | None = None
    if text == "now":
        when = now
    elif text == "today":
        when = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elif text == "yesterday":
        when = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    elif (m := _RELATIVE.match(text)) is not None:
        when = now - timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[_unit(m.group(2))])
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidQuery(
                f"cannot read the time {value!r}: use an ISO date (2026-05-01), a datetime "
                "(2026-05-01T14:00), a relative form (7d, 2w, 3h, 6mo) or today/yesterday"
            ) from None
        when = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.astimezone(timezone.utc).microsecond // 1000:03d}Z"


# -- filters -------------------------------------------------------------------


@dataclass
class SearchFilters:
    """Resolved filters shared by both rankers."""

    kinds: list[str] | None = None
    session_id: str | None = None
    project_dirs: list[str] | None = None  # None: every project
    tool: str | None = None
    since: str | None = None
    until: str | None = None

    def sql(self) -> tuple[str, list[Any]]:
        """AND-clauses over `records r` (joined to `sources src`), and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []

        def one_of(column: str, values: Sequence[str]) -> None:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)

        if self.kinds:
            one_of("r.kind", self.kinds)
        if self.session_id:
            one_of("r.session_id", [self.session_id])
        if self.project_dirs is not None:
            one_of("src.project_dir", self.project_dirs)
        if self.tool:
            one_of("r.tool_name", [self.tool])
        if self.since:
            clauses.append("r.ts >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("r.ts < ?")
            params.append(self.until)
        return "".join(" AND " + c for c in clauses), params


# -- results -------------------------------------------------------------------


@dataclass
class Hit:
    id: int
    uuid: str | None
    session_id: str | None
    project: str | None
    kind: str
    timestamp: str | None
    snippet: str
    tool_name: str | None
    agent_id: str | None
    score: float
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def handle(self) -> str:
        """A stable reference to expand the turns around this hit (`deja show`)."""
        return f"rec:{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "session_id": self.session_id, "project": self.project,
            "kind": self.kind, "timestamp": self.timestamp, "snippet": self.snippet,
            "tool_name": self.tool_name, "agent_id": self.agent_id, "handle": self.handle,
            "record_id": self.id, "score": round(self.score, 6), "scores": self.scores,
        }


@dataclass
class SearchResult:
    hits: list[Hit]
    query: str
    mode: str
    vector_status: str = "not used"
    notes: list[str] = field(default_factory=list)
    pending_embeddings: int = 0
    elapsed_ms: float = 0.0
    truncated_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query, "mode": self.mode, "hits": [h.to_dict() for h in self.hits],
            "vector_status": self.vector_status, "pending_embeddings": self.pending_embeddings,
            "notes": self.notes, "truncated_by_budget": self.truncated_by_budget,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


# -- rankers -----------------------------------------------------------------------

# bm25 weighs a record's own words 1 and those of the record before it
# (the `context` column, migration m005) FUSION["context"]. Without filters
# the ranking stays inside the FTS table (_KEYWORD_FTS_SQL): joining records
# first looked up every matching row before the sort, 2.5-3x the time.
_KEYWORD_FTS_SQL = """
SELECT rowid, bm25(records_fts, 1.0, {context})
FROM records_fts
WHERE records_fts MATCH ?
ORDER BY bm25(records_fts, 1.0, {context})
LIMIT ?
"""
_KEYWORD_SQL = """
SELECT r.id, bm25(records_fts, 1.0, {context})
FROM records_fts
JOIN records r ON r.id = records_fts.rowid
LEFT JOIN sources src ON src.id = r.source_id
WHERE records_fts MATCH ? {filters}
ORDER BY bm25(records_fts, 1.0, {context})
LIMIT ?
"""


# The OR query scores every record holding any of its terms, about 0.6 us per
# posting: a few common words would make it score much of the corpus (0.6 s at
# 1M records). It keeps the rarest terms, at most OR_MAX_TERMS, none found in
# more than OR_MAX_DOC_SHARE of the records, and stops adding terms before
# their documents sum past OR_MAX_POSTINGS (bench/keyword_scale.py: a share
# threshold alone lets the work grow with the corpus; a posting budget only
# trims the worst queries, and never below 100k records). Counts are of the
# text column; the context column adds about 0.7x as many postings.
OR_MAX_DOC_SHARE = 0.2
OR_MAX_TERMS = 12
OR_MAX_POSTINGS = 150_000
OR_PRUNE_FROM = 20_000  # records; below this the OR query is cheap as it is

_STEM_BATCH = itertools.count(1)


async def _doc_counts(conn: aiosqlite.Connection, terms: list[FtsTerm]) -> dict[str, int]:
    """Records whose text holds each term (its rarest word), keyed by the term's MATCH text.

    The words are run through the index's own tokenizer (a temp FTS5 table
    and its vocabulary) to get the exact stems the index holds: guessing a
    stem as a prefix fails for use/us, only/onli, key/kei, library/librari.
    Rows are numbered per call so concurrent searches on one connection do
    not read each other's.
    """
    await conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.deja_stems USING fts5(t, "
        "tokenize='porter unicode61 remove_diacritics 2')")
    await conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.deja_stems_vocab "
                       "USING fts5vocab(temp, deja_stems, 'instance')")
    base = next(_STEM_BATCH) * 1_000_000  # a query has far fewer terms
    await conn.executemany("INSERT INTO temp.deja_stems (rowid, t) VALUES (?, ?)",
                           [(base + i, fts_text(" ".join(t.words))) for i, t in enumerate(terms)])
    try:
        rows = await conn.execute_fetchall(
            "SELECT doc, term FROM temp.deja_stems_vocab WHERE doc >= ? AND doc < ?",
            (base, base + len(terms)))
    finally:
        await conn.execute("DELETE FROM temp.deja_stems WHERE rowid >= ? AND rowid < ?",
                           (base, base + len(terms)))
    stems: dict[int, list[str]] = {}
    for doc, term in rows:
        stems.setdefault(doc - base, []).append(term)
    wanted = sorted({stem for group in stems.values() for stem in group})
    found: dict[str, int] = {}
    if wanted:
        found = dict(await conn.execute_fetchall(
            f"SELECT term, doc FROM records_fts_vocab WHERE col = 'text' AND "
            f"term IN ({', '.join('?' for _ in wanted)})", wanted))
    return {t.fts: min((found.get(stem, 0) for stem in stems.get(i, [])), default=0)
            for i, t in enumerate(terms)}


async def _or_query(conn: aiosqlite.Connection, terms: list[FtsTerm]) -> str | None:
    content = [t for t in terms if not t.stop] or terms
    if len(terms) < 2:
        return None
    total = (await conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM records"))[0][0]
    if total < OR_PRUNE_FROM:
        return " OR ".join(t.fts for t in content)
    df = await _doc_counts(conn, content)
    ranked = sorted(content, key=lambda t: df[t.fts])
    kept: list[FtsTerm] = []
    postings = 0
    for t in ranked:
        if df[t.fts] > OR_MAX_DOC_SHARE * total or len(kept) == OR_MAX_TERMS:
            break
        if kept and postings + df[t.fts] > OR_MAX_POSTINGS:
            break
        kept.append(t)
        postings += df[t.fts]
    kept = kept or ranked[:1]
    return " OR ".join(t.fts for t in kept)


async def _keyword_ranks(conn: aiosqlite.Connection, query: str, filters: SearchFilters,
                         n: int, context: float = 0.25) -> list[tuple[int, float]]:
    """(record id, bm25 score, higher is better), best first.

    `context` is the bm25 weight of the previous record's words; 0 searches
    the records' own words only (keyword mode: what an exact search expects)."""
    terms = build_fts_terms(query)
    if not terms:
        return []
    and_q = " ".join(t.fts for t in terms)
    own_words = context <= 0
    if own_words:
        and_q = f"text : ({and_q})"
    where, params = filters.sql()
    sql = (_KEYWORD_SQL.format(filters=where, context=float(context)) if where
           else _KEYWORD_FTS_SQL.format(context=float(context)))
    out: list[tuple[int, float]] = []
    seen: set[int] = set()
    for rid, score in await conn.execute_fetchall(sql, (and_q, *params, n)):
        seen.add(rid)
        out.append((rid, -float(score)))
    if len(out) < n:
        or_q = await _or_query(conn, terms)
        if or_q is not None and own_words:
            or_q = f"text : ({or_q})"
        if or_q is not None:
            for rid, score in await conn.execute_fetchall(sql, (or_q, *params, n)):
                if rid not in seen:
                    seen.add(rid)
                    out.append((rid, -float(score)))
    return out[:n]


def fuse(keyword: Sequence[tuple[int, float]], vector: Sequence[tuple[int, float, int]],
         *, k: float, w_keyword: float, w_vector: float) -> list[tuple[int, float]]:
    """Weighted reciprocal-rank fusion: score = sum of w / (k + rank)."""
    scores: dict[int, float] = {}
    for rank, (rid, _score) in enumerate(keyword, 1):
        scores[rid] = scores.get(rid, 0.0) + w_keyword / (k + rank)
    for rank, (rid, _sim, _cid) in enumerate(vector, 1):
        scores[rid] = scores.get(rid, 0.0) + w_vector / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


async def _smooth(conn: aiosqlite.Connection, order: list[tuple[int, float]], weight: float,
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
    source = dict(rows)
    by_source: dict[Any, list[tuple[int, float]]] = {}
    for rid, score in order:
        if rid in source:
            by_source.setdefault(source[rid], []).append((rid, score))
    smoothed = []
    for rid, score in order:
        bonus = sum(s for other, s in by_source.get(source.get(rid), [])
                    if other != rid and abs(other - rid) <= radius) if rid in source else 0.0
        smoothed.append((rid, score + weight * bonus))
    return sorted(smoothed, key=lambda kv: -kv[1])


# -- snippets ------------------------------------------------------------------------

SNIPPET_CHARS = 240


def _word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Matches the query words in text as FTS5 with porter does, roughly: a long
    word also matches by its stem-like prefix (refuelling ~ refuelled)."""
    parts = []
    for w in sorted(words, key=len, reverse=True):
        if len(w) >= 6 and w.isascii():
            parts.append(re.escape(w[: max(5, len(w) - 3)]) + r"\w*")
        else:
            parts.append(re.escape(w))
    return re.compile("|".join(parts), re.IGNORECASE)


def make_snippet(text: str, words: Sequence[str], around: int | None = None,
                 width: int = SNIPPET_CHARS) -> str:
    """A window of `text` around the first query word (or `around`), words in [brackets]."""
    pattern = _word_pattern(words) if words else None
    center = around
    if pattern is not None:
        first = pattern.search(text)
        if first is not None:
            center = first.start()
    if center is None:
        center = 0
    start = max(0, center - width // 3)
    end = min(len(text), start + width)
    piece = text[start:end]
    if pattern is not None:
        piece = pattern.sub(lambda m: f"[{m.group(0)}]", piece)
    piece = " ".join(piece.split())
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")


# -- the engine ------------------------------------------------------------------------


async def search(
    conn: aiosqlite.Connection,
    query: str,
    *,
    embedder: Embedder | None = None,
    embedder_error: str | None = None,
    mode: str = "hybrid",
    limit: int = 10,
    kinds: Sequence[str] | None = None,
    session_id: str | None = None,
    project: str | None = None,
    tool: str | None = None,
    since: str | None = None,
    until: str | None = None,
    max_tokens: int | None = None,
    now: datetime | None = None,
    fusion: dict[str, float] | None = None,
    vector_index: VectorIndex | None = None,
    vector_conn: aiosqlite.Connection | None = None,
) -> SearchResult:
    """Search the history; see the module docstring.

    `embedder` embeds the query (None: keyword only, with `embedder_error`
    saying why). `max_tokens` bounds the snippets' total size (~4 characters
    a token). A long-lived caller passes its loaded `vector_index` and a
    second connection, `vector_conn`: the vector ranker then runs on it while
    the keyword ranker runs on `conn` (SQLite releases the GIL: two cores, two
    rankers). Raises InvalidQuery for bad arguments.
    """
    started = time.perf_counter()
    if mode not in MODES:
        raise InvalidQuery(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(limit, int) or limit < 1 or limit > 200:
        raise InvalidQuery("limit must be between 1 and 200")
    if max_tokens is not None and max_tokens < 50:
        raise InvalidQuery("max_tokens must be at least 50")
    if kinds:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise InvalidQuery(f"unknown kind {unknown[0]!r}; kinds are: {', '.join(KINDS)}")
    params = {**FUSION, **(fusion or {})}
    filters = SearchFilters(
        kinds=list(kinds) if kinds else None,
        session_id=session_id or None,
        project_dirs=await resolve_project(conn, project),
        tool=tool or None,
        since=parse_time(since, now) if since else None,
        until=parse_time(until, now) if until else None,
    )
    result = SearchResult(hits=[], query=query, mode=mode)
    pending = await conn.execute_fetchall("SELECT COUNT(*) FROM records WHERE embed_state = 0")
    result.pending_embeddings = int(pending[0][0])
    n_candidates = max(int(params["candidates"]), limit * 2)

    keyword: list[tuple[int, float]] = []
    vector: list[tuple[int, float, int]] = []
    status = "not used"

    async def keyword_side() -> None:
        nonlocal keyword
        keyword = await _keyword_ranks(conn, query, filters, n_candidates,
                                       params["context"] if mode == "hybrid" else 0.0)

    async def vector_side() -> None:
        nonlocal vector, status
        vector, status = await _vector_search(vector_conn or conn, query, embedder,
                                              embedder_error, filters, n_candidates, vector_index,
                                              int(params["coarse"]))

    if mode == "hybrid" and vector_conn is not None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keyword_side)
            tg.start_soon(vector_side)
    else:
        if mode in ("hybrid", "keyword"):
            await keyword_side()
        if mode in ("hybrid", "vector"):
            await vector_side()
    if mode in ("hybrid", "vector"):
        result.vector_status = status
        if status == "ok" and embedder is not None and result.pending_embeddings:
            vector = await _add_pending(conn, query, embedder, keyword, vector)
        if status != "ok":
            result.notes.append(f"vector search unavailable ({status}): keyword results only")
            if mode == "vector":
                keyword = await _keyword_ranks(conn, query, filters, n_candidates, 0.0)
        elif result.pending_embeddings:
            result.notes.append(
                f"{result.pending_embeddings} records still await embedding; they are found "
                "by keyword only for now"
            )

    if mode == "keyword" or not vector:
        order = [(rid, score) for rid, score in keyword]
    elif mode == "vector":
        order = [(rid, sim) for rid, sim, _ in vector]
    else:
        w_vector = params["vector"]
        if _CJK_RUN.search(query):
            # all-MiniLM-L6-v2 was trained on English: its vectors of Chinese or
            # Japanese text are near noise, so let the keywords lead.
            w_vector *= params["cjk_vector"]
        order = fuse(keyword, vector, k=params["k"], w_keyword=params["keyword"],
                     w_vector=w_vector)
        if params["neighbors"]:
            order = await _smooth(conn, order, params["neighbors"], int(params["radius"]))

    kw_rank = {rid: (i + 1, s) for i, (rid, s) in enumerate(keyword)}
    vec_rank = {rid: (i + 1, s, c) for i, (rid, s, c) in enumerate(vector)}
    result.hits = await _materialize(conn, query, order, kw_rank, vec_rank, limit, max_tokens,
                                     result)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


async def _vector_search(conn: aiosqlite.Connection, query: str, embedder: Embedder | None,
                         embedder_error: str | None, filters: SearchFilters, n: int,
                         index: VectorIndex | None = None, coarse_k: int = COARSE_K
                         ) -> tuple[list[tuple[int, float, int]], str]:
    if embedder is None:
        return [], embedder_error or "no embedding model loaded"
    model = await conn.execute_fetchall("SELECT model_id, dim FROM embedding_model")
    if not model:
        return [], "no vectors yet (run `deja embed`)"
    if (model[0][0], int(model[0][1])) != (embedder.model_id, embedder.dim):
        return [], (f"the database holds vectors of {model[0][0]}, not {embedder.model_id}; "
                    "run `deja reembed`")
    qvec = await anyio.to_thread.run_sync(lambda: embedder.embed([query])[0])
    return await vector_ranks(conn, qvec, filters, n, coarse_k, index=index), "ok"


PENDING_RESCUE = 8


async def _add_pending(conn: aiosqlite.Connection, query: str, embedder: Embedder,
                       keyword: list[tuple[int, float]],
                       vector: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """Give the best keyword hits still awaiting their vector a similarity now.

    A record ingested a moment ago has no vector yet; without this it would
    only earn keyword points and could fall behind records found by both
    rankers. A few short texts embed in tens of milliseconds.
    """
    top = [rid for rid, _ in keyword[:30]]
    if not top:
        return vector
    rows = await conn.execute_fetchall(
        f"SELECT id, substr(text, 1, 1500) FROM records WHERE embed_state = 0 AND id IN "
        f"({', '.join('?' for _ in top)})", top)
    rank = {rid: i for i, rid in enumerate(top)}
    rows = sorted(rows, key=lambda r: rank[r[0]])[:PENDING_RESCUE]
    if not rows:
        return vector
    def cosines() -> list[float]:
        vecs = embedder.embed([query] + [text for _, text in rows])
        return [float(vecs[0] @ v) for v in vecs[1:]]

    sims = await anyio.to_thread.run_sync(cosines)
    known = {rid for rid, _, _ in vector}
    merged = list(vector) + [(rid, sim, -1) for (rid, _), sim in zip(rows, sims) if rid not in known]
    return sorted(merged, key=lambda item: -item[1])


async def _materialize(conn: aiosqlite.Connection, query: str, order: list[tuple[int, float]],
                       kw_rank: dict[int, tuple[int, float]],
                       vec_rank: dict[int, tuple[int, float, int]], limit: int,
                       max_tokens: int | None, result: SearchResult) -> list[Hit]:
    """Rows for the ranked ids, one per transcript line, with snippets, within the budget."""
    if not order:
        return []
    ids = [rid for rid, _ in order[: limit * 3 + 10]]
    rows = await conn.execute_fetchall(
        f"SELECT r.id, r.uuid, r.session_id, COALESCE(s.cwd, r.cwd, s.project_dir), r.kind, r.ts, "
        f"r.text, r.tool_name, r.agent_id, r.part FROM records r "
        f"LEFT JOIN sessions s ON s.session_id = r.session_id "
        f"WHERE r.id IN ({', '.join('?' for _ in ids)})",
        ids,
    )
    by_id = {row[0]: row for row in rows}
    chunk_ids = [vec_rank[rid][2] for rid in ids if rid in vec_rank and vec_rank[rid][2] >= 0]
    spans: dict[int, int] = {}
    if chunk_ids:
        for cid, start in await conn.execute_fetchall(
            f"SELECT id, char_start FROM chunks WHERE id IN ({', '.join('?' for _ in chunk_ids)})",
            chunk_ids,
        ):
            spans[cid] = start
    words = query_words(query)
    pattern = _word_pattern(words) if words else None
    hits: list[Hit] = []
    seen: set[tuple[Any, ...]] = set()
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
        around = spans.get(vec_rank[rid][2]) if rid in vec_rank else None
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
        hits.append(Hit(
            id=row[0], uuid=row[1], session_id=row[2], project=row[3], kind=row[4],
            timestamp=row[5], snippet=snippet, tool_name=row[7], agent_id=row[8],
            score=float(score), scores=scores,
        ))
        if len(hits) >= limit:
            break
    return hits


async def keyword_search(conn: aiosqlite.Connection, query: str, *, limit: int = 10,
                         **filters: Any) -> SearchResult:
    """BM25 only; the same as `search(..., mode="keyword")`."""
    return await search(conn, query, mode="keyword", limit=limit, **filters)
