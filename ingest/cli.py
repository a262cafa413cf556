"""The ingest command, shared by `deja ingest` and `python -m ingest`.

Thin: parse options, open the store, take the ingest lock, call the runner,
print the summary. Progress goes to stderr (only on a terminal); the summary
to stdout, as text or, with --json, as ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio

from .config import db_path_from
from .discover import default_roots
from .embed import load_configured_embedder
from .errors import DejaError, IngestBusy
from .lease import IngestLock
from .runner import IngestSummary, ingest_once, watch
from .store import Store
from .vectors import pending_count

__all__ = ["add_ingest_arguments", "run_ingest", "main", "ProgressBar", "print_summary",
           "load_configured_embedder", "run_embed"]

logger = logging.getLogger(__name__)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", action="append", type=Path, metavar="DIR",
        help="a folder laid out like ~/.claude/projects (repeatable; default: "
             "~/.claude/projects and $CLAUDE_CONFIG_DIR/projects)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-embed", action="store_true",
                        help="only keyword-index; `deja embed` (or the server) adds vectors "
                             "later. DEJA_EMBED=0 in the environment does the same.")
    parser.add_argument("--watch", action="store_true",
                        help="keep running and ingest transcripts as they grow, until interrupted")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for another process that is ingesting this "
                             "database (default 60)")


class ProgressBar:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO, label: str = "ingest") -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        width = 30
        frac = min(done / total, 1.0)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        self.stream.write(
            f"\r{self.label} [{bar}] {frac:6.1%} {done / 1e6:8.1f}/{total / 1e6:.1f} MB"
        )
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def print_summary(summary: IngestSummary, stream: TextIO, extra: Mapping[str, Any] | None = None) -> None:
    d = summary.to_dict()
    if extra:
        d.update(extra)
    kinds = ", ".join(f"{k} {v}" for k, v in d["records_by_kind"].items()) or "none"
    lines = [
        f"files: {d['files']} ({d['files_read']} read, {d['missing_files']} missing, "
        f"{d['files_reset']} truncated or replaced)",
        f"sessions: {d['sessions']}, subagent runs: {d['subagent_runs']}",
        f"new records: {d['new_records']} ({kinds})",
        f"compactions: {d['compactions']}",
        f"redactions: {d['redactions']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in d['redactions_by_kind'].items())})"
           if d["redactions"] else ""),
        f"skipped lines: {d['skipped_lines']}",
    ]
    for s in d["skipped"][:20]:
        lines.append(f"  {s['path']}:{s['line']}: {s['reason']}")
    if d["ignored_lines"]:
        top = ", ".join(f"{k} {v}" for k, v in list(d["ignored_by_reason"].items())[:6])
        lines.append(f"ignored on purpose: {d['ignored_lines']} lines ({top}, ...)")
    if d["unknown_line_types"]:
        lines.append("unknown line types: " + ", ".join(
            f"{k} {v}" for k, v in d["unknown_line_types"].items()))
    if d["invalid_utf8_lines"]:
        lines.append(f"lines with invalid UTF-8 (replaced): {d['invalid_utf8_lines']}")
    for e in d["file_errors"]:
        lines.append(f"error: {e['path']}: {e['reason']}")
    if extra:
        for key, value in extra.items():
            lines.append(f"{key.replace('_', ' ')}: {value}")
    lines.append(f"elapsed: {d['elapsed_s']:.2f} s ({d['bytes_read'] / 1e6:.1f} MB read)")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


async def _wait_for_lock(lock: IngestLock, quiet: bool, wait_seconds: float) -> None:
    """Take the ingest lock, waiting up to `wait_seconds` for its holder.

    Raises IngestBusy: a deja server holds the lock for as long as it runs,
    so waiting forever would hang a script while Claude Code is open.
    """
    if lock.acquire():
        return
    if not quiet:
        sys.stderr.write(f"another deja process (pid {lock.holder_pid()}) is ingesting; "
                         f"waiting up to {wait_seconds:.0f} s for it...\n")
    deadline = time.monotonic() + wait_seconds
    while not lock.acquire():
        if time.monotonic() >= deadline:
            raise IngestBusy(
                f"another deja process (pid {lock.holder_pid()}) holds the ingest lock of this "
                "database: a `deja serve` started by Claude Code keeps ingesting its roots in the "
                "background. Its results are already searchable; to ingest other roots now, "
                "pass --wait with a longer time, or stop it."
            )
        await anyio.sleep(0.5)


async def run_embed(store: Store, environ: Mapping[str, str], *, quiet: bool,
                    reembed_all: bool = False) -> dict[str, Any]:
    """Embed what awaits a vector, with a progress bar; returns the summary fields.

    Raises ModelUnavailable or ModelMismatch.
    """
    from .vectors import embed_pending, reembed

    embedder = await anyio.to_thread.run_sync(load_configured_embedder, environ)
    bar = ProgressBar(sys.stderr, label="embed ") if not quiet else None
    try:
        if reembed_all:
            summary = await reembed(store, embedder, progress=bar)
        else:
            summary = await embed_pending(store, embedder, progress=bar)
    finally:
        if bar:
            bar.finish()
    out = summary.to_dict()
    out["embedding_model"] = embedder.model_id
    out["embedding_backend"] = embedder.backend
    return out


async def run_ingest(args: argparse.Namespace, db_path: Path, environ: Mapping[str, str]) -> int:
    """Run the ingest command with parsed `args`; returns the exit code."""
    if environ.get("DEJA_EMBED", "").strip().lower() in ("0", "no", "false", "off"):
        args.no_embed = True
    roots: list[Path] = list(args.root) if args.root else default_roots(environ)
    missing_roots = [r for r in roots if not r.is_dir()]
    if args.root and missing_roots:
        for r in missing_roots:
            sys.stderr.write(f"deja: warning: root {r} is not a folder\n")
    progress = ProgressBar(sys.stderr) if not (args.quiet or args.json) else None
    summary = IngestSummary()
    extra: dict[str, Any] = {"database": str(db_path)}
    lock = IngestLock(db_path)
    store = await Store.open(db_path)
    try:
        await _wait_for_lock(lock, args.quiet or args.json, args.wait)
        if args.watch:
            if not (args.quiet or args.json):
                sys.stderr.write(
                    f"watching {', '.join(str(r) for r in roots)} (Ctrl-C to stop)\n"
                )

            async def report(s: IngestSummary) -> None:
                if not (args.quiet or args.json) and s.passes > 1 and s.new_records:
                    sys.stderr.write(f"{time.strftime('%H:%M:%S')} records: {s.new_records} in all\n")
                if not args.no_embed:
                    try:
                        extra.update(await run_embed(store, environ, quiet=True))
                    except DejaError as exc:
                        extra["embed_error"] = str(exc)

            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with anyio.create_task_group() as tg:
                    async def stop_on_signal() -> None:
                        async for _sig in signals:
                            tg.cancel_scope.cancel()
                            return

                    tg.start_soon(stop_on_signal)
                    await watch(store, roots, summary=summary, on_pass=report)
        else:
            await ingest_once(store, roots, summary=summary, progress=progress)
            if progress:
                progress.finish()
            if not args.no_embed:
                try:
                    extra.update(await run_embed(store, environ, quiet=args.quiet or args.json))
                except DejaError as exc:
                    # Keyword search works without vectors: report, don't fail.
                    extra["embed_error"] = str(exc)
                    extra["pending_embeddings"] = await pending_count(store)
            else:
                extra["embedded"] = 0
                extra["pending_embeddings"] = await pending_count(store)
    finally:
        if progress:
            progress.finish()
        lock.release()
        with anyio.CancelScope(shield=True):
            await store.close()
    if args.json:
        out = summary.to_dict()
        out.update(extra)
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print_summary(summary, sys.stdout, extra)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ingest [--db PATH] [ingest options]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Read Claude Code transcripts into the deja database.",
    )
    parser.add_argument("--db", help="database file (default: $DEJA_DB or the user data folder)")
    parser.add_argument("--verbose", "-v", action="count", default=0)
    add_ingest_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.ERROR,
        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
    )
    db_path = db_path_from(args.db, os.environ)
    try:
        return anyio.run(run_ingest, args, db_path, os.environ)
    except DejaError as exc:
        sys.stderr.write(f"deja: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
