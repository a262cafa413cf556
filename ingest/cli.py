"""The ingest command, shared by `deja ingest` and `python -m ingest`.

A command layer, nothing more: `add_ingest_arguments` declares the options,
`IngestOptions.from_args` turns them into explicit values, and `run_ingest`
opens the store, takes the ingest lock, calls the runner (ingest/runner.py)
and the embedding driver (ingest/vectors.py), and prints the summary.
Progress goes to stderr (only on a terminal); the summary to stdout, as text
or, with --json, as ONE JSON object.

The embedding model is loaded once per run (`ModelOnce`), lazily: a watch run
loads it on the first pass that has something to embed and reuses it after;
a model that failed to load is reported once and not retried every pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from .config import PostgresUrl, database_from, machine_from
from .discover import default_roots
from .errors import DejaError, IngestBusy
from .lease import IngestLock
from .multilingual import MlOnce
from .run_parts import IngestOptions, ModelOnce, ProgressBar, until_signal
from .runner import IngestSummary, ingest_once, watch
from .store import Store
from .vectors import pending_count, run_embed

if TYPE_CHECKING:
    from .embed import Embedder

__all__ = ["add_ingest_arguments", "IngestOptions", "run_ingest", "main", "ProgressBar",
           "print_summary", "wait_for_lock", "ModelOnce",
           "embed_with_progress", "until_signal"]

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


async def wait_for_lock(lock: IngestLock, wait_seconds: float, *,
                        on_wait: Callable[[int | None], None] | None = None) -> None:
    """Take the ingest lock, waiting up to `wait_seconds` for its holder.

    `on_wait(holder_pid)` is called once when the lock is held by another
    process. Raises IngestBusy: a deja server holds the lock for as long as it
    runs, so waiting forever would hang a script while Claude Code is open.
    """
    if lock.acquire():
        return
    if on_wait is not None:
        on_wait(lock.holder_pid())
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


async def embed_with_progress(store: Store, embedder: Embedder, *, quiet: bool,
                              reembed_all: bool = False,
                              multilingual: MlOnce | None = None) -> dict[str, Any]:
    """`vectors.run_embed` with a progress bar on stderr unless `quiet`.

    Raises ModelMismatch.
    """
    bar = ProgressBar(sys.stderr, label="embed ") if not quiet else None
    try:
        return await run_embed(store, embedder, progress=bar, reembed_all=reembed_all,
                               multilingual=multilingual)
    finally:
        if bar:
            bar.finish()


async def _ingest_then_embed(store: Store, roots: Sequence[Path], options: IngestOptions,
                             model: ModelOnce, summary: IngestSummary,
                             extra: dict[str, Any]) -> None:
    """One pass over `roots`, then the vectors it calls for (unless no_embed)."""
    progress = ProgressBar(sys.stderr) if not options.silent else None
    try:
        await ingest_once(store, roots, summary=summary, progress=progress,
                          exclude=options.exclude)
    finally:
        if progress:
            progress.finish()
    if options.no_embed:
        extra["embedded"] = 0
        extra["pending_embeddings"] = await pending_count(store)
        return
    try:
        embedder = await model.get()
        extra.update(await embed_with_progress(store, embedder, quiet=options.silent,
                                               multilingual=model.multilingual))
    except DejaError as exc:
        # Keyword search works without vectors: report, don't fail.
        extra["embed_error"] = str(exc)
        extra["pending_embeddings"] = await pending_count(store)


async def _watch_and_embed(store: Store, roots: Sequence[Path], options: IngestOptions,
                           model: ModelOnce, summary: IngestSummary,
                           extra: dict[str, Any]) -> None:
    """Ingest as transcripts grow and embed after each pass, until SIGTERM or SIGINT."""
    if not options.silent:
        sys.stderr.write(f"watching {', '.join(str(r) for r in roots)} (Ctrl-C to stop)\n")

    async def after_pass(s: IngestSummary) -> None:
        if not options.silent and s.passes > 1 and s.new_records:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} records: {s.new_records} in all\n")
        if options.no_embed or model.error is not None:
            return  # a model that failed to load was reported once; extra keeps the error
        if model.embedder is None and not await pending_count(store):
            extra.setdefault("embedded", 0)  # nothing to embed yet: no model to load either
            extra["pending_embeddings"] = 0
            return
        try:
            embedder = await model.get()
        except DejaError as exc:
            extra["embed_error"] = str(exc)
            sys.stderr.write(f"deja: warning: {exc}; watching without vectors\n")
            return
        try:
            extra.update(await run_embed(store, embedder, multilingual=model.multilingual))
        except DejaError as exc:
            extra["embed_error"] = str(exc)

    await until_signal(lambda: watch(store, roots, summary=summary, on_pass=after_pass,
                                     exclude=options.exclude))


async def run_ingest(options: IngestOptions, db_path: Path | PostgresUrl,
                     environ: Mapping[str, str]) -> int:
    """Run the ingest command into `db_path` (a SQLite file, or a PostgreSQL database:
    ingest/pg/run.py); returns the exit code.

    `environ` gives the default roots, the model settings (DEJA_EMBED_MODEL ...) and,
    for PostgreSQL, the machine's name (DEJA_MACHINE) and libpq's PG* settings.
    Raises IngestBusy, DatabaseError.
    """
    roots: list[Path] = list(options.roots) or default_roots(environ)
    if options.roots:
        for r in roots:
            if not r.is_dir():
                sys.stderr.write(f"deja: warning: root {r} is not a folder\n")
    summary = IngestSummary()
    extra: dict[str, Any] = {"database": str(db_path)}
    if isinstance(db_path, PostgresUrl):
        from .pg.run import ingest_postgres

        await ingest_postgres(db_path, machine_from(environ), roots, options, summary, extra,
                              environ)
        _report(options, summary, extra)
        return 0
    model = ModelOnce(environ)
    lock = IngestLock(db_path)
    store = await Store.open(db_path)
    try:
        def say_waiting(pid: int | None) -> None:
            if not options.silent:
                sys.stderr.write(f"another deja process (pid {pid}) is ingesting; "
                                 f"waiting up to {options.wait_seconds:.0f} s for it...\n")

        await wait_for_lock(lock, options.wait_seconds, on_wait=say_waiting)
        if options.watch:
            await _watch_and_embed(store, roots, options, model, summary, extra)
        else:
            await _ingest_then_embed(store, roots, options, model, summary, extra)
    finally:
        lock.release()
        with anyio.CancelScope(shield=True):
            await store.close()
    _report(options, summary, extra)
    return 0


def _report(options: IngestOptions, summary: IngestSummary, extra: Mapping[str, Any]) -> None:
    """The summary on stdout: one JSON object with --json, else the text of print_summary."""
    if options.as_json:
        out = summary.to_dict()
        out.update(extra)
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print_summary(summary, sys.stdout, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ingest [--db PATH] [ingest options]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Read Claude Code transcripts into the deja database.",
    )
    parser.add_argument("--db", help="database file or postgresql:// URL (default: $DEJA_DB or "
                                     "the user data folder)")
    parser.add_argument("--verbose", "-v", action="count", default=0)
    add_ingest_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.ERROR,
        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        target = database_from(args.db, os.environ)
        return anyio.run(run_ingest, IngestOptions.from_args(args, os.environ), target,
                         os.environ)
    except DejaError as exc:
        sys.stderr.write(f"deja: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
