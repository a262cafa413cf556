"""`deja`: the command line.

Each subcommand opens the database, makes one library call and prints the
result; library errors (`DejaError`) become one-line messages and exit code 1,
bad usage exit code 2. Global options (`--db`, `-v`) come before the
subcommand; `DEJA_DB` is read here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ingest import __version__
from ingest.cli import add_ingest_arguments, load_configured_embedder, run_embed, run_ingest
from ingest.config import db_path_from
from ingest.db import connect
from ingest.errors import DejaError
from ingest.lease import IngestLock
from ingest.store import Store

from . import history
from .projects import expand_project_arg
from .search import MODES, Resources, SearchRequest, search

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deja",
        description="Long-term memory for Claude Code: your transcripts, searchable.",
    )
    parser.add_argument("--db", metavar="PATH",
                        help="database file (default: $DEJA_DB, else ~/.local/share/deja/deja.db)")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log to stderr (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"deja {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run the MCP stdio server (for Claude Code)",
                       description="Run the MCP server on stdin/stdout. It ingests the "
                                   "transcript roots in the background (one process per "
                                   "database at a time) and serves the memory tools.")
    p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--root", action="append", type=Path, metavar="DIR",
                   help="transcript root to watch (repeatable; default as for ingest)")
    p.add_argument("--no-ingest", action="store_true",
                   help="serve only; leave ingesting to `deja ingest --watch` or another server")
    p.add_argument("--log-file", type=Path,
                   help="debug log file (default: deja-server.log in the data folder)")

    p = sub.add_parser("ingest", help="read transcripts into the database",
                       description="Read every transcript under the roots into the database. "
                                   "Running it again reads only what is new.")
    add_ingest_arguments(p)

    p = sub.add_parser("stats", help="what the database holds",
                       description="Counts of sessions, records by kind, files and size.")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("search", help="search everything ingested",
                       description="Hybrid search (FTS5 BM25 + vectors, fused) over prompts, "
                                   "answers, thinking, tool calls and results, summaries. "
                                   "Any text works as a query.")
    p.add_argument("query", help="words or a question; \"quoted phrases\" and prefix* work")
    p.add_argument("--json", action="store_true", help="print {\"hits\": [...]} as JSON")
    p.add_argument("--limit", "-n", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--mode", choices=MODES, default="hybrid",
                   help="hybrid (default), keyword (BM25 only, no model) or vector")
    p.add_argument("--kind", action="append", dest="kinds", metavar="KIND",
                   help="only records of this kind (repeatable): prompt, assistant, thinking, "
                        "tool_call, tool_result, summary, compact_summary, memory, ...")
    p.add_argument("--tool", help="only calls and results of this tool (e.g. Bash)")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="from this time: 2026-05-01, 7d, 2w, yesterday ...")
    p.add_argument("--until", help="before this time (same forms as --since)")
    p.add_argument("--max-tokens", type=int, help="bound the total size of the hits")

    p = sub.add_parser("show", help="the turns around a hit",
                       description="Show the records around a search hit, in conversation "
                                   "order. REF is a hit's handle (rec:123) or a line uuid.")
    p.add_argument("ref", help="a hit's handle (rec:123) or uuid")
    p.add_argument("--before", "-B", type=int, default=5, help="records before (default 5)")
    p.add_argument("--after", "-A", type=int, default=5, help="records after (default 5)")
    p.add_argument("--max-tokens", type=int, default=4000, help="size bound (default 4000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("sessions", help="recent sessions",
                       description="Recent sessions, newest first, with title, branch, "
                                   "time span and size.")
    p.add_argument("--project", help="a project path or folder name, or 'all' (default)")
    p.add_argument("--since", help="only sessions active since: 2026-05-01, 7d, 2w ...")
    p.add_argument("--limit", "-n", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("embed", help="compute the vectors still missing",
                       description="Embed the records that await a vector, newest first "
                                   "(after `deja ingest --no-embed`, or to catch up).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("reembed", help="rebuild every vector with the configured model",
                       description="Drop all vectors and embed everything again with the model "
                                   "set by DEJA_EMBED_MODEL (needed after changing it).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


async def _stats(db_path: Path, as_json: bool) -> int:
    store = await Store.open(db_path)
    try:
        stats = await store.stats()
    finally:
        await store.close()
    if as_json:
        print(json.dumps(stats))
    else:
        print(f"database: {stats['database']} ({stats['database_bytes'] / 1e6:.1f} MB)")
        print(f"sessions: {stats['sessions']}, subagent runs: {stats['subagent_runs']}")
        print(f"records: {stats['records']}")
        for kind, n in stats["by_kind"].items():
            print(f"  {kind}: {n}")
        print(f"files: {stats['files']} ({stats['missing_files']} no longer on disk)")
        print(f"vectors: {stats['chunks']} chunks ({stats['embedding_model'] or 'no model yet'}), "
              f"{stats['pending_embeddings']} records awaiting embedding")
        print(f"last ingest: {stats['last_ingest'] or 'never'}")
    return 0


async def _search(db_path: Path, args: argparse.Namespace) -> int:
    embedder = None
    embedder_error = None
    # `--project .` from inside a project (or one of its worktrees).
    args.project = expand_project_arg(args.project)
    # Checked before the model loads (raises InvalidQuery).
    request = SearchRequest(args.query, mode=args.mode, limit=args.limit, kinds=args.kinds,
                            session_id=args.session, project=args.project, tool=args.tool,
                            since=args.since, until=args.until, max_tokens=args.max_tokens)
    store = await Store.open(db_path)
    vector_conn = None
    try:
        has_vectors = await store.conn.execute_fetchall("SELECT 1 FROM chunks LIMIT 1")
        if args.mode != "keyword" and not has_vectors:
            # Loading the model costs seconds; without vectors it cannot help.
            embedder_error = "no vectors yet (run `deja embed`)"
        elif args.mode != "keyword":
            try:
                embedder = await anyio.to_thread.run_sync(load_configured_embedder, os.environ)
            except DejaError as exc:
                embedder_error = str(exc)
        if embedder is not None and args.mode == "hybrid":
            # The vector ranker on its own connection, beside the keyword ranker.
            vector_conn = await connect(db_path, readonly=True)
        result = await search(store.conn, request, Resources(
            embedder=embedder, embedder_error=embedder_error, vector_conn=vector_conn))
    finally:
        await store.close()
        if vector_conn is not None:
            await vector_conn.close()
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for note in result.notes:
        sys.stderr.write(f"note: {note}\n")
    if not result.hits:
        print("no hits")
        return 0
    for h in result.hits:
        print(f"{h.timestamp or '?'}  {h.kind}{' ' + h.tool_name if h.tool_name else ''}  "
              f"{h.project or ''}  session {h.session_id}  {h.handle}")
        print("    " + h.snippet)
    return 0


async def _show(db_path: Path, args: argparse.Namespace) -> int:
    store = await Store.open(db_path)
    try:
        out = await history.get_context(store.conn, args.ref, before=args.before,
                                        after=args.after, max_tokens=args.max_tokens)
    finally:
        await store.close()
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


async def _sessions(db_path: Path, args: argparse.Namespace) -> int:
    store = await Store.open(db_path)
    try:
        out = await history.list_sessions(store.conn, project=args.project, since=args.since,
                                          limit=args.limit)
    finally:
        await store.close()
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for s in out["sessions"]:
        print(f"{s['last_ts'] or '?'}  {s['session_id']}  {s['title'] or '(untitled)'}")
        print(f"    {s['cwd'] or s['project_dir']}  branch {s['git_branch'] or '?'}  "
              f"since {s['first_ts'] or '?'}  {s['prompts']} prompts, {s['records']} records, "
              f"{s['subagent_runs']} subagent runs")
    return 0


async def _embed(db_path: Path, args: argparse.Namespace, reembed_all: bool) -> int:
    store = await Store.open(db_path)
    lock = IngestLock(db_path)
    try:
        if not lock.acquire():
            raise DejaError(f"another deja process (pid {lock.holder_pid()}) is ingesting and "
                            "embedding this database; it will embed what is pending")
        out = await run_embed(store, os.environ, quiet=args.quiet or args.json,
                              reembed_all=reembed_all)
    finally:
        lock.release()
        await store.close()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"embedded {out['embedded']} records ({out['chunks']} chunks) with "
              f"{out['embedding_model']} ({out['embedding_backend']}) in {out['embed_seconds']} s; "
              f"{out['pending_embeddings']} pending")
    return 0


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(db_path: Path, args: argparse.Namespace) -> int:
    """Run the MCP server; logs go to stderr and, at debug level, to a log file."""
    from logging.handlers import RotatingFileHandler

    from ingest.config import default_data_dir
    from ingest.discover import default_roots

    from .server import ServerConfig, build_server, run_stdio

    log_file = args.log_file or default_data_dir(os.environ) / "deja-server.log"
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=2)
        os.chmod(log_file, 0o600)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        for handler_ in root.handlers:
            if handler_ is not handler and isinstance(handler_, logging.StreamHandler):
                handler_.setLevel(logging.DEBUG if args.verbose > 1 else
                                  logging.INFO if args.verbose else logging.WARNING)
        for noisy in ("aiosqlite", "watchfiles", "mcp", "httpx"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    except OSError as exc:
        sys.stderr.write(f"deja: cannot write log file {log_file}: {exc}\n")
    config = ServerConfig(
        db_path=db_path,
        roots=list(args.root) if args.root else default_roots(os.environ),
        environ=dict(os.environ),
        ingest=not args.no_ingest,
    )
    # SIGTERM ends the server as cleanly as stdin closing (see run_stdio).
    anyio.run(run_stdio, build_server(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose if args.command != "serve" else 0)
    db_path = db_path_from(args.db, os.environ)
    try:
        if args.command == "serve":
            return _serve(db_path, args)
        if args.command == "ingest":
            return anyio.run(run_ingest, args, db_path, os.environ)
        if args.command == "stats":
            return anyio.run(_stats, db_path, args.json)
        if args.command == "search":
            return anyio.run(_search, db_path, args)
        if args.command == "show":
            return anyio.run(_show, db_path, args)
        if args.command == "sessions":
            return anyio.run(_sessions, db_path, args)
        if args.command in ("embed", "reembed"):
            return anyio.run(_embed, db_path, args, args.command == "reembed")
    except DejaError as exc:
        sys.stderr.write(f"deja: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `deja search ... | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


