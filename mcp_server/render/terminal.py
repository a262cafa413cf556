"""The history as rich renderables: `deja sessions`, `deja show`, `deja search` on a terminal.

Every string from a transcript goes in as `rich.text.Text` (never as markup),
cleaned of escape codes first (render/text.py): a tool's output holding
`[red]` or `\\x1b[31m` prints as it reads. `paged` sends the output through
rich's pager (`$PAGER`, `less -R` by default) when stdout is a terminal and
straight to stdout otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .text import (
    clean,
    duration,
    fold,
    highlight_spans,
    label,
    seconds_between,
    short_id,
    tokens_total,
    when,
)

__all__ = ["sessions_table", "session_view", "hits_view", "snippet_text", "paged"]

STYLES = {"prompt": "bold cyan", "assistant": "green", "thinking": "dim italic",
          "tool_call": "yellow", "tool_result": "dim", "compaction": "bold magenta",
          "compact_summary": "magenta", "error": "bold red"}

# Long texts a person skims: their first lines only, unless --full.
_FOLDED = {"compact_summary": 6, "summary": 3, "meta": 2, "system": 2, "attachment": 2,
           "command": 2}


def sessions_table(sessions: list[dict[str, Any]]) -> Table:
    """The session list, newest first, one row per session."""
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for col, justify in (("when", "left"), ("session", "left"), ("title", "left"),
                         ("project", "left"), ("branch", "left"), ("span", "right"),
                         ("turns", "right"), ("records", "right"), ("agents", "right")):
        table.add_column(col, justify=justify, no_wrap=col != "title",  # type: ignore[arg-type]
                         overflow="ellipsis", max_width=48 if col == "title" else None)
    for s in sessions:
        table.add_row(when(s.get("last_ts")), short_id(s.get("session_id")),
                      Text(clean(s.get("title")) or "(untitled)"),
                      Text(project_name(s)), Text(clean(s.get("git_branch")) or ""),
                      duration(s.get("duration_s", seconds_between(s.get("first_ts"), s.get("last_ts")))),
                      str(s.get("prompts", "")),
                      str(s.get("records", "")), str(s.get("subagent_runs", "")))
    return table


def project_name(session: dict[str, Any]) -> str:
    """A project as a person names it: the last two parts of its cwd, else its folder."""
    cwd = session.get("cwd")
    if cwd:
        parts = [p for p in str(cwd).replace("\\", "/").split("/") if p]
        return "/".join(parts[-2:]) or str(cwd)
    return str(session.get("project_dir") or "")


def session_header(s: dict[str, Any]) -> Group:
    """A session's facts in two or three lines, with the command that resumes it."""
    title = Text(clean(s.get("title")) or "(untitled)", style="bold")
    title.append(f"  {s['session_id']}", style="dim")
    facts = [f"{project_name(s)}", f"branch {clean(s.get('git_branch')) or '?'}",
             f"{when(s.get('first_ts'))} → {when(s.get('last_ts'))} "
             f"({duration(s.get('duration_s'))})",
             f"{s.get('turns', '?')} turns", f"{s.get('records', '?')} records",
             f"{s.get('subagent_runs', 0)} subagent runs", f"{s.get('compactions', 0)} compactions"]
    if s.get("tokens"):
        facts.append(f"{tokens_total(s['tokens'])} tokens")
    lines: list[RenderableType] = [title, Text("  ·  ".join(facts), style="dim")]
    if s.get("resume"):
        lines.append(Text.assemble(("resume: ", "dim"), (s["resume"], "bold")))
    return Group(*lines)


def record_lines(r: dict[str, Any], *, full: bool = False) -> Iterator[RenderableType]:
    """One record: a heading line, then its text (tool calls and results folded)."""
    kind = r["kind"]
    style = "bold red" if r.get("is_error") else STYLES.get(kind, "")
    head = Text(("» " if r.get("hit") else "") + label(r), style=style)
    head.append(f"  {when(r.get('timestamp'))}  {r['handle']}", style="dim")
    if kind == "compaction":
        yield Rule(Text(f"⟲ {clean(r['text'])}", style=style), style="magenta")
        return
    if kind in ("tool_call", "tool_result") and not full:
        body = fold(r["text"], lines=1 if kind == "tool_call" else 3)
        head.append("  " + (body[0] if body else ""), style=style)
        head.no_wrap, head.overflow = True, "ellipsis"
        yield head
        for line in body[1:]:
            yield Text("    " + line, style="dim", no_wrap=True, overflow="ellipsis")
    else:
        yield head
        text = clean(r["text"])
        if kind in _FOLDED and not full:
            text = "\n".join(fold(text, lines=_FOLDED[kind], width=160))
        yield Padding(Text(text), (0, 0, 0, 4))
    sub = r.get("subagent")
    if sub:
        yield Padding(Group(*_subagent(sub, full=full)), (0, 0, 0, 4))


def _subagent(sub: dict[str, Any], *, full: bool) -> Iterator[RenderableType]:
    yield Text(f"┌ subagent {sub.get('agent_type') or ''}: {clean(sub.get('description'))} "
               f"({sub['total']} records)", style="bold blue")
    for rec in sub["records"]:
        yield from record_lines(rec, full=full)
    if sub["total"] > len(sub["records"]):
        yield Text(f"└ … {sub['total'] - len(sub['records'])} more records of this run",
                   style="blue")


def session_view(overview: dict[str, Any], page: dict[str, Any], *,
                 full: bool = False) -> Group:
    """A session: its header, then its records in order, subagent runs indented."""
    parts: list[RenderableType] = [session_header(overview), Rule(style="dim")]
    if page["offset"]:
        parts.append(Text(f"… {page['offset']} earlier records", style="dim"))
    for r in page["records"]:
        parts.extend(record_lines(r, full=full))
    rest = page["total"] - page["offset"] - len(page["records"])
    if rest > 0:
        parts.append(Text(f"… {rest} later records", style="dim"))
    return Group(*parts)


def snippet_text(snippet: str, query: str, base: str = "") -> Text:
    """A hit's snippet with its query words highlighted (their [brackets] taken off)."""
    text = Text(style=base)
    for piece, hit in highlight_spans(clean(snippet), query):
        text.append(piece, style="bold reverse" if hit else "")
    return text


def hits_view(hits: Iterable[Any], query: str) -> Group:
    """Search hits: what and when, the session, the snippet, the command that shows more."""
    parts: list[RenderableType] = []
    for h in hits:
        head = Text(label({"kind": h.kind, "tool_name": h.tool_name}),
                    style=STYLES.get(h.kind, "bold"))
        head.append(f"  {when(h.timestamp)}  ", style="dim")
        head.append(f"{project_name({'cwd': h.project})}  session {short_id(h.session_id)}",
                    style="dim")
        parts.append(head)
        parts.append(Padding(snippet_text(h.snippet, query), (0, 0, 0, 4)))
        parts.append(Text(f"    deja show {h.handle}", style="cyan"))
        parts.append(Text(""))
    return Group(*parts)


@contextmanager
def paged(console: Console) -> Iterator[Console]:
    """`console`, through the pager when stdout is a terminal (colours kept)."""
    if not console.is_terminal:
        yield console
        return
    os.environ.setdefault("LESS", "-FRX")  # colours, quit at end if it fits, keep the screen
    with console.pager(styles=True):
        yield console
