"""Turning one transcript line into records: pure, no file and no database.

`parse_line(raw, ctx)` takes the bytes of one complete JSONL line and the
context of its file, and returns a `ParsedLine`: the records to index (a user
prompt, each assistant text / thinking / tool call block, each tool result...)
and the side effects on sessions and subagent runs (a new title, a subagent's
link to the tool call that spawned it).

What is kept, what is noise (FORMAT.md has the line types):
- kept: prompts, assistant text, thinking, tool calls (name + input), tool
  results (verbatim, capped at TEXT_CAP characters with the cap marked),
  compaction boundaries and summaries, `summary` lines, useful system lines
  (errors, away summaries, local command output), a few attachment types,
  workflow results, session titles.
- ignored on purpose (counted, not "skipped"): progress lines (agent_progress
  copies a subagent's messages that we read from the subagent's own file),
  file-history snapshots, queue operations, mode changes, empty thinking, and
  deja's own hook injections (marked by DEJA_CONTEXT_MARKER).
- skipped (counted with a reason): lines that are not JSON objects.

Every string that reaches a record goes through the redactor first.

Where the pieces live: the record types and kinds in records.py, the text of
content blocks and tool outputs in content.py, the message-bearing line types
(user, assistant, system, attachment) in messages.py; this module decodes a
line and dispatches on its type. The names callers use are importable from
here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from .content import blocks_text, json_compact, str_value
from .messages import DEJA_CONTEXT_MARKER, parse_assistant, parse_attachment, parse_system, parse_user
from .records import (
    KINDS,
    TEXT_CAP,
    AgentLink,
    FileContext,
    LineError,
    ParsedLine,
    Record,
    RecordBuilder,
    SessionInfo,
)

__all__ = [
    "TEXT_CAP",
    "DEJA_CONTEXT_MARKER",
    "FileContext",
    "Record",
    "AgentLink",
    "SessionInfo",
    "ParsedLine",
    "LineError",
    "parse_line",
    "parse_object",
    "KINDS",
]

_METADATA_TYPES = {
    "file-history-snapshot",
    "queue-operation",
    "last-prompt",
    "permission-mode",
    "mode",
    "progress",
    "started",
}


def _line_key(obj: dict[str, Any], raw: bytes) -> str:
    uuid = obj.get("uuid")
    if isinstance(uuid, str) and uuid:
        return uuid
    leaf = obj.get("leafUuid")
    if isinstance(leaf, str) and leaf:
        return "leaf:" + leaf
    return "sha1:" + hashlib.sha1(raw).hexdigest()


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub_surrogates(value: Any) -> tuple[Any, bool]:
    """`value` with lone surrogates replaced by U+FFFD, and whether any was found."""
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value, False
        return _SURROGATE.sub("\ufffd", value), True
    if isinstance(value, list):
        found = False
        items = []
        for item in value:
            item, f = _scrub_surrogates(item)
            items.append(item)
            found = found or f
        return items, found
    if isinstance(value, dict):
        found = False
        out = {}
        for key, item in value.items():
            key, fk = _scrub_surrogates(key)
            item, fv = _scrub_surrogates(item)
            out[key] = item
            found = found or fk or fv
        return out, found
    return value, False


def parse_line(raw: bytes, ctx: FileContext, offset: int,
               redact: Callable[[str], str]) -> ParsedLine:
    """Parse one complete line (without or with its trailing newline).

    Raises LineError when the line is not a JSON object; invalid UTF-8 is
    replaced (U+FFFD) rather than rejected, so the rest of the line survives.
    """
    invalid_utf8 = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        invalid_utf8 = True
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise LineError("invalid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise LineError(f"not a JSON object (a {type(obj).__name__})")
    if _SURROGATE_ESCAPE.search(raw):
        # JSON may escape a lone UTF-16 surrogate ("\ud83d" of an emoji cut in
        # half): Python decodes it to a str that SQLite cannot store. Replace it.
        obj, replaced = _scrub_surrogates(obj)
        invalid_utf8 = invalid_utf8 or replaced
    parsed = parse_object(obj, ctx, offset, redact, raw)
    parsed.invalid_utf8 = invalid_utf8
    return parsed


def parse_object(obj: dict[str, Any], ctx: FileContext, offset: int,
                 redact: Callable[[str], str], raw: bytes = b"") -> ParsedLine:
    """Parse a decoded line object; see parse_line."""
    out = ParsedLine()
    ltype = obj.get("type")
    line_key = _line_key(obj, raw or json_compact(obj).encode("utf-8", "surrogatepass"))
    b = RecordBuilder(obj, ctx, offset, redact, line_key)
    session_id = b.common["session_id"]

    if session_id and ltype in ("user", "assistant", "system", "attachment"):
        out.session = SessionInfo(
            session_id=session_id,
            cwd=b.common["cwd"],
            git_branch=b.common["git_branch"],
            ts=b.common["ts"],
            version=str_value(obj.get("version")),
        )

    if ltype == "user":
        parse_user(obj, b, out, ctx)
    elif ltype == "assistant":
        parse_assistant(obj, b)
    elif ltype == "system":
        parse_system(obj, b, out)
    elif ltype == "attachment":
        parse_attachment(obj, b, out)
    elif ltype == "summary":
        summary = str_value(obj.get("summary"))
        leaf = str_value(obj.get("leafUuid"))
        if summary:
            b.add("summary", summary, uuid=leaf, session_id=session_id)
        else:
            out.ignored = "empty summary"
    elif ltype in ("ai-title", "custom-title", "agent-name"):
        if session_id:
            info = SessionInfo(session_id=session_id)
            if ltype == "agent-name":
                name = str_value(obj.get("agentName"))
                info.agent_name = redact(name) if name else None
            else:
                title = str_value(obj.get("aiTitle") or obj.get("customTitle") or obj.get("title"))
                info.title = redact(title) if title else None
                info.title_kind = ltype
            out.session = info
        out.ignored = ltype
    elif ltype == "result" and ctx.layout == "journal":
        agent = str_value(obj.get("agentId"))
        result = obj.get("result")
        body = result if isinstance(result, str) else json_compact(result)
        b.common["agent_id"] = agent
        b.add("workflow_result", body, role="agent")
    elif ltype == "progress":
        # agent_progress copies a subagent's messages (read from its own file),
        # but it names the spawning call even when the parent never got a result.
        data = obj.get("data")
        if isinstance(data, dict) and data.get("type") == "agent_progress":
            agent = str_value(data.get("agentId"))
            parent_call = str_value(obj.get("parentToolUseID"))
            if agent and parent_call and session_id:
                out.agent_links.append(AgentLink(session_id=session_id, agent_id=agent,
                                                 tool_use_id=parent_call))
        out.ignored = "progress"
    elif ltype in _METADATA_TYPES:
        out.ignored = ltype
    else:
        # Unknown line type: keep any message text it carries, else report it.
        out.unknown_type = str(ltype)
        message = obj.get("message")
        if isinstance(message, dict) and message.get("content"):
            b.add("system", blocks_text(message.get("content")), role=str(ltype))
    out.records = b.records
    if not out.records and out.ignored is None and out.unknown_type is None:
        out.ignored = f"{ltype}: nothing to index"
    return out

