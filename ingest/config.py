"""Where deja keeps its data, read from the environment at the edges only.

Library functions take paths as arguments; the CLI and the server call these
helpers once, with `os.environ`, and pass the results down.

The database is one SQLite file by default. A `--db` (or `DEJA_DB`) of
`postgresql://...` (or `postgres://...`) selects the PostgreSQL engine (team
memory, ingest/pg/): `database_from` returns it as a `PostgresUrl`, which
knows how to show itself without its password. `db_path_from` is what the
commands the PostgreSQL engine does not serve yet call: it refuses such a URL
with one line naming it, and any other URL too (taken as a path it would
create a folder named `postgresql:` in the working directory).

The machine a record comes from (`DEJA_MACHINE`, else the host name) is read
here too, for the PostgreSQL engine, where several machines share one database.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import DatabaseError

__all__ = ["default_data_dir", "default_db_path", "db_path_from", "database_from", "PostgresUrl",
           "machine_from", "not_served_message", "database_bytes", "default_config_path", "config_path_from"]

# scheme://... as in RFC 3986 (a letter, then letters, digits, + - .). A Windows
# drive (C:\...) has no "//" after its colon, so it stays a path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_POSTGRES = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


@dataclass(frozen=True)
class PostgresUrl:
    """A PostgreSQL connection URL as given (`url`, handed to libpq as is) and where it came
    from (`origin`: "--db" or "DEJA_DB"). `str()` is the URL without its password, for
    every message and log: the password never leaves `url`."""

    url: str
    origin: str = "--db"

    @property
    def password(self) -> str | None:
        """The password written in the URL (user:PASSWORD@ or ?password=), if any."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            return unquote(userinfo.partition(":")[2]) or None
        return dict(parse_qsl(parts.query)).get("password") or None

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}{at}{hosts}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"], safe="/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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


def database_from(option: str | None, environ: Mapping[str, str]) -> Path | PostgresUrl:
    """The database to use: the --db option, else $DEJA_DB, else the default file.

    A postgresql:// (or postgres://) URL is a PostgresUrl. Raises DatabaseError
    for any other URL (scheme://...): nothing is created for it.
    """
    for source, value in (("--db", option), ("DEJA_DB", environ.get("DEJA_DB"))):
        if not value:
            continue
        if _POSTGRES.match(value):
            return PostgresUrl(value, source)
        if _URL.match(value):
            raise DatabaseError(
                f"{source} {value!r} looks like a URL; deja keeps its memory in a SQLite file "
                "or a PostgreSQL database (postgresql://...): pass the path of a file"
            )
        return Path(value).expanduser()
    return default_db_path(environ)


def db_path_from(option: str | None, environ: Mapping[str, str], *,
                 command: str | None = None) -> Path:
    """The SQLite database to use, for a command the PostgreSQL engine does not serve yet.

    Raises DatabaseError for a URL: a PostgreSQL one gets one line saying that
    `command` is not served on PostgreSQL yet (the URL shown without its password).
    """
    target = database_from(option, environ)
    if isinstance(target, PostgresUrl):
        raise DatabaseError(not_served_message(target, command))
    return target


def not_served_message(target: PostgresUrl, command: str | None) -> str:
    """Why a command without a PostgreSQL handler refuses a URL (one line, no password).
    Every command has one today; a new command gets this until it is given one."""
    what = f"`deja {command}`" if command else "this command"
    return (f"{target.origin} is a PostgreSQL URL ({target}): the PostgreSQL engine does not "
            f"serve {what} yet")


def machine_from(environ: Mapping[str, str]) -> str:
    """The name of this machine in a shared database: $DEJA_MACHINE, else the host name."""
    return (environ.get("DEJA_MACHINE") or "").strip() or socket.gethostname() or "unknown"


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
