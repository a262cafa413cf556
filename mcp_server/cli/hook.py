"""`deja hook EVENT`: the command Claude Code runs for its hooks, failing open.

Claude Code runs `<deja> hook session-start` (and pre-compact, post-compact,
session-end, stop) with the hook's JSON on stdin (FORMAT.md, "Hooks"). What
each event does is mcp_server/hook.py; this module is the process around it,
which is on the user's critical path and so:

- never fails the session: whatever goes wrong (bad JSON, an unknown event, a
  missing transcript, a locked or read-only database, a bug), it exits 0
  with nothing on stdout, and says why in one line on stderr and in
  `deja-hooks.log` beside the database. It never exits 2 (which would block
  a compaction);
- never runs past its budget (`BUDGET_S` after it starts, under the 1.5 s all
  SessionEnd hooks share): the work gets a deadline, SQLite a busy timeout
  of what remains, and a watchdog thread ends the process at the deadline
  whatever it is doing (SQLite's journal and the per-batch cursors make that
  safe: what was committed stays, the rest is read again next time);
- imports only what it uses: no mcp, torch, onnxruntime or numpy (the
  dispatcher imports no other command module for `deja hook`; tested).

Only session-start prints: `{"hookSpecificOutput": {"hookEventName":
"SessionStart", "additionalContext": "..."}}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .common import Subparsers

if TYPE_CHECKING:
    from ingest.config import PostgresUrl

__all__ = ["register", "run", "fail_open", "BUDGET_S", "LOG_NAME"]

# From the handler's start; interpreter start-up and imports come before (~0.1 s).
BUDGET_S = 0.8
LOG_NAME = "deja-hooks.log"
_LOG_MAX_BYTES = 1_000_000
_STDIN_MAX_BYTES = 32 * 1024 * 1024
# Held while stdout is written, so the watchdog never cuts an answer in half.
_OUTPUT = threading.Lock()


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "hook", help="run a Claude Code hook (JSON on stdin); always exits 0",
        description="What Claude Code's hooks call: session-start prints a short orientation "
                    "on the project's past sessions; pre-compact and session-end ingest the "
                    "session now and record a checkpoint; post-compact stores the compaction "
                    "summary; stop ingests new lines. Reads the hook's JSON on stdin, returns "
                    f"within {BUDGET_S:.1f} s, and exits 0 whatever happens (failures go to "
                    f"stderr and {LOG_NAME} in the data folder).")
    p.add_argument("event", nargs="?", default="", metavar="EVENT",
                   help="session-start, pre-compact, post-compact, session-end or stop")
    p.set_defaults(handler=run, postgres_handler=run_postgres)


def _log_path(db_path: Path | None) -> Path | None:
    return db_path.parent / LOG_NAME if db_path is not None else None


def fail_open(event: str, message: str, db_path: Path | None) -> int:
    """Say why the hook did nothing (stderr, and the log when writable); exit code 0."""
    line = f"deja hook {event or '?'}: {' '.join(str(message).split())[:500]}"
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    log = _log_path(db_path)
    if log is not None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if log.exists() and log.stat().st_size > _LOG_MAX_BYTES:
                log.replace(log.with_name(LOG_NAME + ".1"))
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {line}\n")
        except OSError:
            pass  # a read-only disk: stderr said it
    return 0


def _watchdog(event: str, db_path: Path | None, at: float) -> None:
    def fire() -> None:
        with _OUTPUT:
            fail_open(event, f"gave up at its {BUDGET_S:.1f} s budget", db_path)
            os._exit(0)

    timer = threading.Timer(max(at - time.monotonic(), 0.0), fire)
    timer.daemon = True
    timer.start()


def run_postgres(target: PostgresUrl, args: argparse.Namespace) -> int:
    """The hook on a PostgreSQL database (as this machine); its log in the data folder."""
    from ingest.config import default_db_path

    return run(default_db_path(os.environ), args, target=target)


def run(db_path: Path, args: argparse.Namespace, *, target: PostgresUrl | None = None) -> int:
    """Run hook `args.event` on the JSON of stdin (module docstring). Always returns 0."""
    started = time.monotonic()
    event = str(args.event or "")
    deadline = started + BUDGET_S
    _watchdog(event, db_path, deadline + 0.05)
    try:
        import anyio

        from ingest.config import config_path_from
        from ingest.settings import load_settings

        from ..hook import HookInput, run_event

        raw = sys.stdin.buffer.read(_STDIN_MAX_BYTES)
        try:
            data = json.loads(raw.decode("utf-8", errors="replace") or "null")
        except ValueError as exc:
            return fail_open(event, f"hook input is not JSON: {exc}", db_path)
        hook = HookInput.from_json(data)
        settings = load_settings(config_path_from(os.environ), os.environ)
        out = anyio.run(run_event, event, hook, target or db_path, settings, os.environ,
                        deadline)
    except Exception as exc:  # noqa: BLE001 - a hook fails open, whatever failed
        return fail_open(event, f"{type(exc).__name__}: {exc}" if not _is_deja(exc) else str(exc),
                         db_path)
    if out:
        answer = json.dumps({"hookSpecificOutput": {"hookEventName": "SessionStart",
                                                    "additionalContext": out}},
                            ensure_ascii=False)
        with _OUTPUT:
            try:
                sys.stdout.write(answer + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
    return 0


def _is_deja(exc: BaseException) -> bool:
    from ingest.errors import DejaError

    return isinstance(exc, DejaError)
