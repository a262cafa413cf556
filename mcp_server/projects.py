"""Which project "current" means: the one the Claude Code session runs in.

Claude Code sets CLAUDE_PROJECT_DIR for the servers it starts; otherwise the
working directory is used. A git worktree is mapped to its main repository so
that memories and history of all worktrees of one repo are found together.
Reading `.git` files directly avoids spawning git at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["current_project", "main_worktree"]


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
