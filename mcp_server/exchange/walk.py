"""The walk over a JSONL export that both importers share: parse, check, dispatch, batch.

An export (jsonl.py) is a header line, then `source`, `session`, `agent_run`
and `record` lines. What each line becomes is the engine's business
(importer.py for SQLite, pg_import.py for PostgreSQL); the rules of the file
are one and live here, so the two engines refuse the same files with the same
words: a line that is not JSON or has no `type`, a first line that is not a
header of a format this deja reads, an unknown type, an empty file.

Records are collected and handed to the engine `batch` at a time, so an
import of millions of records holds one batch in memory, and `progress` is
told the line number after each batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ingest.errors import DejaError

from .jsonl import FORMAT, VERSION

__all__ = ["NotAnExport", "ExportSink", "walk_export", "new_counts"]


class NotAnExport(DejaError):
    """The file is not a deja JSONL export (or not one this deja reads)."""


class ExportSink(Protocol):
    """What an engine does with each kind of export line (inside its one transaction)."""

    async def source(self, obj: dict[str, Any]) -> None: ...

    async def session(self, obj: dict[str, Any]) -> None: ...

    async def agent_run(self, obj: dict[str, Any]) -> None: ...

    async def records(self, objs: list[dict[str, Any]]) -> None:
        """Insert a batch of record lines, in the export's order."""


def new_counts() -> dict[str, int]:
    """The import's answer: how many rows of each kind were new."""
    return {"sources": 0, "sessions": 0, "agent_runs": 0, "records": 0, "memories": 0}


def walk_export(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The export's lines after its header, as (line number, object); raises NotAnExport."""
    header_seen = False
    for number, obj in _parse(lines):
        if not header_seen:
            _check_header(obj)
            header_seen = True
            continue
        if obj["type"] not in _KINDS:
            raise NotAnExport(f"line {number}: unknown type {obj['type']!r}")
        yield number, obj
    if not header_seen:
        raise NotAnExport("the file is empty: not a deja export")


async def feed(sink: ExportSink, lines: Iterable[str], batch: int,
               progress: Callable[[int], None] = lambda n: None) -> None:
    """Hand every line of the export to `sink`, records `batch` at a time."""
    pending: list[dict[str, Any]] = []
    for number, obj in walk_export(lines):
        kind = obj["type"]
        if kind == "record":
            pending.append(obj)
            if len(pending) >= batch:
                await sink.records(pending)
                pending = []
                progress(number)
        elif kind == "source":
            await sink.source(obj)
        elif kind == "session":
            await sink.session(obj)
        else:
            await sink.agent_run(obj)
    if pending:
        await sink.records(pending)


_KINDS = frozenset({"source", "session", "agent_run", "record"})


def _parse(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise NotAnExport(f"line {number} is not JSON: {exc}") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise NotAnExport(f"line {number} is not a deja export line (no `type`)")
        yield number, obj


def _check_header(obj: dict[str, Any]) -> None:
    """Raise NotAnExport unless `obj` is the header of an export this deja reads."""
    if obj["type"] != "header" or obj.get("format") != FORMAT:
        raise NotAnExport("not a deja export: the first line must be its header "
                          "(`deja export --format jsonl` writes one)")
    if int(obj.get("version", 0)) > VERSION:
        raise NotAnExport(f"export format version {obj.get('version')} is newer "
                          f"than this deja reads ({VERSION}): upgrade deja")
