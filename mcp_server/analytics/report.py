"""`deja stats --html FILE`: one self-contained page with charts.

Everything is in the file: the CSS, the charts as inline SVG drawn here in
Python, and a few lines of inline script for hover tooltips. Nothing is
fetched (no CDN, no font, no image), so the page opens offline, from a mail
attachment, or years later. Charts: messages and sessions per week (or per
day over a short range), tokens and estimated cost per model, tool calls with
their errors, sessions per project; tables for the rankings.

The page takes the dict `deja stats --json` prints, so what it shows and what
the JSON says are the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from .periods import dense_days, dense_weeks
from .terminal import duration, human, money

__all__ = ["render_html"]

_COLORS = {"input": "#4e79a7", "output": "#f28e2b", "cache_creation": "#76b7b2",
           "cache_read": "#b6c9dc", "calls": "#4e79a7", "errors": "#e15759",
           "messages": "#4e79a7", "sessions": "#59a14f"}
_TOKEN_LABELS = {"input": "input", "output": "output", "cache_creation": "cache write",
                 "cache_read": "cache read"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 10px}
.sub{color:#666;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 2px #0001;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
section{background:#fff;border-radius:8px;padding:16px;margin-bottom:16px;box-shadow:0 1px 2px #0001}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-bottom:16px}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
.grid section{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:right;padding:4px 8px;border-bottom:1px solid #eee;white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal;word-break:break-all}
th{color:#555;font-weight:600}
svg{display:block;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#444}
.legend{font-size:12px;color:#555;margin:4px 0 0}
.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}
.terms span{display:inline-block;margin:2px 8px 2px 0;color:#345}
.note{color:#777;font-size:12px}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:3px 7px;
border-radius:4px;font-size:12px;display:none;z-index:9}
"""

# Tooltips from each mark's data-tip; data-drawn tells a test the script ran.
_SCRIPT = """
(function () {
  var tip = document.getElementById('tip');
  document.querySelectorAll('[data-tip]').forEach(function (el) {
    el.addEventListener('mousemove', function (e) {
      tip.textContent = el.getAttribute('data-tip');
      tip.style.display = 'block';
      tip.style.left = (e.clientX + 12) + 'px';
      tip.style.top = (e.clientY + 12) + 'px';
    });
    el.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  document.body.setAttribute('data-drawn', document.querySelectorAll('svg').length ? 'yes' : 'no');
})();
"""


