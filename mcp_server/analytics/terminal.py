"""`deja stats` on a terminal: a summary, then tables and sparklines (rich).

rich writes colour only to a terminal; piped, the same tables come out as
plain text with no escape codes. The summary's first lines keep the form
`deja stats` has always printed (`records: N`), which scripts may grep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from .periods import dense_days, dense_weeks, sparkline

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["render", "human", "money", "duration"]

Say = Callable[..., None]  # rich's Console.print


def human(n: float | None) -> str:
    """12345678 -> '12.3M' (for tables; the JSON keeps exact figures)."""
    if n is None:
        return "-"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}" if isinstance(n, float) else str(n)


def money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d}"
    return f"{hours // 24} d {hours % 24} h"


def _series(rows: list[dict[str, Any]], keys: list[str], field: str) -> list[float]:
    by = {r["period"]: r[field] for r in rows}
    return [by.get(k, 0) for k in keys]


def render(stats: dict[str, Any], out: IO[str], width: int | None = None) -> None:
    """Write the report of `stats` (the dict `deja stats --json` prints) to `out`."""
    from rich.console import Console

    console = Console(file=out, width=width or (None if out.isatty() else 120),
                      highlight=False, soft_wrap=False)
    say = console.print
    _summary(stats, say)
    if not stats["records"]:
        return
    _activity(stats["activity"], say)
    _projects(stats, say)
    _models(stats, say)
    _tools(stats, say)
    _sessions(stats, say)
    if stats["files_edited"]:
        t = _table("most-edited files", "file", "edits")
        for e in stats["files_edited"]:
            path = e["path"]
            t.add_row(path if len(path) <= 44 else "…" + path[-43:], str(e["edits"]))
        say(t)
    if stats["top_terms"]:
        say("[bold]top terms[/bold] (stems, whole history): " +
            ", ".join(t["term"] for t in stats["top_terms"]))


def _table(title: str, *columns: str) -> Table:
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold",
              pad_edge=False)
    for i, c in enumerate(columns):
        # Figures keep their width; names give way (cut with an ellipsis).
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True,
                     overflow="ellipsis", max_width=44 if i == 0 else None,
                     min_width=None if i == 0 else max(len(c), 7))
    return t


def _summary(stats: dict[str, Any], say: Say) -> None:
    """The first lines, in the form `deja stats` has always printed (scripts grep them)."""
    f = stats.get("filters") or {}
    scope = ", ".join(f"{k} {v}" for k, v in f.items() if v and k != "projects") or "all history"
    say(f"database: {stats['database']} ({stats['database_bytes'] / 1e6:.1f} MB)")
    say(f"scope: {scope}")
    say(f"sessions: {stats['sessions']}, subagent runs: {stats['subagent_runs']}")
    say(f"records: {stats['records']}, messages: {stats.get('messages', 0)}")
    for kind, n in stats["by_kind"].items():
        say(f"  {kind}: {n}")
    say(f"files: {stats['files']} ({stats['missing_files']} no longer on disk)")
    say(f"vectors: {stats['chunks']} chunks ({stats['embedding_model'] or 'no model yet'}), "
        f"{stats['pending_embeddings']} records awaiting embedding")
    say(f"last ingest: {stats['last_ingest'] or 'never'}")


def _activity(activity: dict[str, list[dict[str, Any]]], say: Say) -> None:
    """Sparklines of messages per day and sessions per week, then months and the last weeks."""
    days = [r["period"] for r in activity["day"]]
    if not days:
        return
    all_days = dense_days(days)
    weeks = dense_weeks(days)
    say()
    say(f"[bold]activity[/bold] {all_days[0]} .. {all_days[-1]}")
    say(f"  messages per day   {sparkline(_series(activity['day'], all_days, 'messages'), 72)}")
    say(f"  sessions per week  {sparkline(_series(activity['week'], weeks, 'sessions'), 72)}")
    t = _table("per month", "month", "sessions", "messages", "records", "per day")
    for row in activity["month"]:
        month_days = [d for d in all_days if d.startswith(row["period"])]
        t.add_row(row["period"], str(row["sessions"]), str(row["messages"]),
                  str(row["records"]),
                  sparkline(_series(activity["day"], month_days, "messages")))
    say(t)
    recent = activity["week"][-8:]
    if len(activity["week"]) > 1:
        t = _table("last weeks", "week", "sessions", "messages", "records")
        for row in recent:
            t.add_row(row["period"], str(row["sessions"]), str(row["messages"]),
                      str(row["records"]))
        say(t)


def _projects(stats: dict[str, Any], say: Say) -> None:
    t = _table("projects", "project", "sessions", "messages", "tokens", "cost")
    for name, p in stats["projects"].items():
        t.add_row(name, str(p["sessions"]), str(p["messages"]),
                  human(sum(p["tokens"].values())), money(p["cost_usd"] or None))
    say(t)


def _models(stats: dict[str, Any], say: Say) -> None:
    """Tokens and cost per model, a row for all, and how the cost was estimated."""
    t = _table("models", "model", "sessions", "messages", "input", "output",
               "cache wr", "cache rd", "cost")
    for name, m in stats["models"].items():
        tk = m["tokens"]
        t.add_row(name, str(m["sessions"]), str(m["messages"]),
                  human(tk["input"]), human(tk["output"]), human(tk["cache_creation"]),
                  human(tk["cache_read"]), money(m["cost_usd"]))
    tk = stats["tokens"]
    t.add_row("[bold]all[/bold]", "", "", human(tk["input"]),
              human(tk["output"]), human(tk["cache_creation"]), human(tk["cache_read"]),
              money(stats["cost"]["usd"]))
    say(t)
    cost = stats["cost"]
    note = f"  cost: an estimate at list prices of {cost['prices']['date']} ({cost['prices']['source']})"
    if cost["unpriced_models"]:
        note += f"; not priced: {', '.join(cost['unpriced_models'])}"
    say(note)


def _tools(stats: dict[str, Any], say: Say) -> None:
    """The 20 most called tools, their error rates and a bar."""
    tools = stats["tools"]
    if not tools:
        return
    top = max(t["calls"] for t in tools.values())
    t = _table(f"tools ({stats['tool_calls']} calls, {stats['tool_errors']} errors)",
               "tool", "calls", "errors", "error rate", "")
    for name, v in list(tools.items())[:20]:
        rate = v["errors"] / v["calls"] if v["calls"] else 0
        t.add_row(name, str(v["calls"]), str(v["errors"]), f"{rate:.0%}",
                  "█" * max(1, round(v["calls"] / top * 24)))
    if len(tools) > 20:
        t.add_row(f"... {len(tools) - 20} more", "", "", "", "")
    say(t)


def _sessions(stats: dict[str, Any], say: Say) -> None:
    """The longest and the costliest sessions."""
    for key, title in (("sessions_longest", "longest sessions (first to last record)"),
                       ("sessions_costliest", "costliest sessions")):
        rows = stats[key]
        if not rows:
            continue
        t = _table(title, "session", "project", "started", "span", "turns", "tokens", "cost")
        for s in rows:
            title = s.get("title") or ""
            label = s["session_id"][:8] + (f" {title[:22]}…" if len(title) > 22 else f" {title}")
            t.add_row(label, (s["project"] or "?")[-28:], (s["first_ts"] or "")[:10],
                      duration(s["duration_s"]), str(s["prompts"]),
                      human(sum(s["tokens"].values())), money(s["cost_usd"]))
        say(t)
