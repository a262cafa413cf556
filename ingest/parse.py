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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .redact import Redactor

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
    "KINDS",
]

# Tool results and file attachments longer than this are cut, and marked.
TEXT_CAP = 64 * 1024

# deja's hooks wrap what they inject in this marker; lines carrying it are
# deja's own output coming back through the transcript and are never indexed.
DEJA_CONTEXT_MARKER = "<deja-memory-context>"

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

_SYSTEM_NOISE = {"turn_duration", "stop_hook_summary"}
_ATTACHMENTS_KEPT = {
    "hook_additional_context",
    "edited_text_file",
    "file",
    "plan_file_reference",
    "plan_mode",
    "invoked_skills",
    "todo_reminder",
    "task_reminder",
    "compact_file_reference",
}
_METADATA_TYPES = {
    "file-history-snapshot",
    "queue-operation",
    "last-prompt",
    "permission-mode",
    "mode",
    "progress",
    "started",
}
_SPAWN_TOOLS = {"Task", "Agent"}


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
    records: list[Record] = field(default_factory=list)
    session: SessionInfo | None = None
    agent_links: list[AgentLink] = field(default_factory=list)
    ignored: str | None = None  # why nothing was kept, for lines skipped on purpose
    unknown_type: str | None = None
    invalid_utf8: bool = False  # bytes that were not UTF-8 were replaced by U+FFFD


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _json_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _blocks_text(content: Any) -> str:
    """Text of a tool_result's content: a string or a list of text/image blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict):
                btype = block.get("type")
                if btype == "text" and isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif btype == "image":
                    parts.append("[image]")
                elif btype == "document":
                    parts.append("[document]")
                elif isinstance(block.get("text"), str):
                    parts.append(block["text"])
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)
    if content is None:
        return ""
    return _json_compact(content)


def _command_kind(text: str) -> str:
    head = text.lstrip()[:40]
    if head.startswith(("<command-name>", "<command-message>", "<local-command-stdout>",
                        "<local-command-stderr>", "<bash-input>", "<bash-stdout>",
                        "<bash-stderr>", "<local-command-caveat>")):
        return "command"
    return "prompt"


class _Builder:
    """Collects the records of one line, sharing the line's common fields."""

    def __init__(self, obj: dict[str, Any], ctx: FileContext, offset: int,
                 redact: Callable[[str], str], line_key: str) -> None:
        self.obj = obj
        self.redact = redact
        self.records: list[Record] = []
        self.line_key = line_key
        self.uuid = _str(obj.get("uuid"))
        self.common: dict[str, Any] = {
            "uuid": self.uuid,
            "parent_uuid": _str(obj.get("parentUuid")),
            "session_id": _str(obj.get("sessionId")) or ctx.session_hint,
            "agent_id": _str(obj.get("agentId")) or ctx.agent_id,
            "ts": _str(obj.get("timestamp")),
            "cwd": _str(obj.get("cwd")),
            "git_branch": _str(obj.get("gitBranch")),
            "is_sidechain": bool(obj.get("isSidechain")),
            "byte_offset": offset,
        }

    def add(self, kind: str, text: str, **fields: Any) -> Record | None:
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
    line_key = _line_key(obj, raw or _json_compact(obj).encode("utf-8", "surrogatepass"))
    b = _Builder(obj, ctx, offset, redact, line_key)
    session_id = b.common["session_id"]

    if session_id and ltype in ("user", "assistant", "system", "attachment"):
        out.session = SessionInfo(
            session_id=session_id,
            cwd=b.common["cwd"],
            git_branch=b.common["git_branch"],
            ts=b.common["ts"],
            version=_str(obj.get("version")),
        )

    if ltype == "user":
        _parse_user(obj, b, out, ctx)
    elif ltype == "assistant":
        _parse_assistant(obj, b)
    elif ltype == "system":
        _parse_system(obj, b, out)
    elif ltype == "attachment":
        _parse_attachment(obj, b, out)
    elif ltype == "summary":
        summary = _str(obj.get("summary"))
        leaf = _str(obj.get("leafUuid"))
        if summary:
            b.add("summary", summary, uuid=leaf, session_id=session_id)
        else:
            out.ignored = "empty summary"
    elif ltype in ("ai-title", "custom-title", "agent-name"):
        if session_id:
            info = SessionInfo(session_id=session_id)
            if ltype == "agent-name":
                name = _str(obj.get("agentName"))
                info.agent_name = redact(name) if name else None
            else:
                title = _str(obj.get("aiTitle") or obj.get("customTitle") or obj.get("title"))
                info.title = redact(title) if title else None
                info.title_kind = ltype
            out.session = info
        out.ignored = ltype
    elif ltype == "result" and ctx.layout == "journal":
        agent = _str(obj.get("agentId"))
        result = obj.get("result")
        body = result if isinstance(result, str) else _json_compact(result)
        b.common["agent_id"] = agent
        b.add("workflow_result", body, role="agent")
    elif ltype == "progress":
        # agent_progress copies a subagent's messages (read from its own file),
        # but it names the spawning call even when the parent never got a result.
        data = obj.get("data")
        if isinstance(data, dict) and data.get("type") == "agent_progress":
            agent = _str(data.get("agentId"))
            parent_call = _str(obj.get("parentToolUseID"))
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
            b.add("system", _blocks_text(message.get("content")), role=str(ltype))
    out.records = b.records
    if not out.records and out.ignored is None and out.unknown_type is None:
        out.ignored = f"{ltype}: nothing to index"
    return out


