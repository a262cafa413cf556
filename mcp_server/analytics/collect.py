"""`deja stats`: the analytics of the history, in a handful of grouped scans.

Each question is one SQL statement that groups in the database and returns a
few thousand rows at most; Python only folds those rows into days, weeks,
months, projects and models. That keeps `deja stats --json` near a second on a
million records (bench/stats_speed.py).

Counting rules (DESIGN.md "The command line", FORMAT.md "One assistant
response spans several lines"):
- tokens: once per (`message.id`, `requestId`), keeping the largest value of
  each usage field (older versions grow usage chunk by chunk; newer ones
  repeat it on every chunk). A line without a message id counts once by
  itself. The `responses` table (migration m008) holds them so counted.
- tool calls: once per tool_use id within a session, across all its files (a
  `/btw` aside replays the parent's lines, subagent progress copies exist).
  Keyed by session too because non-Anthropic ids such as `call_function_1`
  repeat across sessions. A call is an error when one of its results says
  `is_error`.
- messages: prompts and slash commands typed, and assistant text replies.
- sessions: rows of `sessions` (one per Claude Code session id, subagents
  included in their parent); with a time filter, those with a record in range.

Filters: `project` as everywhere in deja (projects.resolve_project: a path
covers its subfolders, or a project folder name), `since` inclusive and
`until` exclusive, both in the forms `parse_time` reads. A filter narrows
every figure but the database-wide ones `Store.stats` gives (files, chunks,
size) and the top terms (see terms.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite
import anyio

from ..projects import resolve_project
from ..search.times import parse_time
from .periods import PERIODS
from .prices import TOKEN_FIELDS, PriceTable
from .terms import top_terms

__all__ = ["StatsFilters", "collect", "EDIT_TOOLS", "MESSAGE_KINDS"]

EDIT_TOOLS = ("Edit", "MultiEdit", "Write", "NotebookEdit")
MESSAGE_KINDS = ("prompt", "command", "assistant")
_TOP = 10


@dataclass
class StatsFilters:
    """What `deja stats` was asked to look at, as a person typed it."""

    project: str | None = None
    since: str | None = None
    until: str | None = None


@dataclass
class _Where:
    """The records filter as SQL over `records r`, with its parameters."""

    sql: str = ""
    params: list[Any] = field(default_factory=list)
    projects: list[str] | None = None

    def clause(self, first: bool = True) -> str:
        if not self.sql:
            return ""
        return (" WHERE " if first else " AND ") + self.sql


async def _where(conn: aiosqlite.Connection, f: StatsFilters) -> tuple[_Where, dict[str, Any]]:
    parts: list[str] = []
    params: list[Any] = []
    shown: dict[str, Any] = {"project": f.project, "since": None, "until": None}
    projects = await resolve_project(conn, f.project)
    if projects is not None:
        marks = ", ".join("?" for _ in projects) or "NULL"
        parts.append(f"r.session_id IN (SELECT session_id FROM sessions WHERE project_dir IN ({marks}))")
        params += projects
        shown["projects"] = projects
    if f.since:
        shown["since"] = parse_time(f.since)
        parts.append("r.ts >= ?")
        params.append(shown["since"])
    if f.until:
        shown["until"] = parse_time(f.until)
        parts.append("r.ts < ?")
        params.append(shown["until"])
    return _Where(" AND ".join(parts), params, projects), shown


async def _rows(conn: aiosqlite.Connection, sql: str, params: list[Any] | tuple[Any, ...] = ()
                ) -> list[Any]:
    return list(await conn.execute_fetchall(sql, tuple(params)))


def _tokens() -> dict[str, int]:
    return dict.fromkeys(TOKEN_FIELDS, 0)


def _add(into: dict[str, int], row: Any) -> None:
    for name, value in zip(TOKEN_FIELDS, row):
        into[name] += int(value or 0)


# One row per (day, session, kind, model): everything about activity.
_ACTIVITY = """
SELECT substr(r.ts, 1, 10), r.session_id, r.kind, r.model, COUNT(*), MIN(r.ts), MAX(r.ts)
FROM records r{where}
GROUP BY 1, 2, 3, 4
"""

# Usage per response: `responses` holds one row per (message id, request id)
# with the largest usage of its lines (migration m008, ingest/derived.py).
_USAGE = """
SELECT substr(r.ts, 1, 10), r.session_id, r.model, SUM(r.input), SUM(r.output),
    SUM(r.cache_creation), SUM(r.cache_read), COUNT(*)
