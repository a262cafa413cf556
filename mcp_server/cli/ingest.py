"""`deja ingest`, `deja embed`, `deja reembed`: the commands that write the database.

They create the database when it does not exist yet. Ingest is
ingest/cli.py's command (shared with `python -m ingest`); embed and reembed
take the ingest lock, load the configured model once and call the embedding
driver (ingest/vectors.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from ingest.cli import (
    IngestOptions,
    add_ingest_arguments,
    embed_with_progress,
    run_ingest,
)
from ingest.config import PostgresUrl
from ingest.errors import DejaError
from ingest.lease import IngestLock
from ingest.store import Store

from .common import Subparsers

__all__ = ["register_ingest", "register_embed", "run_ingest_command", "run_embed_command"]


def register_ingest(sub: Subparsers) -> None:
    p = sub.add_parser("ingest", help="read transcripts into the database",
                       description="Read every transcript under the roots into the database. "
                                   "Running it again reads only what is new.")
    add_ingest_arguments(p)
    # On PostgreSQL too (ingest/pg/): the same command, run_ingest picks the engine.
    p.set_defaults(handler=run_ingest_command, postgres_handler=run_ingest_command)


def register_embed(sub: Subparsers) -> None:
    """`embed` and `reembed` (one handler; `reembed_all` tells them apart)."""
    for name, reembed_all, help_, description in (
        ("embed", False, "compute the vectors still missing",
         "Embed the records that await a vector, newest first "
         "(after `deja ingest --no-embed`, or to catch up)."),
        ("reembed", True, "rebuild every vector with the configured model",
         "Drop all vectors and embed everything again with the model "
         "set by DEJA_EMBED_MODEL (needed after changing it)."),
    ):
        p = sub.add_parser(name, help=help_, description=description)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        p.set_defaults(handler=run_embed_command, reembed_all=reembed_all,
                       postgres_handler=run_embed_postgres)


def run_ingest_command(db_path: Path | PostgresUrl, args: argparse.Namespace) -> int:
    return anyio.run(run_ingest, IngestOptions.from_args(args, os.environ), db_path, os.environ)


def run_embed_command(db_path: Path, args: argparse.Namespace) -> int:
    out = anyio.run(_embed, db_path, args.quiet or args.json, args.reembed_all)
    return _print_embed(out, args)


def run_embed_postgres(target: PostgresUrl, args: argparse.Namespace) -> int:
    """`deja embed` / `reembed` on PostgreSQL (ingest/pg/run.py)."""
    from ingest.cli import ProgressBar
    from ingest.config import machine_from
    from ingest.pg.run import embed_postgres

    bar = None if args.quiet or args.json else ProgressBar(sys.stderr, label="embed ")
    try:
        out = anyio.run(lambda: embed_postgres(target, machine_from(os.environ), os.environ,
                                               reembed_all=args.reembed_all, progress=bar))
    finally:
        if bar:
            bar.finish()
    return _print_embed(out, args)


def _print_embed(out: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(out))
    else:
        print(f"embedded {out['embedded']} records ({out['chunks']} chunks) with "
              f"{out['embedding_model']} ({out['embedding_backend']}) in {out['embed_seconds']} s; "
              f"{out['pending_embeddings']} pending")
    return 0


async def _embed(db_path: Path, quiet: bool, reembed_all: bool) -> dict[str, Any]:
    """Raises DejaError when another process holds the lock, ModelUnavailable, ModelMismatch."""
    store = await Store.open(db_path)
    lock = IngestLock(db_path)
    try:
        if not lock.acquire():
            raise DejaError(f"another deja process (pid {lock.holder_pid()}) is ingesting and "
                            "embedding this database; it will embed what is pending")
        from ingest.embed import load_configured_embedder  # the model code only when used

        embedder = await anyio.to_thread.run_sync(load_configured_embedder, os.environ)
        from ingest.multilingual import MlOnce

        return await embed_with_progress(store, embedder, quiet=quiet, reembed_all=reembed_all,
                                         multilingual=MlOnce(os.environ))
    finally:
        lock.release()
        await store.close()
