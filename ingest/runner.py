"""One ingest pass over the roots, and the watch loop that repeats it.

`ingest_once()` discovers files, skips those whose size, mtime and inode match
what the database last saw (so a pass over an unchanged history costs one
`stat` per file), reads the others from their cursors in a worker thread and
writes each batch with its cursor in one transaction. Files that vanished are
flagged `missing`; their records stay (Claude Code deletes old transcripts;
deja must not).

`watch()` runs passes when watchfiles reports changes, and at least every
`rescan_seconds` as a safety net (file events are lost on some filesystems).

`ingest_files()` reads given files only (a hook's transcript and its
subagents) and stops between two batches once its deadline has passed: each
batch commits with its cursor, so what is left is read by the next pass.

Files of an excluded project (settings.Exclusions) are not read at all.

The caller holds the ingest lock (ingest/lease.py, or on PostgreSQL the advisory lock of
ingest/pg/lock.py): these functions do not take it. They write through the narrow
store surface of ingest/surface.py, which both engines implement.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .batch import Batch, SourceRow
from .cursor import FileReader, ReadStats, peek_cwd
from .discover import SourceFile, discover, display_path
from .redact import Redactor
from .settings import Exclusions
from .surface import IngestStore

if TYPE_CHECKING:
    # A type only: importing anyio.streams costs ~7 ms on every CLI start.
    from anyio.streams.memory import MemoryObjectSendStream

__all__ = ["IngestSummary", "ingest_once", "ingest_files", "watch", "Progress", "is_excluded"]

logger = logging.getLogger(__name__)

# How often a watcher wakes with no event (seconds): the first wake catches up on
# what changed while it started; later ones only check whether a rescan is due.
WATCH_TICK_S = 1.0

# progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


@dataclass
class IngestSummary:
    """What a pass (or a series of passes, in watch mode) did."""

    files: int = 0
    files_read: int = 0
    sessions: int = 0
    subagent_runs: int = 0
    new_records: int = 0
    records_by_kind: Counter[str] = field(default_factory=Counter)
    redactions_by_kind: Counter[str] = field(default_factory=Counter)
    read: ReadStats = field(default_factory=ReadStats)
    file_errors: list[tuple[str, str]] = field(default_factory=list)
    missing_files: int = 0
    passes: int = 0
    elapsed_s: float = 0.0

    @property
    def redactions(self) -> int:
        return sum(self.redactions_by_kind.values())

    @property
    def compactions(self) -> int:
        return self.records_by_kind.get("compaction", 0) + self.records_by_kind.get(
            "compact_summary", 0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "files_read": self.files_read,
            "sessions": self.sessions,
            "subagent_runs": self.subagent_runs,
            "new_records": self.new_records,
            "records_by_kind": dict(sorted(self.records_by_kind.items())),
            "compactions": self.compactions,
            "redactions": self.redactions,
            "redactions_by_kind": dict(sorted(self.redactions_by_kind.items())),
            "skipped_lines": self.read.skipped_count,
            "skipped": [
                {"path": p, "line": n, "reason": r} for p, n, r in self.read.skipped
            ],
            "ignored_lines": sum(self.read.ignored.values()),
            "ignored_by_reason": dict(self.read.ignored.most_common()),
            "unknown_line_types": dict(self.read.unknown_types),
            "invalid_utf8_lines": self.read.invalid_utf8_lines,
            "file_errors": [{"path": p, "reason": r} for p, r in self.file_errors],
            "files_reset": self.read.resets,
            "missing_files": self.missing_files,
            "lines_read": self.read.lines,
            "bytes_read": self.read.bytes,
            "passes": self.passes,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _unchanged(row: SourceRow, st: os.stat_result) -> bool:
    return (
        row.size == st.st_size
        and row.mtime_ns == st.st_mtime_ns
        and row.ino == st.st_ino
        and row.dev == st.st_dev
    )


def _stat_all(files: list[SourceFile]) -> list[tuple[SourceFile, os.stat_result | OSError]]:
    out: list[tuple[SourceFile, os.stat_result | OSError]] = []
    for source in files:
        try:
            out.append((source, os.stat(source.path)))
        except OSError as exc:
            out.append((source, exc))
    return out


async def ingest_once(
    store: IngestStore,
    roots: Sequence[Path],
    *,
    summary: IngestSummary | None = None,
    progress: Progress | None = None,
    exclude: Exclusions | None = None,
) -> IngestSummary:
    """Read everything new under `roots` into `store`; returns (and fills) the summary."""
    started = time.perf_counter()
    summary = summary or IngestSummary()
    summary.passes += 1
    redactor = Redactor(summary.redactions_by_kind)

    todo, gone = await _changed_files(store, roots, summary, exclude)
    jobs = await _jobs(store, todo)
    total = sum(max(st.st_size - (row.offset if row else 0), 0) for _, row, st in todo)
    await _read_and_write(store, jobs, redactor, summary, total, progress)

    counts = await store.source_counts()
    summary.sessions = counts.sessions
    summary.subagent_runs = counts.subagent_runs
    summary.missing_files = counts.missing_files
    if todo or gone:
        await store.set_meta("last_ingest", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    summary.elapsed_s += time.perf_counter() - started
    return summary


async def ingest_files(
    store: IngestStore,
    files: Sequence[SourceFile],
    *,
    deadline: float | None = None,
    batch_lines: int = 2000,
    exclude: Exclusions | None = None,
) -> IngestSummary:
    """Read what is new in `files` only, in batches of `batch_lines`, stopping between
    batches once `time.monotonic()` passes `deadline` (the rest waits for the next pass).

    Unlike `ingest_once`, nothing is flagged missing: other files are not looked at.
    """
    started = time.perf_counter()
    summary = IngestSummary(passes=1)
    known = await store.load_sources()
    # The same file under another name (a symlinked root, CLAUDE_CONFIG_DIR): its row,
    # or its records would be read twice under two sources.
    by_inode = {(r.dev, r.ino): r for r in known.values() if r.ino is not None}
    todo: list[tuple[SourceFile, SourceRow | None, os.stat_result]] = []
    for source, st in await anyio.to_thread.run_sync(_stat_all, list(files)):
        if isinstance(st, OSError):
            _note_error(summary, source.path, f"cannot stat: {st.strerror}")
            continue
        row = known.get(os.fsencode(source.path))
        if row is None and (st.st_dev, st.st_ino) in by_inode:
            row = by_inode[(st.st_dev, st.st_ino)]
            source = replace(source, path=os.fsdecode(row.path))
        if (row is None or not _unchanged(row, st)) and not is_excluded(source, exclude):
            todo.append((source, row, st))
    summary.files = len(files)
    jobs = await _jobs(store, todo)
    await _read_and_write(store, jobs, Redactor(summary.redactions_by_kind), summary, 0, None,
                          deadline=deadline, batch_lines=batch_lines)
    if todo:
        await store.set_meta("last_ingest", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    summary.elapsed_s = time.perf_counter() - started
    return summary


def is_excluded(source: SourceFile, exclude: Exclusions | None) -> bool:
    """True when the file belongs to an excluded project: by its folder's name, else by
    the first working directory written in it (the folder name is lossy)."""
    if not exclude:
        return False
    if exclude.excludes_folder(source.project_dir):
        return True
    try:
        return exclude.excludes_path(peek_cwd(source.path))
    except OSError:
        return False  # unreadable: reading it will report why


async def _jobs(store: IngestStore, todo: list[tuple[SourceFile, SourceRow | None, os.stat_result]]
                ) -> list[tuple[SourceFile, SourceRow]]:
    """The files to read with their source rows, registering the new ones."""
    new_rows = await store.add_sources([
        (source.path, display_path(source.path), source.project_dir, source.layout,
         source.session_hint, source.agent_id)
        for source, row, _ in todo if row is None
    ])
    return [(source, row or new_rows[os.fsencode(source.path)]) for source, row, _ in todo]


async def _changed_files(
    store: IngestStore, roots: Sequence[Path], summary: IngestSummary,
    exclude: Exclusions | None = None,
) -> tuple[list[tuple[SourceFile, SourceRow | None, os.stat_result]], list[int]]:
    """Discover and stat the files: those to read (new or changed, not excluded) and the
    ids of those gone. Flags gone files `missing`, and clears the flag of those back."""
    found = await anyio.to_thread.run_sync(discover, list(roots))
    summary.file_errors.extend(e for e in found.errors if e not in summary.file_errors)
    stats = await anyio.to_thread.run_sync(_stat_all, found.files)
    known = await store.load_sources()

    todo: list[tuple[SourceFile, SourceRow | None, os.stat_result]] = []
    seen: set[bytes] = set()
    came_back: list[int] = []
    for source, st in stats:
        raw = os.fsencode(source.path)
        seen.add(raw)
        if isinstance(st, OSError):
            _note_error(summary, source.path, f"cannot stat: {st.strerror}")
            continue
        row = known.get(raw)
        if row is not None and row.missing:
            came_back.append(row.id)
        if row is not None and _unchanged(row, st):
            continue
        if is_excluded(source, exclude):
            continue
        todo.append((source, row, st))
    summary.files = len(stats)
    await store.mark_missing(came_back, missing=False)

    gone = [
        row.id for raw, row in known.items()
        if raw not in seen and not row.missing and _under_roots(raw, roots)
    ]
    await store.mark_missing(gone)
    return todo, gone


async def _read_and_write(
    store: IngestStore, jobs: list[tuple[SourceFile, SourceRow]], redactor: Redactor,
    summary: IngestSummary, total: int, progress: Progress | None,
    *, deadline: float | None = None, batch_lines: int | None = None,
) -> None:
    """Read the files from their cursors and commit each batch with its cursor.

    Reading and parsing (a worker thread) overlap with writing (aiosqlite's
    thread): each file's batches still commit in order, each with its cursor.
    """
    start_bytes = summary.read.bytes
    if progress:
        progress(0, total)
    send, receive = anyio.create_memory_object_stream[Batch](max_buffer_size=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_produce, send, jobs, redactor, summary, deadline, batch_lines)
        async with receive:
            async for batch in receive:
                result = await store.write_batch(batch)
                summary.new_records += result.new_records
                summary.records_by_kind.update(result.by_kind)
                if progress:
                    progress(min(summary.read.bytes - start_bytes, total), total)
    if progress:
        progress(total, total)


async def _produce(
    send: MemoryObjectSendStream[Batch], jobs: list[tuple[SourceFile, SourceRow]],
    redactor: Redactor, summary: IngestSummary,
    deadline: float | None = None, batch_lines: int | None = None,
) -> None:
    """Send the batches of each file in turn; a file that fails is noted and skipped.
    Past `deadline`, no further batch is read."""
    async with send:
        for source, row in jobs:
            if deadline is not None and time.monotonic() >= deadline:
                return
            reader = FileReader(source, row, redactor, summary.read,
                                **({"batch_lines": batch_lines} if batch_lines else {}))
            try:
                await anyio.to_thread.run_sync(reader.open)
            except OSError as exc:
                _note_error(summary, source.path, f"cannot read: {exc.strerror or exc}")
                continue
            summary.files_read += 1
            try:
                while deadline is None or time.monotonic() < deadline:
                    batch = await anyio.to_thread.run_sync(reader.next_batch)
                    if batch is None:
                        break
                    await send.send(batch)
            except OSError as exc:
                _note_error(summary, source.path, f"read failed: {exc.strerror or exc}")
            finally:
                reader.close()


def _note_error(summary: IngestSummary, path: str, reason: str) -> None:
    entry = (display_path(path), reason)
    if entry not in summary.file_errors:
        summary.file_errors.append(entry)
        logger.warning("%s: %s", entry[0], reason)


def _under_roots(raw: bytes, roots: Sequence[Path]) -> bool:
    for root in roots:
        prefix = os.fsencode(str(root)).rstrip(b"/") + b"/"
        if raw.startswith(prefix):
            return True
    return False


async def watch(
    store: IngestStore,
    roots: Sequence[Path],
    *,
    summary: IngestSummary | None = None,
    rescan_seconds: float = 30.0,
    debounce_ms: int = 400,
    on_pass: Callable[[IngestSummary], Awaitable[None] | None] | None = None,
    exclude: Exclusions | None = None,
) -> IngestSummary:
    """Ingest now, then whenever files change (and every `rescan_seconds`), until cancelled."""
    from watchfiles import awatch

    summary = summary or IngestSummary()

    async def one_pass() -> None:
        await ingest_once(store, roots, summary=summary, exclude=exclude)
        if on_pass is not None:
            maybe = on_pass(summary)
            if maybe is not None:
                await maybe

    await one_pass()
    while True:
        existing = [str(r) for r in roots if os.path.isdir(r)]
        if not existing:
            await anyio.sleep(rescan_seconds)
            await one_pass()
            continue
        # One watcher for the life of the loop; changes made during a pass are
        # buffered and trigger the next one. Timeouts trigger the safety rescan.
        # awatch waits in a worker thread that a cancellation cannot interrupt:
        # without `stop` set on cancel, stopping (the server's shutdown) would
        # wait out rust_timeout, i.e. up to `rescan_seconds`.
        # The watcher starts after the pass before it: a line appended in between
        # raises no event. So the watcher wakes every WATCH_TICK_S, and its first
        # wake (the watcher now running) makes one more pass, which picks such a
        # line up within a second instead of at the next rescan.
        stop = anyio.Event()
        tick = min(WATCH_TICK_S, rescan_seconds)
        caught_up = False
        last_pass = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_when_cancelled, stop)
            async for changes in awatch(
                *existing,
                debounce=debounce_ms,
                rust_timeout=max(1, int(tick * 1000)),
                yield_on_timeout=True,
                stop_event=stop,
                watch_filter=lambda _change, path: path.endswith((".jsonl", ".json")),
            ):
                if changes or not caught_up or time.monotonic() - last_pass >= rescan_seconds:
                    caught_up = True
                    await one_pass()
                    last_pass = time.monotonic()
                if len(existing) != sum(1 for r in roots if os.path.isdir(r)):
                    break  # a root appeared: watch it too
            tg.cancel_scope.cancel()


async def _set_when_cancelled(event: anyio.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        event.set()
