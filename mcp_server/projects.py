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
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import aiosqlite

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


def expand_project_arg(project: str | None) -> str | None:
    """A person's `--project` as a path: `.`, `..`, `./x`, `../x` and `~/x` become the
    main worktree of that folder; anything else (a path, a folder name, 'all') is kept."""
    if project and (project in (".", "..") or project.startswith(("./", "../", "~"))):
        return str(main_worktree(Path(project).expanduser()))
    return project


async def resolve_project(conn: aiosqlite.Connection, project: str | None) -> list[str] | None:
    """The project folders a `project` argument means: None for all projects.

    A path matches sessions whose cwd is that path or inside it (so a repo
    root covers its subfolders), and the folder Claude Code names after it; a
    bare name matches a project folder exactly. Unknown projects give [] (no
    hits), not an error: the history may simply not have it yet.
    """
    if project is None or project.strip().lower() in ("", "all", "*"):
        return None
    p = project.strip().rstrip("/") or "/"
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
    return sorted(dirs)


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
    dirs = await resolve_project(conn, path) or [claude_project_dir(path)]
    return dirs[0], path if path.startswith("/") else None