def _columns(labels: Sequence[str], values: Sequence[float], color: str, unit: str,
             width: int = 1040, height: int = 170) -> str:
    """A column chart: one bar per label, the axis labelled at a few places."""
    n = max(1, len(values))
    top = max(values, default=0) or 1
    left, bottom = 40, 22
    plot_w, plot_h = width - left - 8, height - bottom - 8
    step = plot_w / n
    bar = max(1.0, step * 0.8)
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg">']
    # Gridlines at 0, the middle and the top; the middle only when it is a whole number.
    for frac in (0, 0.5, 1) if top >= 4 or top % 2 == 0 else (0, 1):
        y = 8 + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#e5e5e5"/><text x="{left - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{escape(human(top * frac))}</text>')
    every = max(1, n // 8)
    for i, (label, v) in enumerate(zip(labels, values)):
        h = plot_h * v / top
        x = left + i * step + (step - bar) / 2
        out.append(f'<rect x="{x:.1f}" y="{8 + plot_h - h:.1f}" width="{bar:.1f}" '
                   f'height="{max(h, 0):.1f}" fill="{color}" '
                   f'data-tip="{escape(label)}: {v:,.0f} {unit}"/>')
        if i % every == 0 and left + i * step < width - 70:  # room for the label
            out.append(f'<text x="{left + i * step:.1f}" y="{height - 6}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _hbars(rows: Sequence[tuple[str, Sequence[tuple[float, str, str]]]], width: int = 500,
           label_w: int = 170, fmt: Any = human) -> str:
    """Horizontal stacked bars: (label, [(value, color, tooltip), ...]) per row."""
    row_h = 20
    height = row_h * max(1, len(rows)) + 4
    top = max((sum(v for v, _, _ in parts) for _, parts in rows), default=0) or 1
    plot_w = width - label_w - 60
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, parts) in enumerate(rows):
        y = i * row_h + 2
        # Cut in the middle: project folders differ at both ends (`-Users-x-...-c012`).
        short = label if len(label) <= 26 else label[:12] + "…" + label[-13:]
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">'
                   f'<title>{escape(label)}</title>{escape(short)}</text>')
        x = float(label_w)
        for value, color, tip in parts:
            w = plot_w * value / top
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 1):.1f}" height="14" '
                           f'fill="{color}" data-tip="{escape(tip)}"/>')
            x += w
        total = sum(v for v, _, _ in parts)
        out.append(f'<text x="{x + 4:.1f}" y="{y + 14}">{escape(fmt(total))}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(keys: Sequence[str], labels: dict[str, str] | None = None) -> str:
    return '<p class="legend">' + "".join(
        f'<i style="background:{_COLORS[k]}"></i>{escape((labels or {}).get(k, k))}'
        for k in keys) + "</p>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _activity(stats: dict[str, Any]) -> str:
    act = stats["activity"]
    days = [r["period"] for r in act["day"]]
    if not days:
        return "<section><h2>Activity</h2><p>No records in this range.</p></section>"
    all_days = dense_days(days)
    view, keys = ("day", all_days) if len(all_days) <= 120 else ("week", dense_weeks(days))
    by = {r["period"]: r for r in act[view]}
    parts = [f"<section><h2>Activity per {view}</h2>"]
    for field in ("messages", "sessions"):
        values = [by.get(k, {}).get(field, 0) for k in keys]
        parts.append(f'<p class="note">{field} per {view}</p>')
        parts.append(_columns(keys, values, _COLORS[field], field))
    parts.append(_table(["month", "sessions", "messages", "records"],
                        [(r["period"], r["sessions"], r["messages"], r["records"])
                         for r in act["month"]]))
    parts.append("</section>")
    return "".join(parts)


def _models(stats: dict[str, Any]) -> str:
    rows = []
    for name, m in stats["models"].items():
        tk = m["tokens"]
        if not any(tk.values()):
            continue
        rows.append((name, [(tk[k], _COLORS[k], f"{name}: {tk[k]:,} {_TOKEN_LABELS[k]} tokens")
                            for k in _TOKEN_LABELS]))
    cost_rows = [(name, [(m["cost_usd"], "#edc948", f"{name}: {money(m['cost_usd'])}")])
                 for name, m in stats["models"].items() if m["cost_usd"]]
    cost = stats["cost"]
    unpriced = (f" Not priced: {', '.join(cost['unpriced_models'])}."
                if cost["unpriced_models"] else "")
    return (
        '<div class="grid"><section><h2>Tokens per model</h2>'
        + _hbars(rows) + _legend(list(_TOKEN_LABELS), _TOKEN_LABELS)
        + "</section><section><h2>Estimated cost per model</h2>"
        + _hbars(cost_rows, fmt=money)
        + f'<p class="note">List prices of {escape(cost["prices"]["date"])} '
          f'({escape(cost["prices"]["source"])}); an estimate, not a bill.{escape(unpriced)}</p>'
        + "</section></div>")


def _tools_and_projects(stats: dict[str, Any]) -> str:
    tools = list(stats["tools"].items())[:20]
    tool_rows = [(name, [(v["calls"] - v["errors"], _COLORS["calls"],
                          f"{name}: {v['calls']} calls"),
                         (v["errors"], _COLORS["errors"], f"{name}: {v['errors']} errors")])
                 for name, v in tools]
    proj_rows = [(name, [(p["sessions"], _COLORS["sessions"],
                          f"{name}: {p['sessions']} sessions, {p['messages']} messages")])
                 for name, p in list(stats["projects"].items())[:20]]
    return (
        '<div class="grid"><section><h2>Tools: '
        f'{stats["tool_calls"]:,} calls, {stats["tool_errors"]:,} errors</h2>'
        + _hbars(tool_rows) + _legend(["calls", "errors"])
        + "</section><section><h2>Sessions per project</h2>" + _hbars(proj_rows)
        + "</section></div>")


def _sessions(stats: dict[str, Any], key: str, title: str) -> str:
    rows = [((s["title"] or s["session_id"][:8]), s["project"] or "?",
             (s["first_ts"] or "")[:10], duration(s["duration_s"]), s["prompts"],
             human(sum(s["tokens"].values())), money(s["cost_usd"]))
            for s in stats[key]]
    return (f"<section><h2>{escape(title)}</h2>"
            + _table(["session", "project", "started", "span", "turns", "tokens", "cost"], rows)
            + "</section>")


def render_html(stats: dict[str, Any]) -> str:
    """The report page for `stats` (the dict `deja stats --json` prints)."""
    f = stats.get("filters") or {}
    scope = ", ".join(f"{k} {v}" for k, v in f.items() if v and k != "projects") or "all history"
    tk = stats["tokens"]
    cards = [("sessions", f"{stats['sessions']:,}"), ("messages", f"{stats['messages']:,}"),
             ("records", f"{stats['records']:,}"), ("tool calls", f"{stats['tool_calls']:,}"),
             ("tokens", human(sum(tk.values()))), ("est. cost", money(stats["cost"]["usd"]))]
    terms = "".join(f'<span data-tip="{t["records"]:,} records">{escape(t["term"])}</span>'
                    for t in stats["top_terms"])
    files = _table(["file", "edits"], [(e["path"], e["edits"]) for e in stats["files_edited"]])
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>deja stats: {escape(scope)}</title><style>{_CSS}</style></head><body><main>",
        "<h1>deja stats</h1>",
        f'<p class="sub">{escape(scope)} · {escape(stats["database"])} · last ingest '
        f'{escape(str(stats.get("last_ingest") or "never"))}</p>',
        '<div class="cards">',
        *(f"<div class=\"card\"><b>{escape(v)}</b><span>{escape(k)}</span></div>"
          for k, v in cards),
        "</div>",
        _activity(stats), _models(stats), _tools_and_projects(stats),
        _sessions(stats, "sessions_costliest", "Costliest sessions"),
        _sessions(stats, "sessions_longest", "Longest sessions (first to last record)"),
        '<div class="grid"><section><h2>Most-edited files</h2>', files, "</section>",
        '<section><h2>Top terms</h2><p class="terms">', terms,
        '</p><p class="note">Stems from the full-text index, whole history.</p></section></div>',
        '</main><div id="tip"></div><script>', _SCRIPT, "</script></body></html>",
    ])
