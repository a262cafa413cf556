"""The optional settings file: projects kept out, and what the hooks inject.

One TOML file, `$DEJA_CONFIG` or `~/.config/deja/config.toml`
(`config.config_path_from`); a missing file means the defaults. Read at the
edges (the ingest command, the server, `deja hook`) and passed down as a
`Settings`, so library functions never look for it themselves.

    exclude = ["~/clients/acme", "/srv/secret-*", "**/scratch"]

    [hooks]
    context_chars = 2000   # what session-start injects, at most (hard cap 10,000)

`exclude` holds project paths or globs, matched against the working directory
a transcript was written in (a path covers its subfolders) and against the
folder Claude Code names after it: a matching project is not ingested, and the
hooks do nothing for it. Records ingested before a project was excluded stay.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = ["Settings", "Exclusions", "load_settings", "DEFAULT_CONTEXT_CHARS", "MAX_CONTEXT_CHARS"]

DEFAULT_CONTEXT_CHARS = 2000
# Claude Code replaces a SessionStart context over 10,000 characters by a preview.
MAX_CONTEXT_CHARS = 10_000
_GLOB = re.compile(r"[*?\[]")


def _folder_name(path: str) -> str:
    """Claude Code's folder for a path (ingest does not import mcp_server.projects)."""
    return re.sub(r"[^A-Za-z0-9*?\[\]]", "-", path)


class Exclusions:
    """The `exclude` patterns, expanded once: `~` and trailing slashes resolved."""

    def __init__(self, patterns: Sequence[str], home: Path | None = None) -> None:
        home_s = str(home or Path.home())
        self.patterns: tuple[str, ...] = tuple(
            (home_s + p[1:] if p.startswith("~") else p).rstrip("/\\") or "/"
            for p in patterns if p.strip())

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excludes_path(self, cwd: str | None) -> bool:
        """True when `cwd` is an excluded path, inside one, or matches an excluded glob."""
        if not cwd or not self.patterns:
            return False
        cwd = cwd.rstrip("/\\") or "/"
        for pattern in self.patterns:
            if _GLOB.search(pattern):
                # A glob matches the folder or one of its parents (so `~/x/*` covers x/a/b).
                folder = cwd
                while True:
                    if fnmatch.fnmatchcase(folder, pattern):
                        return True
                    parent = os.path.dirname(folder)
                    if parent == folder:
                        break
                    folder = parent
            elif cwd == pattern or cwd.startswith(pattern + "/") or cwd.startswith(pattern + "\\"):
                return True
        return False

    def excludes_folder(self, project_dir: str) -> bool:
        """True when `project_dir` (Claude Code's folder name) is the one of an excluded
        path, or matches an excluded glob written as a folder name. Folder names are lossy,
        so this is the exact test only; the cwd test (`excludes_path`) covers the rest."""
        return any(fnmatch.fnmatchcase(project_dir, _folder_name(p)) for p in self.patterns)


@dataclass(frozen=True)
class Settings:
    exclude: Exclusions
    context_chars: int = DEFAULT_CONTEXT_CHARS
    path: Path | None = None  # the file read, if any


def _strings(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of paths or globs")
    return value


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in `path` (the defaults when it does not exist).

    Raises ConfigError when the file is unreadable, not TOML, or holds a bad value.
    """
    home = Path((environ or {}).get("HOME") or Path.home())
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings(exclude=Exclusions((), home))
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the settings file {path} is not valid TOML: {exc}") from exc
    exclude = Exclusions(_strings(data.get("exclude", []), f"{path}: exclude"), home)
    hooks = data.get("hooks", {})
    if not isinstance(hooks, dict):
        raise ConfigError(f"{path}: [hooks] must be a table")
    chars = hooks.get("context_chars", DEFAULT_CONTEXT_CHARS)
    if not isinstance(chars, int) or isinstance(chars, bool) or chars < 0:
        raise ConfigError(f"{path}: hooks.context_chars must be a whole number of characters")
    return Settings(exclude=exclude, context_chars=min(chars, MAX_CONTEXT_CHARS), path=path)