def _parse_user(obj: dict[str, Any], b: _Builder, out: ParsedLine, ctx: FileContext) -> None:
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    is_meta = bool(obj.get("isMeta"))
    if obj.get("isCompactSummary"):
        b.add("compact_summary", _blocks_text(content), role="user")
        return
    if isinstance(content, str):
        if DEJA_CONTEXT_MARKER in content:
            out.ignored = "deja's own context"
            return
        kind = "meta" if is_meta else _command_kind(content)
        rec = b.add(kind, content, role="user")
        _maybe_sidechain_root(obj, b, rec, out, ctx)
        return
    if not isinstance(content, list):
        return
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "tool_result":
            _add_tool_result(obj, block, b, out)
        elif btype == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
    if texts:
        joined = "\n".join(texts)
        if DEJA_CONTEXT_MARKER in joined:
            out.ignored = "deja's own context"
            return
        kind = "meta" if is_meta else _command_kind(joined)
        rec = b.add(kind, joined, role="user")
        _maybe_sidechain_root(obj, b, rec, out, ctx)


def _maybe_sidechain_root(obj: dict[str, Any], b: _Builder, rec: Record | None,
                          out: ParsedLine, ctx: FileContext) -> None:
    """1.0.x: a sidechain (subagent) starts with a root user line in the session file."""
    if rec is None or not obj.get("isSidechain") or obj.get("parentUuid"):
        return
    if ctx.layout != "session" or _str(obj.get("agentId")) or not b.uuid or not rec.session_id:
        return
    agent_id = "sidechain-" + b.uuid
    for r in b.records:
        r.agent_id = agent_id
    out.agent_links.append(AgentLink(
        session_id=rec.session_id,
        agent_id=agent_id,
        layout="sidechain",
        description=rec.text[:200],
        spawn_prompt_sha=sha1(rec.text),
    ))


def _add_tool_result(obj: dict[str, Any], block: dict[str, Any], b: _Builder,
                     out: ParsedLine) -> None:
    tool_use_id = _str(block.get("tool_use_id"))
    text = _blocks_text(block.get("content"))
    is_error = bool(block.get("is_error"))
    meta: dict[str, Any] | None = None
    tur = obj.get("toolUseResult")
    if isinstance(tur, dict):
        agent_id = _str(tur.get("agentId"))
        if agent_id and b.common["session_id"]:
            out.agent_links.append(AgentLink(
                session_id=b.common["session_id"],
                agent_id=agent_id,
                agent_type=_str(tur.get("agentType")),
                tool_use_id=tool_use_id,
            ))
            meta = {"agent_id": agent_id}
        if not text.strip():
            # Some tools leave content empty and put the output here.
            for key in ("stdout", "content", "output", "result"):
                value = tur.get(key)
                if value:
                    text = _blocks_text(value)
                    break
        if text.startswith(PERSISTED_OUTPUT_TAG):
            text, spilled = _with_persisted_output(text, tur)
            if spilled:
                meta = {**(meta or {}), "persisted_output": spilled}
    if not text.strip():
        text = "[error]" if is_error else "[empty result]"
    b.add("tool_result", text, role="tool", tool_use_id=tool_use_id,
          is_error=is_error, meta=meta)


PERSISTED_OUTPUT_TAG = "<persisted-output>"


