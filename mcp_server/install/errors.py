"""The one error of install and uninstall.

Kept beside the installer rather than in `ingest.errors`: only the `deja install`
and `deja uninstall` edges meet it, and the CLI maps it like any `DejaError`.
"""

from __future__ import annotations

from ingest.errors import DejaError

__all__ = ["InstallError"]


class InstallError(DejaError):
    """A settings file cannot be read or changed safely; nothing was written."""
