"""A project's identity across machines: the git remote of the folder a session ran in.

Claude Code names a project after its path (`-home-alice-src-deja`), and
the same repository checked out on two machines, or in two folders of one,
has two paths. What they share is where they were cloned from, so deja
keys a project by its remote, normalized so that the forms git accepts for
one repository give one key:

    git@github.com:Org/Repo.git          -> github.com/org/repo
    https://token@github.com/org/repo    -> github.com/org/repo
    ssh://git@github.com:22/org/repo.git -> github.com/org/repo

- user names, passwords and tokens are dropped (a key is stored and shared:
  it must never carry a credential), so are the port and a trailing `.git`;
- the key is lower case: GitHub, GitLab and Bitbucket treat owner and
  repository names without regard to case, and two clones spelled
  differently are one repository;
- a remote that is a local path (`/srv/git/x.git`, `file://...`) names no
  repository another machine can share: no key.

The remote is read from the repository's own `config` file (remote `origin`,
else the first remote there), found by walking up from the folder: a
subfolder maps to its repository, and a linked worktree (`.git` a file
pointing into `<main>/.git/worktrees/<name>`) to the main repository's
config through its `commondir`. Reading two small files costs far less than
spawning git once per session; what git itself would add (includes,
`insteadOf` rewrites) is not applied. Answers are cached per folder for a
few minutes, so a run asks the file system once per folder and a long
`deja watch` still sees a remote added later.

Runs where the files are (at ingest, and for `project="current"`), never on
another machine's paths.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["normalize_remote", "remote_url", "project_key", "clear_cache"]

# scp-like syntax: [user@]host:path, the host without a slash (git's own rule).
_SCP = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>.+)$")
_SECTION = re.compile(r'^\s*\[\s*remote\s+"(?P<name>(?:[^"\\]|\\.)*)"\s*\]\s*$')
_ANY_SECTION = re.compile(r"^\s*\[")
_URL = re.compile(r"^\s*url\s*=\s*(?P<value>.*?)\s*$", re.IGNORECASE)
_CACHE_SECONDS = 300.0

_cache: dict[str, tuple[float, str | None]] = {}
_lock = threading.Lock()


def normalize_remote(url: str | None) -> str | None:
    """`url` as a project key (`host/owner/repo`, lower case, no credentials), or None for a
    local path or something that is not a remote."""
    url = (url or "").strip()
    if not url:
        return None
    if "://" in url:
        try:
            parts = urlsplit(url)
            host = parts.hostname  # no user, password or port; lower case
        except ValueError:
            return None
        if parts.scheme.lower() == "file" or not host:
            return None
        path = parts.path
    else:
        m = _SCP.match(url)
        # "C:/x" is a Windows path, not a host "C"; a path with no host is local.
        if not m or len(m.group("host")) == 1 or url.startswith(("/", ".", "~")):
            return None
        host, path = m.group("host").lower(), m.group("path")
    path = path.strip("/")
    if path.lower().endswith(".git"):
        path = path[:-4].rstrip("/")
    if not path:
        return None
    return f"{host}/{path}".lower()


def _git_dir(folder: Path) -> Path | None:
    """The git directory of the repository containing `folder`, the main one for a linked
    worktree (where the remotes are configured), or None outside a work tree."""
    for d in (folder, *folder.parents):
        dot_git = d / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            try:
                line = dot_git.read_text(errors="replace").strip()
            except OSError:
                return None
            if not line.startswith("gitdir:"):
                return None
            gitdir = Path(line[len("gitdir:"):].strip())
            if not gitdir.is_absolute():
                gitdir = d / gitdir
            common = gitdir / "commondir"
            try:
                shared = Path(common.read_text(errors="replace").strip())
            except OSError:
                return gitdir  # a submodule's own git dir holds its config
            return shared if shared.is_absolute() else (gitdir / shared)
    return None


def _remote_in_config(text: str) -> str | None:
    """The url of remote `origin` in a git config file's text, else of its first remote."""
    section: str | None = None
    first: str | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            section = m.group("name")
            continue
        if _ANY_SECTION.match(line):
            section = None
            continue
        u = _URL.match(line) if section is not None else None
        if u and section is not None:
            value = u.group("value").split(" #")[0].split(" ;")[0].strip().strip('"')
            if section == "origin":
                return value
            first = first or value
    return first


def remote_url(folder: str | Path) -> str | None:
    """The remote url (as configured, credentials and all: never store it) of the git work
    tree containing `folder`; None when it is no work tree, has no remote or cannot be read."""
    try:
        gitdir = _git_dir(Path(folder))
        if gitdir is None:
            return None
        return _remote_in_config((gitdir / "config").read_text(errors="replace"))
    except OSError:
        return None


def project_key(folder: str | None) -> str | None:
    """The project key of the repository containing `folder` on this machine (cached a few
    minutes per folder), None when there is none."""
    if not folder or (not folder.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", folder)):
        return None
    now = time.monotonic()
    with _lock:
        hit = _cache.get(folder)
    if hit is not None and now - hit[0] < _CACHE_SECONDS:
        return hit[1]
    key = normalize_remote(remote_url(folder))
    with _lock:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[folder] = (now, key)
    return key


def clear_cache() -> None:
    """Forget the cached answers (tests that change a repository's remote)."""
    with _lock:
        _cache.clear()
