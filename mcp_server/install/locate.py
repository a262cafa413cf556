"""Where things are: the installed `deja`, the `claude` command, and the files to change.

Everything here is found once, at the CLI's edge, from explicit arguments (the
interpreter, the platform, the environment): the planner never looks around.

The `deja` that hooks and the server run is the console script installed with
the interpreter running this command (bin/deja in a venv on POSIX,
Scripts\\deja.exe on Windows), by absolute path, so it works whatever PATH the
shell of Claude Code has; `shutil.which` only when no script sits there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InstallError

__all__ = ["Target", "deja_executable", "claude_command", "user_target", "project_target",
           "git_toplevel"]


@dataclass(frozen=True)
class Target:
    """The files one scope of install changes.

    settings: the settings file that gets the hooks; mcp_config: the file that gets
    the MCP server (~/.claude.json for the user, .mcp.json for a project);
    claude: the `claude` command that registers the server instead of a direct edit
    of mcp_config (user scope only), or None.
    """

    scope: str
    settings: Path
    mcp_config: Path
    claude: str | None = None


def deja_executable(python: str, windows: bool, environ: Mapping[str, str]) -> str:
    """The absolute path of the `deja` console script installed with `python`.

    Raises InstallError when no deja command can be found.
    """
    name = "deja.exe" if windows else "deja"
    folders = [Path(python).parent]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        folders.append(Path(scripts))
    if windows:
        folders.append(Path(python).parent / "Scripts")
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    found = shutil.which("deja", path=environ.get("PATH"))
    if found:
        return os.path.abspath(found)
    raise InstallError(f"cannot find the deja command next to {python} or on PATH; "
                       "install deja (pip install .) into the environment you run this from")


def claude_command(environ: Mapping[str, str]) -> str | None:
    """The `claude` command on PATH, or None."""
    return shutil.which("claude", path=environ.get("PATH"))


def _claude_dir(home: Path, environ: Mapping[str, str]) -> Path | None:
    value = environ.get("CLAUDE_CONFIG_DIR", "").strip()
    if not value:
        return None
    if "," in value:
        raise InstallError("CLAUDE_CONFIG_DIR names several folders; install writes into the "
                           "one Claude Code uses: run it with CLAUDE_CONFIG_DIR set to that one")
    return Path(value).expanduser()


def user_target(home: Path, environ: Mapping[str, str], claude: str | None) -> Target:
    """The user's files: ~/.claude/settings.json and ~/.claude.json ($CLAUDE_CONFIG_DIR wins)."""
    config_dir = _claude_dir(home, environ)
    if config_dir is None:
        return Target("user", home / ".claude" / "settings.json", home / ".claude.json", claude)
    return Target("user", config_dir / "settings.json", config_dir / ".claude.json", claude)


def git_toplevel(cwd: Path) -> Path:
    """The top folder of the git work tree holding `cwd`.

    Raises InstallError outside a git work tree, or without git.
    """
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=str(cwd),
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"--project needs git to find the repository: {exc}") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InstallError(f"{cwd} is not inside a git repository; --project writes the "
                           "repository's .mcp.json and .claude/settings.json: run it there")
    return Path(proc.stdout.strip())


def project_target(cwd: Path) -> Target:
    """The repository's files: .mcp.json and .claude/settings.json at its top folder."""
    root = git_toplevel(cwd)
    return Target("project", root / ".claude" / "settings.json", root / ".mcp.json")
