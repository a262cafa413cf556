"""The grouped SQL scans of `deja stats`, each folded into what it saw.

Each statement groups in the database and returns a few thousand rows at
most; the functions here fold those rows into kinds, periods, sessions and
models, and collect.py assembles the figures from them. The counting rules
(tokens once per response, tool calls once per tool_use id within a session,
what a message is) are in collect.py's docstring.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from .periods import PERIODS
from .prices import TOKEN_FIELDS, PriceTable

__all__ = ["Where", "Activity", "Usage", "scan_activity", "scan_usage", "scan_tools",
           "scan_edits", "rows", "empty_tokens", "add_tokens", "empty_model", "EDIT_TOOLS",
           "MESSAGE_KINDS"]

EDIT_TOOLS = ("Edit", "MultiEdit", "Write", "NotebookEdit")
MESSAGE_KINDS = ("prompt", "command", "assistant")


@dataclass
class Where:
    """The records filter as SQL over `records r`, with its parameters."""

    sql: str = ""
    params: list[Any] = field(default_factory=list)
    projects: list[str] | None = None

    def clause(self, first: bool = True) -> str:
        if not self.sql:
            return ""
        return (" WHERE " if first else " AND ") + self.sql


async def rows(conn: aiosqlite.Connection, sql: str, params: list[Any] | tuple[Any, ...] = ()
         ) -> list[Any]:
    """execute_fetchall as a list (aiosqlite types it as an Iterable)."""
    return list(await conn.execute_fetchall(sql, tuple(params)))


def empty_tokens() -> dict[str, int]:
    """Each usage field at 0."""
    return dict.fromkeys(TOKEN_FIELDS, 0)


def add_tokens(into: dict[str, int], row: Any) -> None:
    """Add a row of usage fields (TOKEN_FIELDS' order) into `into`."""
    for name, value in zip(TOKEN_FIELDS, row):
        into[name] += int(value or 0)


def empty_model() -> dict[str, Any]:
    """A model's figures before any scan counted into them."""
    return {"sessions": 0, "messages": 0, "responses": 0, "tokens": empty_tokens(), "cost_usd": None}


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
        MAX(CASE WHEN r.kind = 'tool_result' AND r.is_error = 1 THEN 1 ELSE 0 END) AS failed,
        MAX(CASE WHEN r.kind = 'tool_call' THEN 1 ELSE 0 END) AS called
    FROM records r
    WHERE r.tool_use_id IS NOT NULL AND r.kind IN ('tool_call', 'tool_result'){where}
    GROUP BY r.session_id, r.tool_use_id
) AS calls WHERE called = 1 GROUP BY name ORDER BY 2 DESC, 1 NULLS FIRST
"""

# The path an edit names: the value of its input's "file_path" (or
# "notebook_path") key, cut out of the call's JSON text by position because a
# capped Write is no longer valid JSON. The first unescaped `"file_path":"` is
# the key: inside a JSON string every quote is escaped. PostgreSQL spells
# SQLite's instr(text, part) strpos(text, part) (scan_edits).
_EDITS = """
SELECT substr(rest, 1, instr(rest, '"') - 1) AS path, COUNT(*) FROM (
    SELECT DISTINCT r.session_id, r.tool_use_id,
        CASE WHEN instr(r.text, '"file_path":"') > 0
             THEN substr(r.text, instr(r.text, '"file_path":"') + 13)
             WHEN instr(r.text, '"notebook_path":"') > 0
             THEN substr(r.text, instr(r.text, '"notebook_path":"') + 17) END AS rest
    FROM records r
    WHERE r.kind = 'tool_call' AND r.tool_name IN ({tools}){where}
) AS edits WHERE rest IS NOT NULL AND instr(rest, '"') > 1
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?
"""


def _json_string(raw: str) -> str:
    """A JSON string's inside, unescaped (a Windows path's `\\\\`); as is when it cannot be."""
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


# -- activity ---------------------------------------------------------------------

@dataclass
class Activity:
    """What the activity scan saw: records by kind, per period, per session and per model."""

    by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    periods: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {p: {} for p in PERIODS})
    # session -> [first ts, last ts, records, prompts, messages]
    span: dict[str, list[Any]] = field(default_factory=dict)
    model_sessions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    model_messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def scan_activity(conn: aiosqlite.Connection, where: Where) -> Activity:
    """Records, messages and sessions folded into kinds, periods, sessions and models."""
    a = Activity()
    for day, sid, kind, model, n, first, last in await rows(
            conn, _ACTIVITY.format(where=where.clause()), where.params):
        a.by_kind[kind] += n
        is_message = kind in MESSAGE_KINDS
        if sid is not None:
            s = a.span.setdefault(sid, [first, last, 0, 0, 0])
            s[0] = min(filter(None, (s[0], first)), default=None)
            s[1] = max(filter(None, (s[1], last)), default=None)
            s[2] += n
            s[3] += n if kind in ("prompt", "command") else 0
            s[4] += n if is_message else 0
        if model:
            a.model_sessions[model].add(sid)
            if is_message:
                a.model_messages[model] += n
        if day:
            for name, period_of in PERIODS.items():
                p = a.periods[name].setdefault(period_of(day), {"sessions": set(), "messages": 0,
                                                                 "records": 0})
                p["records"] += n
                p["messages"] += n if is_message else 0
                if sid is not None:
                    p["sessions"].add(sid)
    return a


# -- tokens and cost --------------------------------------------------------------

@dataclass
class Usage:
    """What the usage scan saw: tokens in all, per model, session and day; cost per session."""

    tokens: dict[str, int] = field(default_factory=empty_tokens)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    session_tokens: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(empty_tokens))
    session_cost: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    day_tokens: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(empty_tokens))
    responses: int = 0


async def scan_usage(conn: aiosqlite.Connection, where: Where, prices: PriceTable) -> Usage:
    """Tokens per response summed by model, session and day, priced by the model's price."""
    u = Usage()
    for day, sid, model, *usage, count in await rows(
            conn, _USAGE.format(where=where.clause()), where.params):
        u.responses += count
        add_tokens(u.tokens, usage)
        m = u.models.setdefault(model or "?", empty_model())
        m["responses"] += count
        add_tokens(m["tokens"], usage)
        add_tokens(u.session_tokens[sid], usage)
        if day:
            add_tokens(u.day_tokens[day], usage)
        price = prices.for_model(model)
        if price is not None:
            cost = price.cost(dict(zip(TOKEN_FIELDS, (int(v or 0) for v in usage))))
            u.session_cost[sid] += cost
            m["cost_usd"] = (m["cost_usd"] or 0.0) + cost
    return u


# -- tools and edits --------------------------------------------------------------

async def scan_tools(conn: aiosqlite.Connection, where: Where) -> dict[str, dict[str, int]]:
    """Calls and calls with an error result, per tool, most called first."""
    return {
        name or "?": {"calls": calls, "errors": int(errors or 0)}
        for name, calls, errors in await rows(
            conn, _TOOLS.format(where=where.clause(first=False)), where.params)
    }


def _edits_sql(conn: Any) -> str:
    """_EDITS in the words of `conn`'s engine (the read queries' PgConn on PostgreSQL)."""
    if getattr(conn, "engine", "sqlite") == "postgresql":
        return _EDITS.replace("instr(", "strpos(")
    return _EDITS


async def scan_edits(conn: aiosqlite.Connection, where: Where, top: int) -> list[dict[str, Any]]:
    """The `top` files edited most often."""
    return [
        {"path": _json_string(path), "edits": n}
        for path, n in await rows(
            conn, _edits_sql(conn).format(tools=", ".join(f"'{t}'" for t in EDIT_TOOLS),
                                          where=where.clause(first=False)),
            [*where.params, top * 2])
    ][:top]

