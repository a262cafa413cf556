"""What a transcript line becomes: records, session facts, subagent links; and the builder
that makes records. Pure: no file, no database.

`Record` is one searchable piece of a line (a prompt, one assistant text or
thinking block, one tool call, one tool result...), `kind` one of `KINDS`.
`SessionInfo` and `AgentLink` are a line's side effects on the sessions and
subagent runs it belongs to; `ParsedLine` carries all of them, or why the line
was ignored. The store writes these; the parser (parse.py) makes them.

`RecordBuilder` gives every record of a line the line's common fields and
applies the rules every record's text obeys: redacted, NULs replaced, capped at
TEXT_CAP characters with the cap marked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .content import str_value

__all__ = [
    "KINDS",
    "TEXT_CAP",
    "LineError",
    "FileContext",
    "Record",
    "AgentLink",
    "SessionInfo",
    "ParsedLine",
    "RecordBuilder",
]

# Tool results and file attachments longer than this are cut, and marked.
TEXT_CAP = 64 * 1024

# What a record can be (records.kind): all but "memory" come from transcript
# lines; memories.py writes "memory" records.
KINDS = (
    "prompt",
    "command",
    "meta",
    "assistant",
    "thinking",
    "tool_call",
    "tool_result",
    "compaction",
    "compact_summary",
    "summary",
    "system",
    "error",
    "attachment",
    "workflow_result",
    "memory",
)


class LineError(ValueError):
    """A line that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class FileContext:
    """What the path tells about a file, needed to read its lines."""

    project_dir: str
    layout: str  # session | subagent | legacy_agent | workflow_agent | journal
    session_hint: str | None
    agent_id: str | None


@dataclass
class Record:
    """One searchable piece of a line. `line_key` (the line's uuid, else a hash) and `part`
    (its place among the line's records) identify it when the line is read again."""

    line_key: str
    part: int
    kind: str
    text: str
    text_len: int
    truncated: bool = False
    uuid: str | None = None
    parent_uuid: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    role: str | None = None
    tool_name: str | None = None
    tool_use_id: str | None = None
    is_error: bool | None = None
    ts: str | None = None
    cwd: str | None = None
    git_branch: str | None = None
    model: str | None = None
    is_sidechain: bool = False
    byte_offset: int | None = None
    meta: dict[str, Any] | None = None


@dataclass
class AgentLink:
    """A subagent run and what we know of it (merged with what is already stored)."""

    session_id: str
    agent_id: str
    layout: str | None = None
    agent_type: str | None = None
    description: str | None = None
    tool_use_id: str | None = None
    is_aside: bool = False
    # 1.0.x sidechains: the spawning call is found by the hash of its prompt.
    spawn_prompt_sha: str | None = None
    from_source: bool = False  # the run's own file (sets agent_runs.source_id)


@dataclass
class SessionInfo:
    """What a line tells about its session (merged with what is already stored)."""

    session_id: str
    cwd: str | None = None
    git_branch: str | None = None
    ts: str | None = None
    version: str | None = None
    title: str | None = None
    title_kind: str | None = None
    agent_name: str | None = None


@dataclass
class ParsedLine:
    """Everything one line gives: its records and side effects, or why it gave nothing."""

    records: list[Record] = field(default_factory=list)
    session: SessionInfo | None = None
    agent_links: list[AgentLink] = field(default_factory=list)
    ignored: str | None = None  # why nothing was kept, for lines skipped on purpose
    unknown_type: str | None = None
    invalid_utf8: bool = False  # bytes that were not UTF-8 were replaced by U+FFFD


class RecordBuilder:
    """Collects the records of one line, sharing the line's common fields."""

    def __init__(self, obj: dict[str, Any], ctx: FileContext, offset: int,
                 redact: Callable[[str], str], line_key: str) -> None:
        self.obj = obj
        self.redact = redact
        self.records: list[Record] = []
        self.line_key = line_key
        self.uuid = str_value(obj.get("uuid"))
        self.common: dict[str, Any] = {
            "uuid": self.uuid,
            "parent_uuid": str_value(obj.get("parentUuid")),
            "session_id": str_value(obj.get("sessionId")) or ctx.session_hint,
            "agent_id": str_value(obj.get("agentId")) or ctx.agent_id,
            "ts": str_value(obj.get("timestamp")),
            "cwd": str_value(obj.get("cwd")),
            "git_branch": str_value(obj.get("gitBranch")),
            "is_sidechain": bool(obj.get("isSidechain")),
            "byte_offset": offset,
        }

    def add(self, kind: str, text: str, **fields: Any) -> Record | None:
        """Add a record of `kind` unless `text` is blank; `fields` override the common ones."""
        if not text or not text.strip():
            return None
        if "\x00" in text:
            # SQLite functions (the FTS trigger's deja_fts_text, length, snippet)
            # stop at a NUL: words after it would be unsearchable.
            text = text.replace("\x00", "\ufffd")
        original_len = len(text)
        truncated = original_len > TEXT_CAP
        if truncated:
            # Redact with a margin past the cap, so a secret straddling it is
            # still recognised, but never scan megabytes that are thrown away.
            text = self.redact(text[: TEXT_CAP + 8192])[:TEXT_CAP]
            text += f"\n[deja: truncated at {TEXT_CAP} of {original_len} characters]"
        else:
            text = self.redact(text)
        record = Record(
            line_key=self.line_key,
            part=len(self.records),
            kind=kind,
            text=text,
            text_len=original_len,
            truncated=truncated,
            **{**self.common, **fields},
        )
        self.records.append(record)
        return record
