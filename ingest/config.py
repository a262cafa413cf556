"""Where deja keeps its data, read from the environment at the edges only.

Library functions take paths as arguments; the CLI and the server call these
helpers once, with `os.environ`, and pass the results down.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_data_dir", "default_db_path", "db_path_from"]


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
    """The database to use: the --db option, else $DEJA_DB, else the default."""
    if option:
        return Path(option).expanduser()
    if environ.get("DEJA_DB"):
        return Path(environ["DEJA_DB"]).expanduser()
    return default_db_path(environ)