def _with_persisted_output(text: str, tur: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """A large tool output Claude Code spilled to `<session>/tool-results/*.txt`.

    The result block then holds only a notice and a 2 KB preview, while the
    line's toolUseResult keeps much more of the output (30,000 characters of
    stdout for Bash; the file content for Read). Keep the notice (it names the
    spill file) followed by that fuller output, so words past the preview are
    found; the spill file's path and size go into the record's meta.
    """
    fuller = ""
    for key in ("stdout", "stderr"):
        value = tur.get(key)
        if isinstance(value, str) and value.strip():
            fuller += ("\n" if fuller else "") + value
    file = tur.get("file")
    if not fuller and isinstance(file, dict) and isinstance(file.get("content"), str):
        fuller = file["content"]
    spilled = {k: tur[k] for k in ("persistedOutputPath", "persistedOutputSize") if k in tur}
    head = text.split("Preview (first", 1)[0].rstrip()
    if len(fuller) <= len(text) - len(head):
        return text, spilled or None
    return f"{head}\n\nOutput:\n{fuller}", spilled or None


def _parse_assistant(obj: dict[str, Any], b: _Builder) -> None:
    message = obj.get("message")
    if not isinstance(message, dict):
        return
    model = _str(message.get("model"))
    meta: dict[str, Any] = {}
    if _str(message.get("id")):
        meta["message_id"] = message["id"]
    if _str(obj.get("requestId")):
        meta["request_id"] = obj["requestId"]
    usage = message.get("usage")
    if isinstance(usage, dict):
        meta["usage"] = {k: v for k, v in usage.items() if isinstance(v, int)}
    if obj.get("isApiErrorMessage"):
        meta["api_error"] = True
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            kind = "error" if obj.get("isApiErrorMessage") else "assistant"
            b.add(kind, str(block.get("text") or ""), role="assistant", model=model,
                  meta=meta or None)
        elif btype == "thinking":
            b.add("thinking", str(block.get("thinking") or ""), role="assistant",
                  model=model, meta=meta or None)
        elif btype in ("tool_use", "server_tool_use"):
            name = _str(block.get("name")) or "?"
            tool_input = block.get("input")
            text = name + " " + _json_compact(tool_input)
            call_meta = dict(meta)
            if name in _SPAWN_TOOLS and isinstance(tool_input, dict):
                prompt = tool_input.get("prompt")
                if isinstance(prompt, str):
                    # A throwaway redactor: this copy of the prompt is only hashed,
                    # its secrets were counted with the call's input already.
                    call_meta["prompt_sha1"] = sha1(Redactor()(prompt))
            b.add("tool_call", text, role="assistant", tool_name=name,
                  tool_use_id=_str(block.get("id")), model=model, meta=call_meta or None)
        elif btype == "web_search_tool_result":
            b.add("tool_result", _blocks_text(block.get("content")), role="tool",
                  tool_name="web_search", tool_use_id=_str(block.get("tool_use_id")))


def _parse_system(obj: dict[str, Any], b: _Builder, out: ParsedLine) -> None:
    subtype = _str(obj.get("subtype"))
    if subtype in ("compact_boundary", "microcompact_boundary"):
        cm = obj.get("compactMetadata") or obj.get("microcompactMetadata") or {}
        cm = cm if isinstance(cm, dict) else {}
        text = str(obj.get("content") or "Conversation compacted")
        details = ", ".join(f"{k} {v}" for k, v in cm.items() if isinstance(v, (str, int)))
        if details:
            text += f" ({details})"
        meta = {"subtype": subtype, "compact": cm,
                "logical_parent_uuid": _str(obj.get("logicalParentUuid"))}
        b.add("compaction", text, role="system", meta=meta)
        return
    if subtype in _SYSTEM_NOISE:
        out.ignored = f"system {subtype}"
        return
    content = obj.get("content")
    text = content if isinstance(content, str) else _blocks_text(content)
    if DEJA_CONTEXT_MARKER in text:
        out.ignored = "deja's own context"
        return
    if subtype == "api_error" or obj.get("level") == "error":
        error = obj.get("error")
        detail = _json_compact(error) if error else ""
        if detail in ("{}", "[]"):
            detail = ""
        text = " ".join(t for t in (text, detail) if t) or "API error"
        if obj.get("retryAttempt") is not None:
            text += f" (retry {obj.get('retryAttempt')} of {obj.get('maxRetries')})"
        b.add("error", text, role="system", meta={"subtype": subtype})
        return
    b.add("system", text, role="system", meta={"subtype": subtype} if subtype else None)


def _parse_attachment(obj: dict[str, Any], b: _Builder, out: ParsedLine) -> None:
    att = obj.get("attachment")
    if not isinstance(att, dict):
        out.ignored = "attachment without body"
        return
    atype = _str(att.get("type")) or "?"
    if atype not in _ATTACHMENTS_KEPT:
        out.ignored = f"attachment {atype}"
        return
    parts: list[str] = []
    for key in ("filename", "path", "planFilePath", "displayPath"):
        if isinstance(att.get(key), str):
            parts.append(att[key])
            break
    for key in ("content", "snippet", "text", "planContent", "todos", "tasks", "skills"):
        value = att.get(key)
        if value:
            parts.append(value if isinstance(value, str) else _json_compact(value))
    text = "\n".join(parts)
    if DEJA_CONTEXT_MARKER in text:
        out.ignored = "deja's own context"
        return
    b.add("attachment", text, role="system", meta={"attachment": atype})
