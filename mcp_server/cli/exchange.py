"""`deja export` and `deja import`: the history out to a file, and a JSONL export back in.

Export is read-only (it creates no database); import creates or migrates the
database like ingest. Both serve a PostgreSQL URL too: the export reads through
`store.reads` (and carries each file's machine), the import writes through the
PostgreSQL store's transaction (mcp_server/exchange/pg_import.py). An export file
holds your transcripts: it is created 0600. `-` as OUT writes JSONL or Markdown
to stdout (Parquet needs a file); `-` as FILE reads stdin. Progress goes to stderr, on a terminal only; the
summary goes to stderr too when the data goes to stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio

from ingest.config import PostgresUrl
from ingest.errors import DejaError
from ingest.store import Store

from .common import Readable, Subparsers, Target, read_database

__all__ = ["register"]

FORMATS = ("jsonl", "markdown", "parquet")


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export", help="write the history to JSONL, Markdown or Parquet",
        description="Write records, sessions and memories to OUT ('-': stdout). JSONL "
                    "round-trips through `deja import`; Markdown is for reading; Parquet "
                    "(pip install 'deja[parquet]') is for analysis.")
    p.add_argument("out", metavar="OUT", help="the file to write, or - for stdout")
    p.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    p.add_argument("--project", help="only this project (a path, '.', or a folder name)")
    p.add_argument("--session", help="only this session (an id or its prefix)")
    p.add_argument("--since", help="only records from this time on (a date, or 7d, 2w...)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(handler=run_export, postgres_handler=run_export)
    p = sub.add_parser(
        "import", help="add a JSONL export to the database",
        description="Add the records, sessions, subagent runs and memories of a "
                    "`deja export --format jsonl` file ('-': stdin). Importing twice adds "
                    "nothing. Vectors are not carried: run `deja embed` afterwards.")
    p.add_argument("file", metavar="FILE", help="the export to read, or - for stdin")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(handler=run_import, postgres_handler=run_import)


def _progress(verb: str) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda n: None

    def show(n: int) -> None:
        sys.stderr.write(f"\r{verb} {n} records...")
        sys.stderr.flush()

    return show


def _open_out(out: str) -> IO[str]:
    if out == "-":
        return sys.stdout
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise DejaError(f"cannot write {out}: {exc.strerror or exc}") from None
    return open(fd, "w", encoding="utf-8", newline="\n")


def run_export(target: Target, args: argparse.Namespace) -> int:
    """Write the selected history in the chosen format."""
    from ..exchange.jsonl import write_jsonl
    from ..exchange.markdown import write_markdown
    from ..exchange.parquet import write_parquet
    from ..exchange.selection import select

    if args.format == "parquet" and args.out == "-":
        raise DejaError("Parquet needs a file to write: give OUT a path")
    filters = {"project": args.project, "session": args.session, "since": args.since}
    progress = _progress("exported")

    async def export(store: Readable) -> dict[str, int]:
        conn = store.reads
        sel = await select(conn, **filters)
        if args.format == "parquet":
            from ..exchange.parquet import schema

            schema()  # pyarrow missing: say so before creating the file
            return await write_parquet(conn, sel, Path(args.out), progress)
        out = _open_out(args.out)
        try:
            if args.format == "jsonl":
                return await write_jsonl(conn, sel, out, filters, progress)
            return await write_markdown(conn, sel, out, progress)
        finally:
            if out is not sys.stdout:
                out.close()
            else:
                out.flush()

    counts = anyio.run(read_database, target, export)
    _summary({"format": args.format, "out": args.out, **counts}, args, to_stderr=args.out == "-")
    return 0


def run_import(target: Target, args: argparse.Namespace) -> int:
    """Add a JSONL export to the database (a SQLite file, or PostgreSQL: pg_import.py)."""
    from ..exchange.importer import import_jsonl

    progress = _progress("read")
    if args.file == "-":
        source: IO[str] = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    else:
        try:
            source = open(args.file, encoding="utf-8")
        except OSError as exc:
            raise DejaError(f"cannot read {args.file}: {exc.strerror or exc}") from None

    async def load() -> dict[str, int]:
        if isinstance(target, PostgresUrl):
            return await _import_postgres(target, source, progress)
        store = await Store.open(target)
        try:
            return await import_jsonl(store, source, progress)
        finally:
            await store.close()

    try:
        added = anyio.run(load)
    except UnicodeDecodeError as exc:
        raise DejaError(f"{args.file} is not UTF-8 text: not a deja export ({exc})") from None
    finally:
        source.close()
    _summary({"file": args.file, "added": added}, args, to_stderr=False)
    return 0


async def _import_postgres(target: PostgresUrl, source: IO[str],
                           progress: Callable[[int], None]) -> dict[str, int]:
    """The import into PostgreSQL, as this machine, creating deja's tables in a new database
    (as ingest does); psycopg's failures in one line without the password."""
    from ingest.config import machine_from
    from ingest.pg.connect import describe, require_psycopg
    from ingest.pg.store import PgStore

    from ..exchange.pg_import import import_jsonl_pg

    require_psycopg()
    import psycopg

    try:
        async with await PgStore.open(target, machine_from(os.environ), os.environ) as store:
            return await import_jsonl_pg(store, source, progress)
    except psycopg.Error as exc:
        raise DejaError(f"PostgreSQL at {target}: {describe(exc, target, os.environ)}") from exc


def _summary(data: dict[str, Any], args: argparse.Namespace, to_stderr: bool) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    stream = sys.stderr if to_stderr else sys.stdout
    if args.json:
        stream.write(json.dumps(data) + "\n")
        return
    counts = data.get("added", data)
    what = ", ".join(f"{v} {k}" for k, v in counts.items() if isinstance(v, int))
    verb = "added" if "added" in data else f"wrote {data['out']}:"
    stream.write(f"{verb} {what}\n")
