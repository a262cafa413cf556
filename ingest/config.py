"""Where deja keeps its data, read from the environment at the edges only.

Library functions take paths as arguments; the CLI and the server call these
helpers once, with `os.environ`, and pass the results down.

The database is one SQLite file. A `--db` (or `DEJA_DB`) that looks like a URL
(`postgresql://...`) is refused here, where every command resolves its path:
taken as a path it would create a folder named `postgresql:` in the working
directory. URLs get a meaning with the team-memory storage engine.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import DatabaseError

__all__ = ["default_data_dir", "default_db_path", "db_path_from", "database_bytes",
           "default_config_path", "config_path_from"]

# scheme://... as in RFC 3986 (a letter, then letters, digits, + - .). A Windows
# drive (C:\...) has no "//" after its colon, so it stays a path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The per-user data folder: XDG on Linux, Application Support on macOS."""
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "deja"
    if sys.platform == "win32":
        base = environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / "deja"
    xdg = environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "deja"


def default_db_path(environ: Mapping[str, str]) -> Path:
    return default_data_dir(environ) / "deja.db"


def db_path_from(option: str | None, environ: Mapping[str, str]) -> Path:
    """The database to use: the --db option, else $DEJA_DB, else the default.

    Raises DatabaseError when the value looks like a URL (scheme://...): only
    SQLite files are supported for now, and nothing is created for it.
    """
    for source, value in (("--db", option), ("DEJA_DB", environ.get("DEJA_DB"))):
        if not value:
            continue
        if _URL.match(value):
            raise DatabaseError(
                f"{source} {value!r} looks like a URL; deja keeps its memory in a SQLite file "
                "for now: pass the path of a file"
            )
        return Path(value).expanduser()
    return default_db_path(environ)


def default_config_path(environ: Mapping[str, str]) -> Path:
    """The settings file: `$XDG_CONFIG_HOME/deja/config.toml`, else ~/.config/deja/config.toml
    (%APPDATA%\\deja\\config.toml on Windows). It is optional (ingest/settings.py)."""
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "win32" and environ.get("APPDATA"):
        return Path(environ["APPDATA"]) / "deja" / "config.toml"
    xdg = environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else home / ".config") / "deja" / "config.toml"


def config_path_from(environ: Mapping[str, str]) -> Path:
    """The settings file to read: $DEJA_CONFIG, else `default_config_path`."""
    value = environ.get("DEJA_CONFIG")
    return Path(value).expanduser() if value else default_config_path(environ)


def database_bytes(path: Path) -> int:
    """The space the database takes on disk: the file plus its -wal and -shm.

    One measure for `deja stats` and the memory_status tool (field
    `database_bytes`): the write-ahead log can hold megabytes not yet
    checkpointed into the main file. Missing files count 0.
    """
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(str(path) + suffix).st_size
        except OSError:
            pass
    return total
