"""Finding transcript files under the Claude Code project roots.

A root is a folder laid out like `~/.claude/projects`: one folder per project,
session files in it, subagent files beside or below them. The layout of a file
is read from its path (FORMAT.md, "Subagents, by version"):

    <project>/<session>.jsonl                                   session
    <project>/agent-<id>.jsonl                                  legacy_agent (2.0.x)
    <project>/<session>/subagents/agent-<id>.jsonl              subagent (2.1.2+)
    <project>/<session>/subagents/workflows/<wf>/agent-<id>.jsonl   workflow_agent
    <project>/<session>/subagents/workflows/<wf>/journal.jsonl  journal

Paths stay `str` with surrogate escapes so that file names which are not UTF-8
still open; folders and files that cannot be read are reported, not fatal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SourceFile", "Discovery", "discover", "session_files", "default_roots", "display_path"]

logger = logging.getLogger(__name__)


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable form of a path whose bytes may not be UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SourceFile:
    path: str
    project_dir: str
    layout: str
    session_hint: str | None
    agent_id: str | None
    meta: Mapping[str, Any] | None = None  # agent-<id>.meta.json, when present


@dataclass
class Discovery:
    files: list[SourceFile] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def default_roots(environ: Mapping[str, str], home: Path | None = None) -> list[Path]:
    """The roots Claude Code writes to: ~/.claude/projects and $CLAUDE_CONFIG_DIR/projects.

    `CLAUDE_CONFIG_DIR` may hold a comma-separated list; XDG_CONFIG_HOME/claude
    is used by some installs. Only the environment passed in is read.
    """
    home = home or Path(environ.get("HOME") or Path.home())
    roots: list[Path] = [home / ".claude" / "projects"]
    for part in (environ.get("CLAUDE_CONFIG_DIR") or "").split(","):
        if part.strip():
            roots.append(Path(part.strip()).expanduser() / "projects")
    xdg = environ.get("XDG_CONFIG_HOME")
    roots.append((Path(xdg) if xdg else home / ".config") / "claude" / "projects")
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def _classify(rel_parts: tuple[str, ...]) -> tuple[str, str | None, str | None] | None:
    """(layout, session_hint, agent_id) from a path relative to the project folder."""
    name = rel_parts[-1]
    stem = name[: -len(".jsonl")]
    if len(rel_parts) == 1:
        if stem.startswith("agent-"):
            return "legacy_agent", None, stem[len("agent-"):]
        return "session", stem, None
    if len(rel_parts) == 3 and rel_parts[1] == "subagents" and stem.startswith("agent-"):
        return "subagent", rel_parts[0], stem[len("agent-"):]
    if len(rel_parts) == 5 and rel_parts[1:3] == ("subagents", "workflows"):
        if stem == "journal":
            return "journal", rel_parts[0], None
        if stem.startswith("agent-"):
            return "workflow_agent", rel_parts[0], stem[len("agent-"):]
    # An unknown place: read it as a session-like file rather than lose it.
    return "session", rel_parts[0] if len(rel_parts) > 1 else stem, None


def _read_meta(path: str, errors: list[tuple[str, str]]) -> Mapping[str, Any] | None:
    meta_path = path[: -len(".jsonl")] + ".meta.json"
    try:
        with open(meta_path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        errors.append((display_path(meta_path), f"unreadable meta file: {exc}"))
        return None
    return data if isinstance(data, dict) else None


def discover(roots: Iterable[Path]) -> Discovery:
    """Every transcript file under the roots, sorted by path (deterministic order)."""
    found = Discovery()
    for root in roots:
        _walk(str(root), found)
    found.files.sort(key=lambda f: os.fsencode(f.path))
    return found


def session_files(transcript: Path) -> Discovery:
    """One session's files: `transcript` (`<root>/<project>/<session>.jsonl`, as a hook
    names it) and its subagents' (`<root>/<project>/<session>/subagents/...`), sorted.
    A transcript that does not exist gives no files."""
    found = Discovery()
    path = str(transcript)
    if not path.endswith(".jsonl") or not os.path.isfile(path):
        return found
    project = os.path.dirname(path)
    project_dir = display_path(os.path.basename(project))
    stem = os.path.basename(path)[: -len(".jsonl")]
    layout, session_hint, agent_id = _classify((os.path.basename(path),)) or ("session", None, None)
    found.files.append(SourceFile(path=path, project_dir=project_dir, layout=layout,
                                  session_hint=display_path(session_hint) if session_hint else None,
                                  agent_id=agent_id))
    _walk(os.path.dirname(project), found, only=os.path.join(project, stem, "subagents"))
    found.files.sort(key=lambda f: os.fsencode(f.path))
    return found


def _walk(root_s: str, found: Discovery, only: str | None = None) -> None:
    """Add the transcript files under `root_s` (or only under its folder `only`)."""
    start = only or root_s
    if not os.path.isdir(start):
        return

    # root_s bound now: os.walk calls this only while walking this root.
    def onerror(exc: OSError, root_s: str = root_s) -> None:
        found.errors.append((display_path(exc.filename or root_s), f"unreadable folder: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(start, onerror=onerror):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root_s)
        if rel_dir == ".":
            continue  # files directly in the root belong to no project
        parts = tuple(Path(rel_dir).parts)
        if "tool-results" in parts:
            continue
        for name in sorted(filenames):
            if not name.endswith(".jsonl"):
                continue
            rel = (*parts[1:], name)
            layout, session_hint, agent_id = _classify(rel) or ("session", None, None)
            # Ids read from a name that is not UTF-8 keep surrogate escapes,
            # which SQLite cannot store: make them printable like the path.
            session_hint = display_path(session_hint) if session_hint else session_hint
            agent_id = display_path(agent_id) if agent_id else agent_id
            path = os.path.join(dirpath, name)
            meta = _read_meta(path, found.errors) if layout in ("subagent", "workflow_agent") else None
            found.files.append(SourceFile(
                path=path,
                project_dir=display_path(parts[0]),
                layout=layout,
                session_hint=session_hint,
                agent_id=agent_id,
                meta=meta,
            ))
