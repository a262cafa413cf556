"""JSON settings files read and written back in their own layout.

Claude Code's files are JSON written by `JSON.stringify(value, null, 2)`; people
edit them by hand with 4 spaces or tabs, CRLF on Windows, a BOM from Notepad.
An installer that re-serialises the whole file in its own layout would show a
diff of every line and "change" what it has no business changing. So a file's
layout is detected (indent unit, one line or not, line ending, final newline,
`\\uXXXX` escapes, BOM) and the edited data is written back in that layout.
Python's `json.dumps` with the detected indent gives the same bytes as
`JSON.stringify` for everything these files hold, so an edit touches only the
lines it must: adding a key and removing it again gives back the same bytes.

A file whose layout cannot be reproduced (hand-aligned values, `1.0` that
parses to 1) still gets a correct edit, just with more lines in the diff;
`reproducible` tells the caller, and uninstall restores such files from the
backup byte for byte (see plan.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InstallError

__all__ = ["JsonStyle", "JsonFile", "DEFAULT_STYLE", "detect_style", "dumps", "parse", "read"]

_BOM = "\ufeff"
_INDENTED_LINE = re.compile(r"\n([ \t]+)\S")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}")


@dataclass(frozen=True)
class JsonStyle:
    """How a JSON file is laid out: enough to write it back the same way."""

    indent: str | None = "  "  # None: the whole document on one line
    separators: tuple[str, str] = (",", ": ")
    newline: str = "\n"
    final_newline: bool = True
    ensure_ascii: bool = False
    bom: bool = False


# A file deja creates: Claude Code's own layout, with a final newline.
DEFAULT_STYLE = JsonStyle()


@dataclass(frozen=True)
class JsonFile:
    """A JSON object file as found: its exact bytes, its data and its layout."""

    path: Path
    raw: bytes
    data: dict[str, Any]
    style: JsonStyle

    @property
    def reproducible(self) -> bool:
        """True when writing `data` back in `style` gives exactly `raw`."""
        return dumps(self.data, self.style) == self.raw


def detect_style(text: str) -> JsonStyle:
    """The layout of JSON `text` (BOM included, if any)."""
    bom = text.startswith(_BOM)
    body = text[1:] if bom else text
    newline = "\r\n" if "\r\n" in body else "\n"
    final_newline = body.endswith("\n")
    ensure_ascii = not any(ord(ch) > 127 for ch in body) and bool(_UNICODE_ESCAPE.search(body))
    stripped = body.strip()
    indent: str | None
    separators = (",", ": ")
    if "\n" in stripped:
        found = _INDENTED_LINE.search(stripped.replace("\r\n", "\n"))
        ws = found.group(1) if found else "  "
        indent = "\t" if "\t" in ws else ws
    else:
        indent = None
        separators = (", ", ": ")
        try:
            value = json.loads(stripped) if stripped else None
        except ValueError:
            value = None
        for candidate in ((", ", ": "), (",", ":"), (",", ": ")):
            if value is not None and json.dumps(value, separators=candidate,
                                                ensure_ascii=ensure_ascii) == stripped:
                separators = candidate
                break
    return JsonStyle(indent=indent, separators=separators, newline=newline,
                     final_newline=final_newline, ensure_ascii=ensure_ascii, bom=bom)


def dumps(data: Any, style: JsonStyle) -> bytes:
    """`data` as the bytes of a file laid out in `style` (UTF-8)."""
    text = json.dumps(data, indent=style.indent, separators=style.separators,
                      ensure_ascii=style.ensure_ascii)
    if style.final_newline:
        text += "\n"
    if style.newline != "\n":
        text = text.replace("\n", style.newline)
    if style.bom:
        text = _BOM + text
    return text.encode("utf-8")


def parse(path: Path, raw: bytes) -> JsonFile:
    """The JSON object in `raw`, the content of `path`; an empty file is an empty object.

    Raises InstallError when the bytes are not UTF-8, not JSON, or not a JSON object:
    such a file is left exactly as it is.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InstallError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "left unchanged: fix or move it, then run again") from None
    body = text[1:] if text.startswith(_BOM) else text
    if not body.strip():
        return JsonFile(path, raw, {}, DEFAULT_STYLE)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InstallError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}); left unchanged: fix it, then run again") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} holds a JSON {type(data).__name__}, not an object; "
                           "left unchanged")
    return JsonFile(path, raw, data, detect_style(text))


def read(path: Path) -> JsonFile | None:
    """The JSON object file at `path`, or None when there is no file there.

    Raises InstallError as `parse` does, and when the file cannot be read.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse(path, raw)
