"""`deja export --format markdown`: the history as readable transcripts, one section a session.

For reading, not for importing back. Each session gets a heading (its title,
else its id), its project, folder, branch and time span, then its records in
order: prompts and answers as text, thinking, tool calls and results in
fenced blocks (fences longer than any backtick run inside, so tool output
never breaks out), compactions and memories marked. Subagent records are
indented as quotes under a line naming the agent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, Any

import aiosqlite

from . import selection
from .selection import Selection

__all__ = ["write_markdown"]

_TICKS = re.compile(r"`{3,}")
_LABELS = {"prompt": "User", "assistant": "Assistant", "thinking": "Thinking",
           "compact_summary": "Compaction summary", "summary": "Summary", "memory": "Memory",
           "checkpoint": "Checkpoint"}


def _fence(text: str, info: str = "") -> str:
    longest = max((len(m) for m in _TICKS.findall(text)), default=2)
    ticks = "`" * (longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def _block(r: dict[str, Any]) -> str:
    kind, text, when = r["kind"], r["text"], r["ts"] or ""
    if kind == "tool_call":
        body = f"**Tool call** `{r['tool_name'] or '?'}` · {when}\n\n{_fence(text)}"
    elif kind == "tool_result":
        status = " (error)" if r["is_error"] else ""
        body = f"**Tool result**{status} `{r['tool_name'] or ''}` · {when}\n\n{_fence(text)}"
    elif kind == "thinking":
        body = f"*Thinking* · {when}\n\n" + "\n".join(f"> {line}" for line in text.splitlines())
    else:
        label = _LABELS.get(kind, kind.replace("_", " ").capitalize())
        body = f"**{label}** · {when}\n\n{text}"
    if r["truncated"]:
        body += f"\n\n*(stored truncated: {r['text_len']} characters originally)*"
    if r["agent_id"]:
        body = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
    return body


def _heading(s: dict[str, Any] | None, session_id: str | None) -> str:
    if s is None:
        return f"## {session_id or 'Memories without a session'}\n"
    facts = [f"- session: `{s['session_id']}`"]
    for key, label in (("project_dir", "project"), ("cwd", "folder"),
                       ("git_branch", "branch")):
        if s[key]:
            facts.append(f"- {label}: `{s[key]}`")
    if s["first_ts"]:
        facts.append(f"- from {s['first_ts']} to {s['last_ts']}")
    return f"## {s['title'] or s['session_id']}\n\n" + "\n".join(facts) + "\n"


async def write_markdown(conn: aiosqlite.Connection, sel: Selection, out: IO[str],
                         progress: Callable[[int], None]) -> dict[str, int]:
    """Write the selection as Markdown; returns the sessions and records written."""
    infos = {s["session_id"]: s async for s in selection.sessions(conn, sel)}
    by_session: dict[str | None, list[dict[str, Any]]] = {}
    count = 0
    async for r in selection.records(conn, sel):
        by_session.setdefault(r["session_id"], []).append(r)
        count += 1
        if count % 1000 == 0:
            progress(count)
    out.write("# deja history\n")
    order = sorted(by_session, key=lambda sid: ((infos.get(sid) or {}).get("first_ts") or "",
                                                sid or ""))
    for sid in order:
        out.write("\n" + _heading(infos.get(sid), sid))
        agent = None
        for r in by_session[sid]:
            if r["agent_id"] != agent:
                agent = r["agent_id"]
                if agent:
                    out.write(f"\n*Subagent `{agent}`:*\n")
            out.write("\n" + _block(r) + "\n")
    return {"sessions": len(by_session), "records": count}


