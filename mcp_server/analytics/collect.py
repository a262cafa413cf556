"""`deja stats`: the analytics of the history, in a handful of grouped scans.

Each question is one SQL statement that groups in the database and returns a
few thousand rows at most (scans.py); Python only folds those rows into days,
weeks, months, projects and models. That keeps `deja stats --json` near a second on a
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

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
import anyio

from ..projects import resolve_project
from ..search.times import parse_time
from .prices import TOKEN_FIELDS, PriceTable
from .scans import (
    MESSAGE_KINDS,
    Activity,
    Usage,
    Where,
    add_tokens,
    empty_model,
    empty_tokens,
    rows,
    scan_activity,
    scan_edits,
    scan_tools,
    scan_usage,
)
from .terms import top_terms

__all__ = ["StatsFilters", "collect"]

_TOP = 10


@dataclass
class StatsFilters:
    """What `deja stats` was asked to look at, as a person typed it."""

    project: str | None = None
    since: str | None = None
    until: str | None = None


async def _where(conn: aiosqlite.Connection, f: StatsFilters) -> tuple[Where, dict[str, Any]]:
    """The filters as SQL over `records r`, and as the JSON's `filters` shows them."""
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
    return Where(" AND ".join(parts), params, projects), shown


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


async def _figures(conn: aiosqlite.Connection, where: Where, shown: dict[str, Any],
                   prices: PriceTable, top: int) -> dict[str, Any]:
    """Every figure but the top terms, from the grouped scans (see the module docstring)."""
    sessions_meta = {
        r[0]: {"project": r[1], "title": r[2], "cwd": r[3]}
        for r in await rows(conn, "SELECT session_id, project_dir, title, cwd FROM sessions")
    }
    activity = await scan_activity(conn, where)
    if where.sql:
        counted = [sid for sid in activity.span if sid in sessions_meta]
    else:
        counted = list(sessions_meta)
    projects = _projects(counted, sessions_meta, activity.span)
    usage = await scan_usage(conn, where, prices)
    models = usage.models
    _add_model_activity(models, activity)
    _add_project_tokens(projects, usage, sessions_meta)
    tools = await scan_tools(conn, where)
    by_kind = activity.by_kind
    return {
        "filters": shown,
        "sessions": len(counted),
        "records": sum(by_kind.values()),
        "by_kind": dict(sorted(by_kind.items())),
        "messages": sum(n for k, n in by_kind.items() if k in MESSAGE_KINDS),
        "activity": _activity_rows(activity.periods),
        "tokens_by_day": [{"period": d, **t} for d, t in sorted(usage.day_tokens.items())],
        "projects": dict(sorted(projects.items(), key=lambda kv: (-kv[1]["sessions"], kv[0]))),
        "models": {k: {**v, "cost_usd": _round(v["cost_usd"])}
                   for k, v in sorted(models.items(), key=lambda kv: -sum(kv[1]["tokens"].values()))},
        "tools": tools,
        "tool_calls": sum(t["calls"] for t in tools.values()),
        "tool_errors": sum(t["errors"] for t in tools.values()),
        "tokens": usage.tokens,
        "responses": usage.responses,
        "cost": _cost(models, prices),
        **_ranked_sessions(activity.span, usage, sessions_meta, top),
        "files_edited": await scan_edits(conn, where, top),
    }


def _activity_rows(periods: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each period's rows in time order, its sessions counted."""
    return {
        name: [{"period": key, "sessions": len(v["sessions"]), "messages": v["messages"],
                "records": v["records"]} for key, v in sorted(by_period.items())]
        for name, by_period in periods.items()
    }


def _projects(counted: list[str], sessions_meta: dict[str, dict[str, Any]],
              span: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Sessions, messages and records per project (tokens and cost added by the usage scan)."""
    projects: dict[str, dict[str, Any]] = {}
    for sid in counted:
        proj = sessions_meta[sid]["project"] or "?"
        p = projects.setdefault(proj, {"sessions": 0, "messages": 0, "records": 0,
                                       "tokens": empty_tokens(), "cost_usd": 0.0})
        p["sessions"] += 1
        if sid in span:
            p["records"] += span[sid][2]
            p["messages"] += span[sid][4]
    return projects


def _add_model_activity(models: dict[str, dict[str, Any]], activity: Activity) -> None:
    """Each model's sessions and messages, from the activity scan."""
    for name, sids in activity.model_sessions.items():
        m = models.setdefault(name, empty_model())
        m["sessions"] = len(sids)
        m["messages"] = activity.model_messages[name]


def _add_project_tokens(projects: dict[str, dict[str, Any]], usage: Usage,
                        sessions_meta: dict[str, dict[str, Any]]) -> None:
    """Each counted project's tokens and cost, summed over its sessions."""
    for sid, toks in usage.session_tokens.items():
        proj = sessions_meta.get(sid, {}).get("project") or "?"
        if proj in projects:
            add_tokens(projects[proj]["tokens"], [toks[f] for f in TOKEN_FIELDS])
            projects[proj]["cost_usd"] += usage.session_cost.get(sid, 0.0)


def _cost(models: dict[str, dict[str, Any]], prices: PriceTable) -> dict[str, Any]:
    """The estimated cost in all, and the models with tokens but no price."""
    unpriced = sorted(n for n, m in models.items() if m["cost_usd"] is None and
                      any(m["tokens"].values()))
    total_cost = sum(m["cost_usd"] or 0.0 for m in models.values())
    return {"usd": round(total_cost, 4), "estimate": True, "unpriced_models": unpriced,
            "prices": prices.as_json()}


def _ranked_sessions(span: dict[str, list[Any]], usage: Usage,
                     sessions_meta: dict[str, dict[str, Any]], top: int
                     ) -> dict[str, list[dict[str, Any]]]:
    """The `top` longest sessions (first to last record) and the `top` costliest."""
    def session_row(sid: str) -> dict[str, Any]:
        meta = sessions_meta.get(sid, {})
        first, last, n, prompts, _ = span.get(sid, [None, None, 0, 0, 0])
        return {"session_id": sid, "project": meta.get("project"), "title": meta.get("title"),
                "first_ts": first, "last_ts": last, "duration_s": _seconds(first, last),
                "records": n, "prompts": prompts,
                "tokens": usage.session_tokens.get(sid, empty_tokens()),
                "cost_usd": round(usage.session_cost[sid], 4) if sid in usage.session_cost
                else None}

    longest = sorted(span, key=lambda s: (-(_seconds(span[s][0], span[s][1]) or 0), s))[:top]
    costliest = sorted(usage.session_cost, key=lambda s: (-usage.session_cost[s], s))[:top]
    return {"sessions_longest": [session_row(s) for s in longest],
            "sessions_costliest": [session_row(s) for s in costliest]}


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
