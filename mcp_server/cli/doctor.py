"""`deja doctor`: is everything deja needs in place? Each check, and its fix.

Read-only: it creates nothing (a missing database is a failed check, not a
new file). The checks are `mcp_server.doctor`'s; this module only prints them
and turns the result into the exit code: 1 when a check failed, 0 otherwise
(warnings included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ingest.config import PostgresUrl

from .common import Subparsers

__all__ = ["register", "run"]

_MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "doctor", help="check the database, model, transcripts and Claude Code setup",
        description="Check everything deja needs and say how to fix what is wrong. "
                    "Exits 1 when a check failed (warnings exit 0).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run, postgres_handler=run)


def run(db_path: Path | PostgresUrl, args: argparse.Namespace) -> int:
    from ..doctor import checks_json, failed, run_checks

    checks = run_checks(db_path, os.environ)
    if args.json:
        print(json.dumps(checks_json(db_path, checks)))
        return 1 if failed(checks) else 0
    out = sys.stdout
    for check in checks:
        out.write(f"{_MARKS.get(check.status, check.status)}  {check.name}: {check.detail}\n")
        if check.fix and check.status != "ok":
            out.write(f"      fix: {check.fix}\n")
    bad = [c.name for c in checks if c.status == "fail"]
    out.write(f"\n{'failed: ' + ', '.join(bad) if bad else 'no failures'}\n")
    return 1 if bad else 0
