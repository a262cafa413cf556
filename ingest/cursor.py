"""Reading a transcript file from its cursor, a batch of complete lines at a time.

`FileReader` is synchronous (it runs in a worker thread) and owns one open
file. On open it decides where to start:
- the saved offset, normally;
- 0 when the file is shorter than the offset (truncated) or its first bytes
  hash differently (replaced): the file is read again and records are
  reconciled by their unique key, so nothing is duplicated or lost.
It only consumes lines that end with a newline: a half-written last line waits
for the next pass. Each batch carries the cursor that covers exactly its lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from .batch import Batch, Cursor, SessionAgg, SourceRow
from .discover import SourceFile, display_path
from .parse import parse_line
from .records import AgentLink, FileContext, LineError

__all__ = ["FileReader", "ReadStats", "HEAD_BYTES", "MAX_LINE_BYTES", "head_hash", "peek_cwd"]

logger = logging.getLogger(__name__)

HEAD_BYTES = 4096
MAX_LINE_BYTES = 64 * 1024 * 1024
# Larger transactions mean fewer FTS5 segments to merge later and fewer
# commits: 2,000 -> 10,000 lines per batch took a 211 MB ingest from 13.7 to
# ~12 s; peak RSS did not move (73 MB).
BATCH_LINES = 10_000
BATCH_BYTES = 32 * 1024 * 1024


def head_hash(f: BinaryIO, length: int) -> str:
    f.seek(0)
    return hashlib.sha1(f.read(length)).hexdigest()


@dataclass
class ReadStats:
    """What reading saw, beyond records: kept in the ingest summary."""

    lines: int = 0
    bytes: int = 0
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # path, line no, reason
    skipped_count: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    unknown_types: Counter[str] = field(default_factory=Counter)
    invalid_utf8_lines: int = 0
    resets: int = 0

    MAX_SKIPPED_DETAILS = 200

    def skip(self, path: str, line_no: int, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < self.MAX_SKIPPED_DETAILS:
            self.skipped.append((path, line_no, reason))
        logger.warning("%s:%d: skipped: %s", path, line_no, reason)


_SESSION_ID = re.compile(rb'"sessionId"\s*:\s*"([^"]+)"')


def _peek_session_id(f: BinaryIO, limit: int = 256 * 1024) -> str | None:
    """The first sessionId in the file: summary lines at the top have none, and the
    file name can differ from the id inside (FORMAT.md)."""
    f.seek(0)
    m = _SESSION_ID.search(f.read(limit))
    return m.group(1).decode("utf-8", "replace") if m else None


_CWD = re.compile(rb'"cwd"\s*:\s*("(?:[^"\\]|\\.)*")')


def peek_cwd(path: str, limit: int = 64 * 1024) -> str | None:
    """The first `cwd` in the file's first `limit` bytes (the folder Claude Code ran in),
    without parsing the lines; None when there is none. Raises OSError."""
    with open(path, "rb") as f:
        m = _CWD.search(f.read(limit))
    if m is None:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


class FileReader:
    """Reads one source file from its cursor; see the module docstring."""

    def __init__(self, source: SourceFile, row: SourceRow, redact: Callable[[str], str],
                 stats: ReadStats, *, batch_lines: int = BATCH_LINES) -> None:
        self.source = source
        # Smaller batches let a caller with a deadline (a hook) stop sooner between them.
        self.batch_lines = batch_lines
        self.row = row
        self.redact = redact
        self.stats = stats
        self.display = display_path(source.path)
        self.ctx = FileContext(
            project_dir=source.project_dir,
            layout=source.layout,
            # The id inside wins over the file name once known (they can differ).
            session_hint=(row.session_id if source.layout == "session" and row.session_id
                          else source.session_hint),
            agent_id=source.agent_id,
        )
        self._f: BinaryIO | None = None
        self._offset = 0
        self._lines = 0
        self._session_id = row.session_id
        self._reset = False
        self._st: os.stat_result | None = None
        self._head_len = 0
        self._head_hash = ""
        self.done = False

    def open(self) -> None:
        """Open the file and choose the start offset. Raises OSError if unreadable."""
        f = open(self.source.path, "rb")
        try:
            st = os.fstat(f.fileno())
            row = self.row
            start, lines = row.offset, row.lines
            if start > 0:
                reason = None
                if st.st_size < start:
                    reason = f"truncated ({st.st_size} < {start} bytes)"
                elif row.head_len and head_hash(f, row.head_len) != row.head_hash:
                    reason = "replaced (first bytes differ)"
                elif row.ino is not None and (row.dev, row.ino) != (st.st_dev, st.st_ino):
                    reason = "replaced (new inode)"
                else:
                    f.seek(start - 1)
                    if f.read(1) != b"\n":
                        reason = "rewritten (no line ends at the cursor)"
                if reason is not None:
                    # Re-read from the start; records are reconciled by their
                    # unique key, so nothing is doubled and nothing lost.
                    logger.info("%s: %s, re-reading", self.display, reason)
                    start, lines, self._reset = 0, 0, True
            if self._reset:
                self.stats.resets += 1
            if self.source.layout == "session" and self._session_id is None:
                found = _peek_session_id(f)
                if found:
                    self._session_id = found
                    self.ctx = replace(self.ctx, session_hint=found)
            self._head_len = min(st.st_size, HEAD_BYTES)
            self._head_hash = head_hash(f, self._head_len)
            f.seek(start)
        except BaseException:
            f.close()
            raise
        self._f, self._st = f, st
        self._offset, self._lines = start, lines

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _cursor(self) -> Cursor:
        assert self._st is not None
        st = self._st
        cursor = Cursor(
            offset=self._offset, lines=self._lines, size=st.st_size, mtime_ns=st.st_mtime_ns,
            dev=st.st_dev, ino=st.st_ino, head_len=self._head_len, head_hash=self._head_hash,
            session_id=self._session_id, reset=self._reset,
        )
        self._reset = False  # counted once, with the first batch
        return cursor

    def next_batch(self) -> Batch | None:
        """The next batch of complete lines, or None at the end of what is complete."""
        if self.done or self._f is None:
            return None
        f = self._f
        batch = Batch(source_id=self.row.id, project_dir=self.source.project_dir)
        n_lines = 0
        n_bytes = 0
        while n_lines < self.batch_lines and n_bytes < BATCH_BYTES:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                self.done = True
                break
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE_BYTES:
                    self._skip_long_line(line)
                    n_lines += 1
                    continue
                # Half-written last line: not consumed until its newline arrives.
                self.done = True
                break
            start = self._offset
            self._offset += len(line)
            self._lines += 1
            n_lines += 1
            n_bytes += len(line)
            self.stats.lines += 1
            self.stats.bytes += len(line)
            if not line.strip():
                continue
            self._parse_into(batch, line, start)
        if n_lines == 0:
            return None
        batch.cursor = self._cursor()
        self._add_own_link(batch)
        return batch

    def _skip_long_line(self, head: bytes) -> None:
        """A line over MAX_LINE_BYTES: skip to its newline without holding it in memory."""
        assert self._f is not None
        f = self._f
        start = self._offset
        length = len(head)
        while True:
            chunk = f.readline(1 << 20)
            if not chunk:
                # No newline yet: leave it for a later pass, from its start.
                f.seek(start)
                self.done = True
                return
            length += len(chunk)
            if chunk.endswith(b"\n"):
                break
        self._offset += length
        self._lines += 1
        self.stats.lines += 1
        self.stats.bytes += length
        self.stats.skip(self.display, self._lines, f"line of {length} bytes exceeds {MAX_LINE_BYTES}")

    def _parse_into(self, batch: Batch, line: bytes, start: int) -> None:
        try:
            parsed = parse_line(line, self.ctx, start, self.redact)
        except LineError as exc:
            self.stats.skip(self.display, self._lines, str(exc))
            return
        if parsed.invalid_utf8:
            self.stats.invalid_utf8_lines += 1
            logger.warning("%s:%d: invalid UTF-8 replaced", self.display, self._lines)
        if parsed.unknown_type is not None:
            self.stats.unknown_types[parsed.unknown_type] += 1
        elif parsed.ignored is not None and not parsed.records:
            self.stats.ignored[parsed.ignored] += 1
        batch.records.extend(parsed.records)
        info = parsed.session
        if info is not None:
            if self._session_id is None and self.source.layout != "journal":
                self._session_id = info.session_id
            if info.title or info.agent_name:
                if self.source.layout == "session":
                    # Merge: an agent-name line after a title must not erase it.
                    known = batch.titles.get(info.session_id)
                    if known is None:
                        batch.titles[info.session_id] = info
                    else:
                        if info.title:
                            known.title, known.title_kind = info.title, info.title_kind
                        if info.agent_name:
                            known.agent_name = info.agent_name
            else:
                batch.sessions.setdefault(info.session_id, SessionAgg()).add(info)
        batch.agent_links.extend(parsed.agent_links)

    def _add_own_link(self, batch: Batch) -> None:
        """A subagent's own file links the run to its parent session."""
        source = self.source
        if source.layout not in ("subagent", "legacy_agent", "workflow_agent"):
            return
        agent_id = source.agent_id
        session_id = self._session_id or source.session_hint
        if not agent_id or not session_id:
            return
        meta = source.meta or {}
        description = meta.get("description")
        batch.agent_links.append(AgentLink(
            session_id=session_id,
            agent_id=agent_id,
            layout=source.layout,
            agent_type=meta.get("agentType") if isinstance(meta.get("agentType"), str) else None,
            description=self.redact(description) if isinstance(description, str) else None,
            tool_use_id=meta.get("toolUseId") if isinstance(meta.get("toolUseId"), str) else None,
            is_aside=agent_id.startswith("aside_question"),
            from_source=True,
        ))
