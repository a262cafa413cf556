"""`deja stats`: what the database holds (read-only; creates nothing)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio

from ingest.store import Store

from .common import Subparsers, read_store

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("stats", help="what the database holds",
                       description="Counts of sessions, records by kind, files and size.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(db_path: Path, args: argparse.Namespace) -> int:
    stats = anyio.run(read_store, db_path, Store.stats)
    if args.json:
        print(json.dumps(stats))
        return 0
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
