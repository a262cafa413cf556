"""Message content read as text: content blocks, tool outputs, compact JSON. Pure.

Claude Code stores a message's content as a string or as a list of blocks
(text, image, document, tool_result...), and a tool's output sometimes only in
the line's `toolUseResult`. These helpers turn such JSON values into the text
deja indexes, the same way wherever a line type carries them (FORMAT.md has
the shapes). No file, no database, no redaction: the record builder redacts.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "blocks_text",
    "json_compact",
    "str_value",
    "command_kind",
    "with_persisted_output",
    "PERSISTED_OUTPUT_TAG",
]

# Claude Code's notice that a large tool output was spilled to a file.
PERSISTED_OUTPUT_TAG = "<persisted-output>"


def json_compact(value: Any) -> str:
    """`value` as one line of JSON, non-ASCII kept, anything unknown as its str()."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def str_value(value: Any) -> str | None:
    """`value` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def blocks_text(content: Any) -> str:
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
    return json_compact(content)


def command_kind(text: str) -> str:
    """"command" for a user line that is a slash command, shell escape or their output, else
    "prompt" (what the user typed)."""
    head = text.lstrip()[:40]
    if head.startswith(("<command-name>", "<command-message>", "<local-command-stdout>",
                        "<local-command-stderr>", "<bash-input>", "<bash-stdout>",
                        "<bash-stderr>", "<local-command-caveat>")):
        return "command"
    return "prompt"


def with_persisted_output(text: str, tur: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
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
    spilled: dict[str, Any] = {k: tur[k] for k in ("persistedOutputPath", "persistedOutputSize") if k in tur}
    head = text.split("Preview (first", 1)[0].rstrip()
    if len(fuller) <= len(text) - len(head):
        return text, spilled or None
    return f"{head}\n\nOutput:\n{fuller}", spilled or None
