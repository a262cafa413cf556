"""`deja show` and `deja sessions`: reading the history (read-only).

Output by where it goes: `--json` (or `--format json`) prints the library's
dicts as they are; `--format markdown|html` writes a document to stdout; with
neither, a terminal gets the rich view through the pager (render/terminal.py)
and a pipe gets plain lines, the same as before the rich view existed.

`deja show REF`: REF is a hit's handle (`rec:123`) or a line uuid (the turns
around it, mcp_server/history.py `get_context`), or a session id or a unique
prefix of one (the session as a conversation, mcp_server/transcript.py;
`--around UUID --context N` for the records around one of its lines).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from ..history import get_context, list_sessions
from ..transcript import find_session, session_overview, session_records
from .common import Readable, Subparsers, Target, read_database

__all__ = ["register_show", "register_sessions", "run_show", "run_sessions"]

FORMATS = ("terminal", "markdown", "json", "html")


def _format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-f", choices=FORMATS, default=None,
                   help="json, markdown or html to stdout; terminal (default on a terminal: "
                        "the paged, coloured view)")
    p.add_argument("--json", action="store_true", help="print one JSON object (= --format json)")


def register_show(sub: Subparsers) -> None:
    p = sub.add_parser("show", help="a session, or the turns around a hit",
                       description="Show the records around a search hit, in conversation "
                                   "order (REF: a hit's handle rec:123 or a line uuid), or a "
                                   "whole session (REF: a session id or a unique prefix of one).")
    p.add_argument("ref", help="a hit's handle (rec:123), a line uuid, or a session id")
    p.add_argument("--before", "-B", type=int, default=5, help="records before a hit (default 5)")
    p.add_argument("--after", "-A", type=int, default=5, help="records after a hit (default 5)")
    p.add_argument("--max-tokens", type=int, default=4000,
                   help="size bound of a hit's context (default 4000)")
    p.add_argument("--around", metavar="UUID",
                   help="with a session: only the records around this line (uuid or rec:N)")
    p.add_argument("--context", "-C", type=int, default=10,
                   help="with --around: records on each side (default 10)")
    p.add_argument("--offset", type=int, default=0, help="with a session: skip this many records")
    p.add_argument("--limit", "-n", type=int, default=2000,
                   help="with a session: at most this many records (default 2000)")
    p.add_argument("--full", action="store_true",
                   help="terminal view: tool calls and results whole, not folded")
    _format_option(p)
    p.set_defaults(handler=run_show, postgres_handler=run_show)


def register_sessions(sub: Subparsers) -> None:
    p = sub.add_parser("sessions", help="recent sessions",
                       description="Recent sessions, newest first, with title, branch, "
                                   "time span and size.")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="only sessions active since: 2026-05-01, 7d, 2w ...")
    p.add_argument("--limit", "-n", type=int, default=20)
    _format_option(p)
    p.set_defaults(handler=run_sessions, postgres_handler=run_sessions)


def _chosen_format(args: argparse.Namespace) -> str:
    if args.json:
        return "json"
    if args.format:
        return str(args.format)
    return "terminal" if sys.stdout.isatty() else "plain"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def _show(store: Readable, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """("hit", get_context's dict) or ("session", {"session": overview, **page})."""
    ref = args.ref.strip()
    sid = None if ref.startswith("rec:") else await find_session(store.reads, ref)
    if sid is None:
        return "hit", await get_context(store.reads, ref, before=args.before, after=args.after,
                                        max_tokens=args.max_tokens)
    overview = await session_overview(store.reads, sid)
    page = await session_records(store.reads, sid, around=args.around, context=args.context,
                                 offset=args.offset, limit=args.limit)
    return "session", {"session": overview, **page}


async def _hit_as_page(store: Readable, out: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """get_context's dict in the shape of a session page, for the documents and the view."""
    records = [*out["before"], {**out["hit"], "hit": True}, *out["after"]]
    sid = out["session"].get("session_id")
    try:
        overview = await session_overview(store.reads, sid, tokens=False) if sid else None
    except Exception:  # noqa: BLE001 - a memory's session may be gone; show the hit anyway
        overview = None
    overview = overview or {"session_id": sid or "?", **out["session"]}
    return overview, {"offset": 0, "total": len(records), "records": records}


def run_show(target: Target, args: argparse.Namespace) -> int:
    fmt = _chosen_format(args)

    async def read(store: Readable) -> tuple[str, dict[str, Any], Any]:
        what, out = await _show(store, args)
        extra = await _hit_as_page(store, out) if what == "hit" and fmt not in ("json",
                                                                                "plain") else None
        return what, out, extra

    what, out, extra = anyio.run(read_database, target, read)
    if fmt == "json":
        print(json.dumps(out, ensure_ascii=False))
        return 0
    if fmt == "plain":
        _print_plain_show(what, out)
        return 0
    overview, page = extra if extra is not None else (out["session"], out)
    if fmt in ("markdown", "html"):
        from ..render import documents

        _write(documents.session_markdown(overview, page) if fmt == "markdown"
               else documents.session_html(overview, page))
        return 0
    from rich.console import Console

    from ..render.terminal import paged, session_view

    with paged(Console()) as console:
        console.print(session_view(overview, page, full=args.full))
    return 0


def _print_plain_show(what: str, out: dict[str, Any]) -> None:
    """The plain text of `deja show` (piped), as it was before the rich view."""
    from ..render.text import clean

    session = out["session"]
    print(f"session {session.get('session_id')}  {session.get('title') or ''}  "
          f"{session.get('cwd') or ''}  {session.get('git_branch') or ''}")
    if what == "session":
        groups = [("", out["records"])]
    else:
        groups = [("", out["before"]), (">>", [out["hit"]]), ("", out["after"])]
    for label, records in groups:
        for r in records:
            head = f"{'>>' if r.get('hit') else label or '  '} {r['timestamp'] or '?'}  {r['kind']}"
            if r["tool_name"]:
                head += f" {r['tool_name']}"
            print(f"{head}  {r['handle']}")
            for line in clean(r["text"]).splitlines() or [""]:
                print(f"     {line}")
            sub = r.get("subagent")
            if sub:
                print(f"     [subagent {sub.get('agent_type') or ''}: {sub.get('description') or ''}"
                      f", {sub['total']} records: deja show {session.get('session_id')} --around "
                      f"{sub['records'][0]['handle'] if sub['records'] else ''}]")


def run_sessions(target: Target, args: argparse.Namespace) -> int:
    out = anyio.run(read_database, target, lambda store: list_sessions(
        store.reads, project=args.project, since=args.since, limit=args.limit))
    fmt = _chosen_format(args)
    if fmt == "json":
        print(json.dumps(out, ensure_ascii=False))
        return 0
    if fmt in ("markdown", "html"):
        from ..render import documents

        _write(documents.sessions_markdown(out["sessions"]) if fmt == "markdown"
               else documents.sessions_html(out["sessions"]))
        return 0
    if fmt == "terminal":
        from rich.console import Console

        from ..render.terminal import paged, sessions_table

        with paged(Console()) as console:
            console.print(sessions_table(out["sessions"]))
            console.print("[dim]deja show SESSION · deja browse[/dim]")
        return 0
    for s in out["sessions"]:
        print(f"{s['last_ts'] or '?'}  {s['session_id']}  {s['title'] or '(untitled)'}")
        print(f"    {s['cwd'] or s['project_dir']}  branch {s['git_branch'] or '?'}  "
              f"since {s['first_ts'] or '?'}  {s['prompts']} prompts, {s['records']} records, "
              f"{s['subagent_runs']} subagent runs")
    return 0
