"""Writing the user's files safely: backups, atomic replacement, and install's record.

- A backup is taken before any file changes: a new file in deja's data folder
  (`install-backups/`, private), never overwriting an older one.
- A file is replaced atomically (a temporary file beside it, then a rename), with
  its permissions kept; a symlinked settings file (dotfile managers) is written
  through the link, so the link stays.
- The record (`install-state.json` in the data folder) remembers, per file, the
  backup of its content before deja's last change (or that it did not exist) and
  the folders deja created. Uninstall uses it to give back the original bytes
  when nothing else changed in between (plan.py); without it, uninstall still
  removes deja's entries, by their command.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InstallError

__all__ = ["Record", "InstallState", "backup", "write_atomic", "remove_file", "make_parents"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Record:
    """What install did to one file.

    backup: its content before deja first changed it (None: there was no file);
    written: the sha256 of what deja left there, to tell whether anything changed
    since; dirs: the folders deja created for it.
    """

    backup: str | None
    written: str
    dirs: list[str] = field(default_factory=list)


@dataclass
class InstallState:
    """install-state.json: a Record per file path."""

    path: Path
    records: dict[str, Record] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> InstallState:
        """The record at `path`; an empty one when it is missing or unreadable (it is only a help)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            records = {name: Record(r.get("backup"), str(r.get("written", "")),
                                    list(r.get("dirs", [])))
                       for name, r in raw.get("files", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return cls(path)
        return cls(path, records)

    def save(self) -> None:
        data: dict[str, Any] = {"version": 1, "files": {
            name: {"backup": r.backup, "written": r.written, "dirs": r.dirs}
            for name, r in self.records.items()}}
        make_parents(self.path, private=True)
        write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def make_parents(path: Path, private: bool = False) -> list[Path]:
    """Creates the missing folders above `path`; returns those it created, outermost first."""
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700 if private else 0o777)
        except FileExistsError:
            pass
        except OSError as exc:
            raise InstallError(f"cannot create {folder}: {exc.strerror or exc}") from None
    return list(reversed(missing))


def backup(path: Path, raw: bytes, folder: Path, now: datetime | None = None) -> Path:
    """A private copy of `raw` (the content of `path`) in `folder`, under a name of its own."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")
    base = stamp + "-" + _UNSAFE.sub("_", str(path).strip("/\\"))
    make_parents(folder / "x", private=True)
    for n in range(1000):
        target = folder / (base if n == 0 else f"{base}.{n}")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise InstallError(f"cannot back up {path} to {folder}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        return target
    raise InstallError(f"cannot back up {path}: too many backups named {base} in {folder}")


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces the content of `path` with `data` in one step, keeping its permissions."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    tmp = target.with_name(f".{target.name}.deja-{os.getpid()}.tmp")
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None


def remove_file(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InstallError(f"cannot remove {path}: {exc.strerror or exc}") from None
