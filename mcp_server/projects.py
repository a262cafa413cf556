"""What a `project` argument means: every project rule of deja in one place.

Three questions, asked by the tools, the CLI and search alike:
- which project is "current": the one the Claude Code session runs in.
  Claude Code sets CLAUDE_PROJECT_DIR for the servers it starts; otherwise
  the working directory is used. A git worktree is mapped to its main
  repository so that memories and history of all worktrees of one repo are
  found together. Reading `.git` files directly avoids spawning git at
  start-up (`current_project`, `main_worktree`, `expand_project_arg`);
- which project folders a path or name covers (`resolve_project`): the
  filter search and the session list apply;
- what the tools do with "current" when it has no history yet: search all
  projects and say so (`project_filter`), or, for a new memory, file it
  under the folder Claude Code would name after it (`memory_project`).

One repository is one project wherever it is checked out. The ingest stores
each session's project key, the normalized git remote of its folder
(ingest/gitremote.py: `github.com/org/repo`), and `resolve_project` widens
the folders a path or name matches to every folder whose sessions share
their key, or the key of the path itself on this machine. So on a shared
PostgreSQL database `project="current"` finds a teammate's sessions of the
same repository under their path, and on one machine two clones of one
repository (or a fork's clone with the same origin) are one project too. A
folder without a remote keeps its path as its only identity; a key itself
(`github.com/org/repo`) is a project argument as well.

The SQL runs on both engines (aiosqlite and ingest.pg.sqlconn.PgConn).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import aiosqlite

from ingest.gitremote import project_key

__all__ = [
    "claude_project_dir", "current_project", "expand_project_arg", "main_worktree",
    "memory_project", "project_filter", "resolve_project",
]


def claude_project_dir(path: str) -> str:
    """Claude Code's folder name for a project path (every non-alphanumeric becomes '-')."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def main_worktree(path: Path) -> Path:
    """The main working tree of the git repository containing `path` (or `path` itself)."""
    path = path.resolve()
    for folder in (path, *path.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return folder
        if dot_git.is_file():
            try:
                line = dot_git.read_text(errors="replace").strip()
            except OSError:
                return folder
            if not line.startswith("gitdir:"):
                return folder
            gitdir = Path(line[len("gitdir:"):].strip())
            if not gitdir.is_absolute():
                gitdir = (folder / gitdir).resolve()
            # <main>/.git/worktrees/<name>  ->  <main>
            if gitdir.parent.name == "worktrees" and gitdir.parent.parent.name == ".git":
                return gitdir.parent.parent.parent
            return folder
    return path


def current_project(environ: Mapping[str, str], cwd: Path | None = None) -> str:
    """The path of the current project: CLAUDE_PROJECT_DIR or the cwd, worktrees mapped."""
    base = environ.get("CLAUDE_PROJECT_DIR") or str(cwd or os.getcwd())
    return str(main_worktree(Path(base)))


def expand_project_arg(project: str | None,
                       environ: Mapping[str, str] | None = None) -> str | None:
    """A person's `--project` as a path: `.`, `..`, `./x`, `../x` and `~/x` become the
    main worktree of that folder, `current` the current project (`current_project` of
    `environ`, the process's by default); anything else (a path, a folder name, 'all') is
    kept."""
    if project and project.strip().lower() == "current":
        return current_project(os.environ if environ is None else environ)
    if project and (project in (".", "..") or project.startswith(("./", "../", "~"))):
        return str(main_worktree(Path(project).expanduser()))
    return project


async def resolve_project(conn: aiosqlite.Connection, project: str | None) -> list[str] | None:
    """The project folders a `project` argument means: None for all projects.

    A path matches sessions whose cwd is that path or inside it (so a repo
    root covers its subfolders), and the folder Claude Code names after it; a
    bare name matches a project folder exactly. Then the project widens to
    every folder of the same repository (the module docstring): the folders
    of sessions whose project key is that of a matched folder's sessions, of
    the path's own git remote here, or the argument itself. Unknown projects
    give [] (no hits), not an error: the history may simply not have it yet.
    """
    if project is None or project.strip().lower() in ("", "all", "*"):
        return None
    p = project.strip().rstrip("/") or "/"
    dirs = await _path_dirs(conn, p)
    keys = await _keys(conn, p, dirs)
    if keys:
        rows = await conn.execute_fetchall(
            "SELECT DISTINCT project_dir FROM sessions WHERE project_dir IS NOT NULL AND "
            f"project_key IN ({_marks(keys)})", tuple(sorted(keys)))
        dirs.update(r[0] for r in rows)
    return sorted(dirs)


async def _path_dirs(conn: aiosqlite.Connection, p: str) -> set[str]:
    """The folders a path or folder name matches on its own (no widening by key)."""
    like = p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
    # The project at that path and those below it (a parent folder of several).
    rows = await conn.execute_fetchall(
        "SELECT DISTINCT project_dir FROM sessions WHERE project_dir IS NOT NULL AND "
        "(project_dir = ? OR project_dir = ? OR cwd = ? OR cwd LIKE ? ESCAPE '\\')",
        (p, claude_project_dir(p), p, like),
    )
    dirs = {r[0] for r in rows}
    if not dirs and p.startswith("/"):
        # A folder inside a project (`--project .` from a subfolder): the
        # nearest enclosing project.
        enclosing = list(await conn.execute_fetchall(
            "SELECT project_dir, cwd FROM sessions WHERE project_dir IS NOT NULL AND "
            "cwd IS NOT NULL AND cwd != '/' AND substr(?, 1, length(cwd) + 1) = cwd || '/' "
            "ORDER BY length(cwd) DESC", (p,)))
        if enclosing:
            longest = len(enclosing[0][1])
            dirs = {r[0] for r in enclosing if len(r[1]) == longest}
    rows = await conn.execute_fetchall(
        "SELECT DISTINCT project_dir FROM sources WHERE project_dir = ? OR project_dir = ?",
        (p, claude_project_dir(p)),
    )
    dirs.update(r[0] for r in rows)
    return dirs


async def _keys(conn: aiosqlite.Connection, p: str, dirs: set[str]) -> set[str]:
    """The project keys (git remotes) a project argument stands for: its matched folders'
    sessions', its own remote when it is a folder of this machine, or itself as a key."""
    keys: set[str] = set()
    if dirs:
        rows = await conn.execute_fetchall(
            "SELECT DISTINCT project_key FROM sessions WHERE project_key IS NOT NULL AND "
            f"project_dir IN ({_marks(dirs)})", tuple(sorted(dirs)))
        keys.update(r[0] for r in rows)
    here = project_key(p) if p.startswith("/") else None
    if here:
        keys.add(here)
    elif not p.startswith("/") and "/" in p:
        keys.add(p.lower())  # github.com/org/repo: found only if some session has it
    return keys


def _marks(values: set[str]) -> str:
    return ", ".join("?" for _ in values)


def _is_current(project: str | None) -> bool:
    return project is None or project.strip().lower() == "current"


async def project_filter(conn: aiosqlite.Connection, current: str,
                         project: str | None) -> tuple[str | None, list[str]]:
    """The project filter a tool applies, and notes for the agent.

    None or "current" means `current`, or all projects (None, with a note
    saying so) while `current` has no history yet; anything else is kept.
    """
    if not _is_current(project):
        return project, []
    if not await resolve_project(conn, current):
        return None, [f"the current project ({current}) has no history yet; "
                      "searched all projects"]
    return current, []


async def memory_project(conn: aiosqlite.Connection, current: str,
                         project: str | None) -> tuple[str, str | None]:
    """(project folder, cwd) to file a new memory under.

    A project with history keeps its folder; a new one gets the folder name
    Claude Code will give it, so its sessions find the memory later. The cwd
    is the project's path when one was given.
    """
    path = current if _is_current(project) else (project or "").strip()
    # This machine's folder of the project, not a teammate's of the same repository.
    everywhere = path.lower() in ("", "all", "*")
    dirs = [] if everywhere else sorted(await _path_dirs(conn, path.rstrip("/") or "/"))
    return (dirs[0] if dirs else claude_project_dir(path)), \
        path if path.startswith("/") else None
