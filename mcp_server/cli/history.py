"""`deja show` and `deja sessions`: reading the history around a hit (read-only).

Both print mcp_server/history.py's dicts, as text or with --json as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio

from ..history import get_context, list_sessions
from .common import Subparsers, read_store

__all__ = ["register_show", "register_sessions", "run_show", "run_sessions"]


def register_show(sub: Subparsers) -> None:
    p = sub.add_parser("show", help="the turns around a hit",
                       description="Show the records around a search hit, in conversation "
                                   "order. REF is a hit's handle (rec:123) or a line uuid.")
    p.add_argument("ref", help="a hit's handle (rec:123) or uuid")
    p.add_argument("--before", "-B", type=int, default=5, help="records before (default 5)")
    p.add_argument("--after", "-A", type=int, default=5, help="records after (default 5)")
    p.add_argument("--max-tokens", type=int, default=4000, help="size bound (default 4000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_show)


def register_sessions(sub: Subparsers) -> None:
    p = sub.add_parser("sessions", help="recent sessions",
                       description="Recent sessions, newest first, with title, branch, "
                                   "time span and size.")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="only sessions active since: 2026-05-01, 7d, 2w ...")
    p.add_argument("--limit", "-n", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_sessions)


def run_show(db_path: Path, args: argparse.Namespace) -> int:
    out = anyio.run(read_store, db_path, lambda store: get_context(
        store.conn, args.ref, before=args.before, after=args.after, max_tokens=args.max_tokens))
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    session = out["session"]
    print(f"session {session.get('session_id')}  {session.get('title') or ''}  "
          f"{session.get('cwd') or ''}  {session.get('git_branch') or ''}")
    for label, records in (("", out["before"]), (">>", [out["hit"]]), ("", out["after"])):
        for r in records:
            head = f"{label or '  '} {r['timestamp'] or '?'}  {r['kind']}"
            if r["tool_name"]:
                head += f" {r['tool_name']}"
            print(f"{head}  {r['handle']}")
            for line in r["text"].splitlines() or [""]:
                print(f"     {line}")
    return 0


def run_sessions(db_path: Path, args: argparse.Namespace) -> int:
    out = anyio.run(read_store, db_path, lambda store: list_sessions(
        store.conn, project=args.project, since=args.since, limit=args.limit))
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for s in out["sessions"]:
        print(f"{s['last_ts'] or '?'}  {s['session_id']}  {s['title'] or '(untitled)'}")
        print(f"    {s['cwd'] or s['project_dir']}  branch {s['git_branch'] or '?'}  "
              f"since {s['first_ts'] or '?'}  {s['prompts']} prompts, {s['records']} records, "
              f"{s['subagent_runs']} subagent runs")
    return 0
