"""What every view of the history shares, as plain text: no rich, no Textual here.

Tool output is stored verbatim, ANSI colour codes included (a test runner's
red and green); a view shows it through `clean` so that no escape code from a
transcript ever reaches the user's terminal or an HTML page. A tool call and
its result are folded to a line or a few (`fold`), the way a person skims a
session. A snippet marks query words in [brackets] (search/snippets.py);
`highlight_spans` finds those marks again for a view to colour, leaving a
bracket that is not a query word (`a[0]`) as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone

from ..search.snippets import clean_text, word_pattern
from ..search.terms import query_words

__all__ = ["clean", "fold", "first_line", "duration", "when", "highlight_spans", "label",
           "tokens_total", "short_id", "seconds_between"]

_BRACKETED = re.compile(r"\[([^\[\]\n]{1,80})\]")


def clean(text: str | None) -> str:
    """`text` without escape codes and control characters (newlines and tabs kept)."""
    return clean_text(text or "").replace("\r\n", "\n").replace("\r", "\n")


def first_line(text: str | None, width: int = 100) -> str:
    """The first non-blank line of `text`, cleaned and cut to `width`."""
    for line in clean(text).splitlines():
        if line.strip():
            line = " ".join(line.split())
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


def fold(text: str | None, lines: int = 3, width: int = 120) -> list[str]:
    """The first `lines` non-blank lines of `text`, each cut to `width`, plus a line saying
    how many more there are."""
    body = [ln.rstrip() for ln in clean(text).splitlines() if ln.strip()]
    out = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in body[:lines]]
    if len(body) > lines:
        out.append(f"… {len(body) - lines} more lines")
    return out


def duration(seconds: int | None) -> str:
    """`seconds` as 45s, 12m, 3h05m or 2d04h."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def seconds_between(first: str | None, last: str | None) -> int | None:
    """Whole seconds from one ISO timestamp to another, or None when either is missing."""
    try:
        a = datetime.fromisoformat((first or "").replace("Z", "+00:00"))
        b = datetime.fromisoformat((last or "").replace("Z", "+00:00"))
        return max(0, round((b - a).total_seconds()))
    except (ValueError, TypeError):
        return None


def when(ts: str | None, now: datetime | None = None) -> str:
    """An ISO timestamp as local `YYYY-MM-DD HH:MM`, or `?`."""
    if not ts:
        return "?"
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts[:16]
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def short_id(session_id: str | None) -> str:
    return (session_id or "?")[:8]


def tokens_total(tokens: dict[str, int] | None) -> str:
    """Token counts as one short figure (all four kinds summed): 12.3M, 450k, 900."""
    if not tokens:
        return ""
    n = sum(tokens.values())
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def label(record: dict[str, object]) -> str:
    """Who or what a record is, in a word or two: `you`, `claude`, `Bash call`, ..."""
    kind = str(record.get("kind"))
    tool = record.get("tool_name")
    names = {"prompt": "you", "assistant": "claude", "thinking": "thinking",
             "compaction": "compaction", "compact_summary": "summary", "summary": "summary",
             "command": "command", "memory": "memory"}
    if kind == "tool_call":
        return f"{tool or 'tool'} call"
    if kind == "tool_result":
        return f"{tool or 'tool'} {'error' if record.get('is_error') else 'result'}"
    return names.get(kind, kind)


def highlight_spans(snippet: str, query: str) -> list[tuple[str, bool]]:
    """`snippet` cut into (text, is_query_word) pieces, the [brackets] of query words taken
    off; brackets around anything else stay as text."""
    words: Sequence[str] = query_words(query)
    pattern = word_pattern(words) if words else None
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for m in _BRACKETED.finditer(snippet):
        if pattern is None or not pattern.fullmatch(m.group(1)):
            continue
        if m.start() > pos:
            pieces.append((snippet[pos:m.start()], False))
        pieces.append((m.group(1), True))
        pos = m.end()
    if pos < len(snippet):
        pieces.append((snippet[pos:], False))
    return pieces
