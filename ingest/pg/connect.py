"""Opening one PostgreSQL connection, and saying why it failed without a password.

libpq reads the credentials: from the URL, PGPASSFILE (~/.pgpass) or the PG*
environment variables, and TLS from `sslmode` and friends, exactly as psql
does. Every failure becomes a DatabaseError of one line that names the server
by its URL without the password, and any password the message might echo is
masked (the URL's and PGPASSWORD's).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..config import PostgresUrl
from ..errors import DatabaseError

if TYPE_CHECKING:
    import psycopg

__all__ = ["connect", "describe", "require_psycopg", "APPLICATION_PREFIX"]

# application_name of deja's sessions: "deja <client pid>" (lock.py reads the pid back).
APPLICATION_PREFIX = "deja "
# Seconds to wait for a server that does not answer, unless the URL or PGCONNECT_TIMEOUT says.
CONNECT_TIMEOUT_S = 10


def require_psycopg() -> None:
    """Import psycopg; raises DatabaseError when it (the `postgres` extra) is not installed.

    psycopg sets its logger to WARNING when nobody has set it, which would print
    its "error ignored" notes on stderr beside our one-line message when a
    connection is lost: left unset, it follows deja's logging (quiet unless -v).
    """
    logger = logging.getLogger("psycopg")
    unset = "psycopg" not in sys.modules and logger.level == logging.NOTSET
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise DatabaseError(
            "the PostgreSQL engine needs psycopg: pip install 'deja[postgres]'") from exc
    if unset:
        logger.setLevel(logging.NOTSET)


async def connect(target: PostgresUrl, environ: Mapping[str, str]) -> psycopg.AsyncConnection:
    """An autocommit connection to `target` (transactions are explicit, store.py).

    Raises DatabaseError: psycopg missing, server unreachable, authentication failed.
    """
    require_psycopg()
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(target.url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"{target.origin} is not a valid PostgreSQL URL ({target}): "
                            f"{describe(exc, target, environ)}") from exc
    extra: dict[str, str | int] = {"application_name": f"{APPLICATION_PREFIX}{os.getpid()}"}
    if "connect_timeout" not in params and not environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return await psycopg.AsyncConnection.connect(make_conninfo(target.url, **extra),
                                                     autocommit=True)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL at {target}: "
                            f"{describe(exc, target, environ)}") from exc


def describe(exc: BaseException, target: PostgresUrl, environ: Mapping[str, str]) -> str:
    """The server's or libpq's message on one line, with any known password masked."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    for prefix in ("connection failed: ", "consuming input failed: "):
        text = text.removeprefix(prefix)
    for secret in (target.password, environ.get("PGPASSWORD")):
        for form in {secret, quote(secret or "", safe="")} if secret else ():
            text = text.replace(form, "***")
    return text or type(exc).__name__
