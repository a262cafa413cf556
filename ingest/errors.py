"""Named errors of deja.

Every failure a user can cause or meet (a bad path, a locked database, a model
that will not load) is a `DejaError` subclass, so that each edge (the CLI, the
MCP tools) can turn it into a clear message instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "DejaError",
    "DatabaseError",
    "DatabaseLocked",
    "SchemaTooNew",
    "ModelUnavailable",
    "ModelMismatch",
    "InvalidQuery",
    "NotFound",
    "IngestBusy",
    "ConfigError",
]


class DejaError(Exception):
    """Base class: a failure with a message meant for a person."""


class DatabaseError(DejaError):
    """The database file cannot be opened, created or migrated."""


class DatabaseLocked(DatabaseError):
    """Another process held the database longer than our busy timeout."""


class SchemaTooNew(DatabaseError):
    """The file was written by a newer deja; we refuse to touch it."""


class ModelUnavailable(DejaError):
    """The embedding model cannot be found or loaded."""


class ModelMismatch(DejaError):
    """The database holds vectors of another model than the one configured."""


class InvalidQuery(DejaError):
    """A search argument (filter, date, limit) cannot be understood."""


class NotFound(DejaError):
    """A record, session or memory asked for by id does not exist."""


class IngestBusy(DejaError):
    """Another process holds the ingest lock longer than we may wait."""


class ConfigError(DejaError):
    """The settings file (ingest/settings.py) is not valid TOML or holds a bad value."""