FROM responses r{where}
GROUP BY 1, 2, 3
"""

# One row per tool: calls (session, tool_use_id) and those with an error result.
_TOOLS = """
SELECT name, COUNT(*), SUM(failed) FROM (
    SELECT MAX(CASE WHEN r.kind = 'tool_call' THEN r.tool_name END) AS name,
        MAX(r.kind = 'tool_result' AND r.is_error = 1) AS failed,
        MAX(r.kind = 'tool_call') AS called
    FROM records r
    WHERE r.tool_use_id IS NOT NULL AND r.kind IN ('tool_call', 'tool_result'){where}
    GROUP BY r.session_id, r.tool_use_id
) WHERE called GROUP BY name ORDER BY 2 DESC
"""

# The path an edit names: the value of its input's "file_path" (or
# "notebook_path") key, cut out of the call's JSON text by position because a
# capped Write is no longer valid JSON. The first unescaped `"file_path":"` is
# the key: inside a JSON string every quote is escaped.
_EDITS = """
SELECT substr(rest, 1, instr(rest, '"') - 1) AS path, COUNT(*) FROM (
    SELECT DISTINCT r.session_id, r.tool_use_id,
        CASE WHEN instr(r.text, '"file_path":"') > 0
             THEN substr(r.text, instr(r.text, '"file_path":"') + 13)
             WHEN instr(r.text, '"notebook_path":"') > 0
             THEN substr(r.text, instr(r.text, '"notebook_path":"') + 17) END AS rest
    FROM records r
    WHERE r.kind = 'tool_call' AND r.tool_name IN ({tools}){where}
) WHERE rest IS NOT NULL AND instr(rest, '"') > 1
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?
"""


def _json_string(raw: str) -> str:
    """A JSON string's inside, unescaped (a Windows path's `\\\\`); as is when it cannot be."""
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


async def collect(conn: aiosqlite.Connection, filters: StatsFilters, prices: PriceTable,
                  top: int = _TOP, terms_conn: aiosqlite.Connection | None = None
                  ) -> dict[str, Any]:
    """Every figure of `deja stats` as one JSON-ready dict (see the module docstring).

    `terms_conn`, a second connection to the same database, lets the top terms
    (a walk over the whole full-text index: 2.5 s of about 6 at a million
    records) run in its own thread while the other scans run on `conn`.
    Raises InvalidQuery for a time it cannot read.
    """
    # Before the task group, so a bad filter is raised as itself, not in an ExceptionGroup.
    where, shown = await _where(conn, filters)
    terms: list[dict[str, Any]] = []

    async def read_terms() -> None:
        terms.extend(await top_terms(terms_conn or conn, limit=top * 3))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_terms)
        figures = await _figures(conn, where, shown, prices, top)
    return {**figures, "top_terms": terms, "top_terms_scope": "all"}


async def _figures(conn: aiosqlite.Connection, where: _Where, shown: dict[str, Any],
                   prices: PriceTable, top: int) -> dict[str, Any]:
    sessions_meta = {
        r[0]: {"project": r[1], "title": r[2], "cwd": r[3]}
        for r in await _rows(conn, "SELECT session_id, project_dir, title, cwd FROM sessions")
    }

    # -- activity -------------------------------------------------------------
    by_kind: dict[str, int] = defaultdict(int)
    periods: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in PERIODS}
    span: dict[str, list[Any]] = {}  # session -> [first ts, last ts, records, prompts, messages]
    model_sessions: dict[str, set[str]] = defaultdict(set)
    model_messages: dict[str, int] = defaultdict(int)
    for day, sid, kind, model, n, first, last in await _rows(
            conn, _ACTIVITY.format(where=where.clause()), where.params):
        by_kind[kind] += n
        is_message = kind in MESSAGE_KINDS
        if sid is not None:
            s = span.setdefault(sid, [first, last, 0, 0, 0])
            s[0] = min(filter(None, (s[0], first)), default=None)
            s[1] = max(filter(None, (s[1], last)), default=None)
            s[2] += n
            s[3] += n if kind in ("prompt", "command") else 0
            s[4] += n if is_message else 0
        if model:
            model_sessions[model].add(sid)
            if is_message:
                model_messages[model] += n
        if day:
            for name, period_of in PERIODS.items():
                p = periods[name].setdefault(period_of(day), {"sessions": set(), "messages": 0,
                                                               "records": 0})
                p["records"] += n
                p["messages"] += n if is_message else 0
                if sid is not None:
                    p["sessions"].add(sid)

    if where.sql:
        counted = [sid for sid in span if sid in sessions_meta]
    else:
        counted = list(sessions_meta)
    projects: dict[str, dict[str, Any]] = {}
    for sid in counted:
        proj = sessions_meta[sid]["project"] or "?"
        p = projects.setdefault(proj, {"sessions": 0, "messages": 0, "records": 0,
                                       "tokens": _tokens(), "cost_usd": 0.0})
        p["sessions"] += 1
        if sid in span:
            p["records"] += span[sid][2]
            p["messages"] += span[sid][4]

    # -- tokens ---------------------------------------------------------------
    tokens = _tokens()
    models: dict[str, dict[str, Any]] = {}
    session_tokens: dict[str, dict[str, int]] = defaultdict(_tokens)
    session_cost: dict[str, float] = defaultdict(float)
    day_tokens: dict[str, dict[str, int]] = defaultdict(_tokens)
    responses = 0
    for day, sid, model, *usage, count in await _rows(
            conn, _USAGE.format(where=where.clause()), where.params):
        responses += count
        _add(tokens, usage)
        name = model or "?"
        m = models.setdefault(name, {"sessions": 0, "messages": 0, "responses": 0,
                                     "tokens": _tokens(), "cost_usd": None})
        m["responses"] += count
        _add(m["tokens"], usage)
        _add(session_tokens[sid], usage)
        if day:
            _add(day_tokens[day], usage)
        price = prices.for_model(model)
        if price is not None:
            cost = price.cost(dict(zip(TOKEN_FIELDS, (int(v or 0) for v in usage))))
            session_cost[sid] += cost
            m["cost_usd"] = (m["cost_usd"] or 0.0) + cost
    for name, sids in model_sessions.items():
        m = models.setdefault(name, {"sessions": 0, "messages": 0, "responses": 0,
                                     "tokens": _tokens(), "cost_usd": None})
        m["sessions"] = len(sids)
        m["messages"] = model_messages[name]
    for sid, toks in session_tokens.items():
        proj = sessions_meta.get(sid, {}).get("project") or "?"
        if proj in projects:
            _add(projects[proj]["tokens"], [toks[f] for f in TOKEN_FIELDS])
            projects[proj]["cost_usd"] += session_cost.get(sid, 0.0)
    unpriced = sorted(n for n, m in models.items() if m["cost_usd"] is None and
                      any(m["tokens"].values()))
    total_cost = sum(m["cost_usd"] or 0.0 for m in models.values())

    # -- tools, edits, terms --------------------------------------------------
    tools = {
        name or "?": {"calls": calls, "errors": int(errors or 0)}
        for name, calls, errors in await _rows(
            conn, _TOOLS.format(where=where.clause(first=False)), where.params)
    }
    edits = [
        {"path": _json_string(path), "edits": n}
        for path, n in await _rows(
            conn, _EDITS.format(tools=", ".join(f"'{t}'" for t in EDIT_TOOLS),
                                where=where.clause(first=False)), [*where.params, top * 2])
    ][:top]

    # -- sessions ranked --------------------------------------------------------
    def session_row(sid: str) -> dict[str, Any]:
        meta = sessions_meta.get(sid, {})
        first, last, n, prompts, _ = span.get(sid, [None, None, 0, 0, 0])
        return {"session_id": sid, "project": meta.get("project"), "title": meta.get("title"),
                "first_ts": first, "last_ts": last, "duration_s": _seconds(first, last),
                "records": n, "prompts": prompts,
                "tokens": session_tokens.get(sid, _tokens()),
                "cost_usd": round(session_cost[sid], 4) if sid in session_cost else None}

    longest = sorted(span, key=lambda s: (-(_seconds(span[s][0], span[s][1]) or 0), s))[:top]
    costliest = sorted(session_cost, key=lambda s: (-session_cost[s], s))[:top]

    return {
        "filters": shown,
        "sessions": len(counted),
        "records": sum(by_kind.values()),
        "by_kind": dict(sorted(by_kind.items())),
        "messages": sum(n for k, n in by_kind.items() if k in MESSAGE_KINDS),
        "activity": {
            name: [{"period": key, "sessions": len(v["sessions"]), "messages": v["messages"],
                    "records": v["records"]} for key, v in sorted(rows.items())]
            for name, rows in periods.items()
        },
        "tokens_by_day": [{"period": d, **t} for d, t in sorted(day_tokens.items())],
        "projects": dict(sorted(projects.items(), key=lambda kv: (-kv[1]["sessions"], kv[0]))),
        "models": {k: {**v, "cost_usd": _round(v["cost_usd"])}
                   for k, v in sorted(models.items(), key=lambda kv: -sum(kv[1]["tokens"].values()))},
        "tools": tools,
        "tool_calls": sum(t["calls"] for t in tools.values()),
        "tool_errors": sum(t["errors"] for t in tools.values()),
        "tokens": tokens,
        "responses": responses,
        "cost": {"usd": round(total_cost, 4), "estimate": True, "unpriced_models": unpriced,
                 "prices": prices.as_json()},
        "sessions_longest": [session_row(s) for s in longest],
        "sessions_costliest": [session_row(s) for s in costliest],
        "files_edited": edits,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _seconds(first: str | None, last: str | None) -> float | None:
    """Seconds from `first` to `last` (ISO timestamps), None when either is missing."""
    if not first or not last:
        return None
    try:
        a = datetime.fromisoformat(first.replace("Z", "+00:00"))
        b = datetime.fromisoformat(last.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 3)
