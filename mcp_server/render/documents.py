"""The history as documents: Markdown and a self-contained HTML page (`--format`).

Same content as the terminal view (render/terminal.py), whole: a document is
read later, so tool calls and results are not folded, only put in code
blocks. The HTML page has its style inline and no script, no network fetch;
every transcript string is escaped (`html.escape`) after escape codes are
removed, so a transcript cannot inject markup. A Markdown code fence is made
longer than any run of backticks inside the block.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

from .terminal import project_name
from .text import clean, duration, label, tokens_total, when

__all__ = ["sessions_markdown", "session_markdown", "sessions_html", "session_html"]

_TICKS = re.compile(r"`{3,}")
_CODE_KINDS = ("tool_call", "tool_result", "command", "meta", "system", "attachment", "error")


def _fence(text: str) -> str:
    longest = max((len(m.group()) for m in _TICKS.finditer(text)), default=2)
    ticks = "`" * (longest + 1)
    return f"{ticks}\n{text}\n{ticks}"


def _cell(text: Any) -> str:
    return clean(str(text if text is not None else "")).replace("|", "\\|").replace("\n", " ")


def _facts(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("session", str(s["session_id"])), ("project", project_name(s)),
           ("branch", clean(s.get("git_branch")) or "?"),
           ("time", f"{when(s.get('first_ts'))} → {when(s.get('last_ts'))} "
                    f"({duration(s.get('duration_s'))})"),
           ("turns", str(s.get("turns", "?"))), ("records", str(s.get("records", "?"))),
           ("subagent runs", str(s.get("subagent_runs", 0))),
           ("compactions", str(s.get("compactions", 0)))]
    if s.get("tokens"):
        t = s["tokens"]
        out.append(("tokens", f"{tokens_total(t)} (input {t['input']}, output {t['output']}, "
                              f"cache creation {t['cache_creation']}, cache read {t['cache_read']})"))
    if s.get("resume"):
        out.append(("resume", s["resume"]))
    return out


def sessions_markdown(sessions: list[dict[str, Any]]) -> str:
    """The session list as a Markdown table."""
    rows = ["| last active | session | title | project | branch | turns | records | subagents |",
            "|---|---|---|---|---|---|---|---|"]
    for s in sessions:
        rows.append("| " + " | ".join(_cell(x) for x in (
            when(s.get("last_ts")), s["session_id"], s.get("title") or "(untitled)",
            project_name(s), s.get("git_branch"), s.get("prompts"), s.get("records"),
            s.get("subagent_runs"))) + " |")
    return "\n".join(rows) + "\n"


def _record_markdown(r: dict[str, Any], depth: int = 0) -> Iterator[str]:
    quote = "> " * depth
    if r["kind"] == "compaction":
        yield f"{quote}---\n{quote}*⟲ {clean(r['text'])}*  \n"
        return
    yield f"{quote}**{label(r)}** · {when(r.get('timestamp'))} · `{r['handle']}`\n{quote}"
    body = clean(r["text"])
    body = _fence(body) if r["kind"] in _CODE_KINDS else body
    yield "\n".join(quote + line for line in body.splitlines()) + f"\n{quote}"
    sub = r.get("subagent")
    if sub:
        yield (f"{quote}> **subagent {clean(sub.get('agent_type'))}**: "
               f"{clean(sub.get('description'))} ({sub['total']} records)\n{quote}>")
        for rec in sub["records"]:
            yield from _record_markdown(rec, depth + 1)
        if sub["total"] > len(sub["records"]):
            yield f"{quote}> … {sub['total'] - len(sub['records'])} more records\n"


def session_markdown(overview: dict[str, Any], page: dict[str, Any]) -> str:
    """A session as a Markdown document: title, facts, then every record of the page."""
    out = [f"# {clean(overview.get('title')) or '(untitled)'}\n"]
    out.extend(f"- **{k}**: {v if k not in ('session', 'resume') else '`' + v + '`'}"
               for k, v in _facts(overview))
    out.append("")
    if page["offset"]:
        out.append(f"*… {page['offset']} earlier records*\n")
    for r in page["records"]:
        out.extend(_record_markdown(r))
    rest = page["total"] - page["offset"] - len(page["records"])
    if rest > 0:
        out.append(f"*… {rest} later records*\n")
    return "\n".join(out) + "\n"


_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem}
dt{color:#666}dd{margin:0}.rec{margin:.8rem 0}.head{font-weight:600}.head small{color:#888;
font-weight:400}.prompt .head{color:#0a6b8a}.assistant .head{color:#2a7a2a}.thinking{color:#666;
font-style:italic}.tool_call .head,.tool_result .head{color:#8a6d00}.err .head{color:#b00}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap}
.compaction{border-top:2px dashed #a0a;color:#a0a;padding-top:.3rem}
.sub{border-left:3px solid #88a;padding-left:1rem;margin-left:1rem}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(clean(str(text if text is not None else "")))


def sessions_html(sessions: list[dict[str, Any]]) -> str:
    """The session list as an HTML page with one table."""
    head = "".join(f"<th>{h}</th>" for h in ("last active", "session", "title", "project",
                                             "branch", "turns", "records", "subagents"))
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(x)}</td>" for x in (
            when(s.get("last_ts")), s["session_id"], s.get("title") or "(untitled)",
            project_name(s), s.get("git_branch"), s.get("prompts"), s.get("records"),
            s.get("subagent_runs"))) + "</tr>\n" for s in sessions)
    return _page("deja sessions", f"<h1>Sessions</h1><table><tr>{head}</tr>\n{rows}</table>")


def _record_html(r: dict[str, Any]) -> str:
    if r["kind"] == "compaction":
        return f"<div class=\"rec compaction\">⟲ {_e(r['text'])}</div>"
    cls = f"rec {r['kind']}" + (" err" if r.get("is_error") else "")
    body = f"<pre>{_e(r['text'])}</pre>" if r["kind"] in _CODE_KINDS or \
        r["kind"] == "compact_summary" else \
        "".join(f"<p>{_e(p)}</p>" for p in clean(r["text"]).split("\n\n") if p.strip())
    out = (f"<div class=\"{cls}\"><div class=\"head\">{_e(label(r))} "
           f"<small>{_e(when(r.get('timestamp')))} · {_e(r['handle'])}</small></div>{body}")
    sub = r.get("subagent")
    if sub:
        inner = "".join(_record_html(x) for x in sub["records"])
        more = sub["total"] - len(sub["records"])
        out += (f"<div class=\"sub\"><div class=\"head\">subagent {_e(sub.get('agent_type'))}: "
                f"{_e(sub.get('description'))} <small>({sub['total']} records)</small></div>"
                f"{inner}{f'<p>… {more} more records</p>' if more > 0 else ''}</div>")
    return out + "</div>"


def session_html(overview: dict[str, Any], page: dict[str, Any]) -> str:
    """A session as a self-contained HTML page."""
    title = clean(overview.get("title")) or "(untitled)"
    facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _facts(overview))
    records = "\n".join(_record_html(r) for r in page["records"])
    rest = page["total"] - page["offset"] - len(page["records"])
    earlier = f"<p>… {page['offset']} earlier records</p>" if page["offset"] else ""
    later = f"<p>… {rest} later records</p>" if rest > 0 else ""
    return _page(title, f"<h1>{_e(title)}</h1><dl>{facts}</dl>{earlier}\n{records}\n{later}")
