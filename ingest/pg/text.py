"""Strings PostgreSQL can store: no NUL character, valid UTF-8.

SQLite stores any Python string; PostgreSQL's text refuses U+0000 and its
JSONB refuses the escape \\u0000, and neither takes a lone surrogate. A
transcript can hold any of them (binary tool output, a broken file name), so
the PostgreSQL writer cleans every string it sends: NUL becomes U+FFFD, as do
surrogates. Text without them (nearly all) passes unchanged.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["clean", "clean_json"]

_REPLACEMENT = "\ufffd"


def clean(value: str | None) -> str | None:
    """`value` with NUL and lone surrogates replaced by U+FFFD (None stays None)."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", _REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join(_REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


def clean_json(meta: dict[str, Any] | None) -> str | None:
    """`meta` as JSON text for a JSONB column (None when empty), its strings cleaned."""
    if not meta:
        return None
    return json.dumps(_clean_value(meta), ensure_ascii=False, separators=(",", ":"))


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): _clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_value(v) for v in value]
    return value
