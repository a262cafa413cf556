"""The lines that carry a message: user, assistant, system and attachment. Pure.

Each `parse_*` function reads one decoded line of its type and adds its
records to the line's `RecordBuilder` (and side effects to its `ParsedLine`):

- user: the prompt (or slash command, or meta text), each tool result, and
  the subagent links a tool result reveals; in 1.0.x transcripts a sidechain
  (subagent) starts with a root user line in the session file.
- assistant: each text, thinking and tool call block; a spawning tool call
  (Task, Agent) keeps a hash of its prompt, to find the subagent it started.
- system: compaction boundaries, errors, useful system text; turn durations
  and hook summaries are noise.
- attachment: the few attachment types worth finding again.

Lines carrying deja's own context (DEJA_CONTEXT_MARKER) are ignored.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .content import (
    PERSISTED_OUTPUT_TAG,
    blocks_text,
    command_kind,
    json_compact,
    str_value,
    with_persisted_output,
)
from .records import AgentLink, FileContext, ParsedLine, Record, RecordBuilder
from .redact import Redactor

__all__ = [
    "DEJA_CONTEXT_MARKER",
    "parse_user",
    "parse_assistant",
    "parse_system",
    "parse_attachment",
    "sha1",
]

# deja's hooks wrap what they inject in this marker; lines carrying it are
# deja's own output coming back through the transcript and are never indexed.
DEJA_CONTEXT_MARKER = "<deja-memory-context>"

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
_SPAWN_TOOLS = {"Task", "Agent"}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def parse_user(obj: dict[str, Any], b: RecordBuilder, out: ParsedLine, ctx: FileContext) -> None:
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    is_meta = bool(obj.get("isMeta"))
    if obj.get("isCompactSummary"):
        b.add("compact_summary", blocks_text(content), role="user")
        return
    if isinstance(content, str):
        if DEJA_CONTEXT_MARKER in content:
            out.ignored = "deja's own context"
            return
        kind = "meta" if is_meta else command_kind(content)
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
        kind = "meta" if is_meta else command_kind(joined)
        rec = b.add(kind, joined, role="user")
        _maybe_sidechain_root(obj, b, rec, out, ctx)


def _maybe_sidechain_root(obj: dict[str, Any], b: RecordBuilder, rec: Record | None,
                          out: ParsedLine, ctx: FileContext) -> None:
    """1.0.x: a sidechain (subagent) starts with a root user line in the session file."""
    if rec is None or not obj.get("isSidechain") or obj.get("parentUuid"):
        return
    if ctx.layout != "session" or str_value(obj.get("agentId")) or not b.uuid or not rec.session_id:
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


def _add_tool_result(obj: dict[str, Any], block: dict[str, Any], b: RecordBuilder,
                     out: ParsedLine) -> None:
    tool_use_id = str_value(block.get("tool_use_id"))
    text = blocks_text(block.get("content"))
    is_error = bool(block.get("is_error"))
    meta: dict[str, Any] | None = None
    tur = obj.get("toolUseResult")
    if isinstance(tur, dict):
        agent_id = str_value(tur.get("agentId"))
        if agent_id and b.common["session_id"]:
            out.agent_links.append(AgentLink(
                session_id=b.common["session_id"],
                agent_id=agent_id,
                agent_type=str_value(tur.get("agentType")),
                tool_use_id=tool_use_id,
            ))
            meta = {"agent_id": agent_id}
        if not text.strip():
            # Some tools leave content empty and put the output here.
            for key in ("stdout", "content", "output", "result"):
                value = tur.get(key)
                if value:
                    text = blocks_text(value)
                    break
        if text.startswith(PERSISTED_OUTPUT_TAG):
            text, spilled = with_persisted_output(text, tur)
            if spilled:
                meta = {**(meta or {}), "persisted_output": spilled}
    if not text.strip():
        text = "[error]" if is_error else "[empty result]"
    b.add("tool_result", text, role="tool", tool_use_id=tool_use_id,
          is_error=is_error, meta=meta)


def parse_assistant(obj: dict[str, Any], b: RecordBuilder) -> None:
    message = obj.get("message")
    if not isinstance(message, dict):
        return
    model = str_value(message.get("model"))
    meta: dict[str, Any] = {}
    if str_value(message.get("id")):
        meta["message_id"] = message["id"]
    if str_value(obj.get("requestId")):
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
            name = str_value(block.get("name")) or "?"
            tool_input = block.get("input")
            text = name + " " + json_compact(tool_input)
            call_meta = dict(meta)
            if name in _SPAWN_TOOLS and isinstance(tool_input, dict):
                prompt = tool_input.get("prompt")
                if isinstance(prompt, str):
                    # A throwaway redactor: this copy of the prompt is only hashed,
                    # its secrets were counted with the call's input already.
                    call_meta["prompt_sha1"] = sha1(Redactor()(prompt))
            b.add("tool_call", text, role="assistant", tool_name=name,
                  tool_use_id=str_value(block.get("id")), model=model, meta=call_meta or None)
        elif btype == "web_search_tool_result":
            b.add("tool_result", blocks_text(block.get("content")), role="tool",
                  tool_name="web_search", tool_use_id=str_value(block.get("tool_use_id")))


def parse_system(obj: dict[str, Any], b: RecordBuilder, out: ParsedLine) -> None:
    subtype = str_value(obj.get("subtype"))
    if subtype in ("compact_boundary", "microcompact_boundary"):
        cm = obj.get("compactMetadata") or obj.get("microcompactMetadata") or {}
        cm = cm if isinstance(cm, dict) else {}
        text = str(obj.get("content") or "Conversation compacted")
        details = ", ".join(f"{k} {v}" for k, v in cm.items() if isinstance(v, (str, int)))
        if details:
            text += f" ({details})"
        meta = {"subtype": subtype, "compact": cm,
                "logical_parent_uuid": str_value(obj.get("logicalParentUuid"))}
        b.add("compaction", text, role="system", meta=meta)
        return
    if subtype in _SYSTEM_NOISE:
        out.ignored = f"system {subtype}"
        return
    content = obj.get("content")
    text = content if isinstance(content, str) else blocks_text(content)
    if DEJA_CONTEXT_MARKER in text:
        out.ignored = "deja's own context"
        return
    if subtype == "api_error" or obj.get("level") == "error":
        error = obj.get("error")
        detail = json_compact(error) if error else ""
        if detail in ("{}", "[]"):
            detail = ""
        text = " ".join(t for t in (text, detail) if t) or "API error"
        if obj.get("retryAttempt") is not None:
            text += f" (retry {obj.get('retryAttempt')} of {obj.get('maxRetries')})"
        b.add("error", text, role="system", meta={"subtype": subtype})
        return
    b.add("system", text, role="system", meta={"subtype": subtype} if subtype else None)


def parse_attachment(obj: dict[str, Any], b: RecordBuilder, out: ParsedLine) -> None:
    att = obj.get("attachment")
    if not isinstance(att, dict):
        out.ignored = "attachment without body"
        return
    atype = str_value(att.get("type")) or "?"
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
            parts.append(value if isinstance(value, str) else json_compact(value))
    text = "\n".join(parts)
    if DEJA_CONTEXT_MARKER in text:
        out.ignored = "deja's own context"
        return
    b.add("attachment", text, role="system", meta={"attachment": atype})
