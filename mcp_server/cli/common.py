"""What the command modules share: the subparsers' type and the read-only guard.

A read-only command (stats, search, show, sessions) must not create a
database: `Store.open` creates the file and its folders, so a mistyped `--db`
would print "0 records" instead of saying that nothing is there.
`require_database` refuses first; the write commands (ingest, embed, reembed,
serve) open the store directly and create it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.errors import DatabaseError

__all__ = ["Subparsers", "require_database"]

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def require_database(db_path: Path) -> None:
    """Raises DatabaseError when no database file is at `db_path`; creates nothing."""
    if not db_path.is_file():
        raise DatabaseError(f"no database at {db_path}; run `deja ingest` to create one")
