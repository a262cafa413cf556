"""`deja install` / `deja uninstall` on scratch HOME folders that already hold settings.

The files start as a user's would: other tools' hooks, permissions, env,
other MCP servers, Claude Code's own keys. The command runs as a subprocess
(`--no-claude-cli`: the direct edit of ~/.claude.json; test_install_claude.py
runs the real Claude Code CLI). What must hold: nothing of theirs changes, a
second install is a no-op, uninstall gives back the original bytes, a file
that is not JSON is left alone with a clear error, --project writes the
repository's files, and the hook commands run through the shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja_argv, deja_env
from fixtures.paths import REPO

from ingest import __version__
from mcp_server.install import HOOKS, Invocation
from mcp_server.install.entries import hook_slug_of, without_hooks, without_server

Deja = Callable[..., Any]

DEJA = str(Path(sys.executable).parent / ("deja.exe" if sys.platform == "win32" else "deja"))

# A user's settings.json: permissions, env, a status line, another memory tool's hooks on the
# events deja uses (one of them in a group with a matcher deja also uses), a formatter's hook.
SETTINGS: dict[str, Any] = {
    "permissions": {"allow": ["Bash(npm run test:*)", "Read(~/.zshrc)"], "deny": ["Bash(curl:*)"]},
    "env": {"ANTHROPIC_MODEL": "claude-sonnet-4", "FOO": "bär"},
    "statusLine": {"type": "command", "command": "~/.claude/statusline.sh"},
    "hooks": {
        "SessionStart": [{"matcher": "startup|resume|clear|compact", "hooks": [
            {"type": "command", "command": "other-memory inject", "timeout": 30}]}],
        "Stop": [{"hooks": [{"type": "command", "command": "other-memory save"}]}],
        "PostToolUse": [{"matcher": "Edit|Write", "hooks": [
            {"type": "command", "command": "prettier --write \"$CLAUDE_FILE\""}]}],
    },
    "model": "opus",
}
# A user's ~/.claude.json: Claude Code's own keys, other servers (user and local scope).
CLAUDE_JSON: dict[str, Any] = {
    "numStartups": 42,
    "installMethod": "npm",
    "mcpServers": {
        "github": {"type": "stdio", "command": "npx", "args": ["-y", "@github/mcp"],
                   "env": {"GITHUB_TOKEN": "x"}},
        "sentry": {"type": "http", "url": "https://mcp.sentry.dev/mcp"},
    },
    "projects": {"/home/u/app": {"allowedTools": [], "mcpServers": {"pg": {"command": "pg-mcp"}}}},
    "userID": "abc",
}


def _claude_layout(data: Any, final_newline: bool = True) -> bytes:
    """A file as Claude Code writes it: JSON.stringify(data, null, 2)."""
    return (json.dumps(data, indent=2, ensure_ascii=False) + ("\n" if final_newline else "")
            ).encode()


def _home(home: Path, settings: bytes | None = None, claude_json: bytes | None = None
          ) -> tuple[Path, Path]:
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    settings_path, claude_path = home / ".claude" / "settings.json", home / ".claude.json"
    settings_path.write_bytes(_claude_layout(SETTINGS) if settings is None else settings)
    claude_path.write_bytes(_claude_layout(CLAUDE_JSON, False) if claude_json is None
                            else claude_json)
    return settings_path, claude_path


def _backups(home: Path) -> list[Path]:
    folder = home / ".local" / "share" / "deja" / "install-backups"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _install(deja: Deja, *args: str, **kw: Any) -> Any:
    return deja(*args, "install", "--no-claude-cli", "--yes", input="", **kw)


def _uninstall(deja: Deja, *args: str, **kw: Any) -> Any:
    return deja(*args, "uninstall", "--no-claude-cli", "--yes", input="", **kw)


def _deja_hooks(settings: dict[str, Any]) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    """Per event: (the group's matcher, the hook) of each deja hook."""
    found: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for event, groups in settings.get("hooks", {}).items():
        for group in groups:
            for hook in group["hooks"]:
                if hook_slug_of(hook):
                    found.setdefault(event, []).append((group.get("matcher"), hook))
    return found


def test_install_adds_server_and_hooks_and_keeps_everything_else(home: Path, deja: Deja) -> None:
    settings_path, claude_path = _home(home)
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    out = _install(deja).stdout
    assert "+++ " + str(settings_path) in out and re.search(r'^\+\s+"timeout": 2$', out, re.M)
    settings = json.loads(settings_path.read_text())
    config = json.loads(claude_path.read_text())
    # Theirs: every other key, hook and server as it was, in its place.
    assert without_hooks(settings, "") == SETTINGS
    assert list(settings) == list(SETTINGS)
    assert settings["hooks"]["SessionStart"][0] == SETTINGS["hooks"]["SessionStart"][0]
    assert settings["hooks"]["Stop"][0] == SETTINGS["hooks"]["Stop"][0]
    assert without_server(config, "") == CLAUDE_JSON and list(config) == list(CLAUDE_JSON)
    # Ours: one hook per event, the absolute path of the installed console script, a timeout.
    ours = _deja_hooks(settings)
    assert sorted(ours) == sorted(spec.event for spec in HOOKS)
    for spec in HOOKS:
        [(matcher, hook)] = ours[spec.event]
        assert matcher == spec.matcher
        assert hook == {"type": "command", "command": f"{shlex.quote(DEJA)} hook {spec.slug}",
                        "timeout": spec.timeout}
    assert ours["SessionStart"][0][0] == "startup|resume|clear|compact"
    assert ours["SessionEnd"][0][1]["timeout"] == 2
    assert config["mcpServers"]["deja"] == {"type": "stdio", "command": DEJA, "args": ["serve"],
                                            "env": {}}
    # Each file was backed up, with its original bytes, privately.
    backups = _backups(home)
    assert sorted(b.read_bytes() for b in backups) == sorted(before.values())
    assert all(stat.S_IMODE(b.stat().st_mode) == 0o600 for b in backups)


def test_second_install_changes_nothing_and_writes_no_backup(home: Path, deja: Deja) -> None:
    settings_path, claude_path = _home(home)
    _install(deja)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (settings_path, claude_path)}
    backups = _backups(home)
    again = _install(deja)
    assert "already installed" in again.stdout and "+++" not in again.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in after} == after
    assert _backups(home) == backups


LAYOUTS: dict[str, tuple[bytes, bytes]] = {
    # name: (settings.json, ~/.claude.json)
    "claude-code": (_claude_layout(SETTINGS), _claude_layout(CLAUDE_JSON, False)),
    "4-spaces": (json.dumps(SETTINGS, indent=4).encode() + b"\n",
                 json.dumps(CLAUDE_JSON, indent=4).encode()),
    "tabs-crlf-bom": ("\ufeff".encode() + json.dumps(SETTINGS, indent="\t", ensure_ascii=False)
                      .replace("\n", "\r\n").encode() + b"\r\n",
                      json.dumps(CLAUDE_JSON, indent="\t").replace("\n", "\r\n").encode()),
    "one-line": (json.dumps(SETTINGS, separators=(",", ":")).encode(),
                 json.dumps(CLAUDE_JSON).encode() + b"\n"),
    # Hand-made: aligned values, inline arrays; no serializer reproduces it.
    "hand-made": (b'{\n  "model":  "opus",\n  "permissions": {"allow": ["Bash(ls)"]},\n'
                  b'  "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}\n}\n',
                  b'{ "mcpServers": { "a": {"command": "a"} } }'),
    "empty-files": (b"", b"  \n"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_uninstall_gives_back_the_original_bytes(home: Path, deja: Deja, layout: str) -> None:
    settings_bytes, claude_bytes = LAYOUTS[layout]
    settings_path, claude_path = _home(home, settings_bytes, claude_bytes)
    _install(deja)
    assert settings_path.read_bytes() != settings_bytes
    _uninstall(deja)
    assert settings_path.read_bytes() == settings_bytes
    assert claude_path.read_bytes() == claude_bytes
    state = json.loads((home / ".local/share/deja/install-state.json").read_text())
    assert state["files"] == {}


@pytest.mark.parametrize("layout", ["claude-code", "4-spaces", "tabs-crlf-bom", "one-line"])
def test_install_into_a_known_layout_keeps_it(home: Path, deja: Deja, layout: str) -> None:
    """In a layout deja can reproduce, the only lines that change are next to its entries."""
    settings_bytes, _ = LAYOUTS[layout]
    settings_path, _ = _home(home, settings_bytes)
    _install(deja)
    text = settings_path.read_bytes()
    assert text.startswith(settings_bytes[:3]) and text.endswith(settings_bytes[-2:])
    if layout != "one-line":
        original = settings_bytes.decode("utf-8-sig").splitlines()
        kept = set(text.decode("utf-8-sig").splitlines())
        lost = [line for line in original if line not in kept and line.rstrip(",") + "," not in kept]
        assert lost == []


def test_uninstall_after_other_changes_removes_only_deja(home: Path, deja: Deja) -> None:
    settings_path, claude_path = _home(home)
    _install(deja)
    # Meanwhile the user (or another tool) adds a permission, a server and a hook of its own.
    settings = json.loads(settings_path.read_text())
    settings["permissions"]["allow"].append("Bash(make)")
    settings["hooks"]["SessionEnd"].append({"hooks": [{"type": "command", "command": "bye"}]})
    settings_path.write_bytes(_claude_layout(settings))
    config = json.loads(claude_path.read_text())
    config["mcpServers"]["linear"] = {"command": "linear-mcp"}
    config["numStartups"] = 43
    claude_path.write_text(json.dumps(config, indent=2))
    _uninstall(deja)
    expected = json.loads(json.dumps(SETTINGS))
    expected["permissions"]["allow"].append("Bash(make)")
    expected["hooks"]["SessionEnd"] = [{"hooks": [{"type": "command", "command": "bye"}]}]
    left = json.loads(settings_path.read_text())
    assert left == expected and list(left["hooks"]) == [*SETTINGS["hooks"], "SessionEnd"]
    assert settings_path.read_bytes() == _claude_layout(expected)
    config_left = json.loads(claude_path.read_text())
    assert "deja" not in config_left["mcpServers"]
    assert config_left["mcpServers"]["linear"] == {"command": "linear-mcp"}
    assert config_left["numStartups"] == 43


def test_install_into_an_empty_home_and_uninstall_leave_nothing(home: Path, deja: Deja) -> None:
    _install(deja)
    assert (home / ".claude" / "settings.json").is_file() and (home / ".claude.json").is_file()
    _uninstall(deja)
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if ".local" not in p.parts)
    assert left == []


@pytest.mark.parametrize("broken", ["settings", "claude_json"])
@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_a_file_that_is_not_json_is_left_alone(home: Path, deja: Deja, broken: str,
                                                command: str) -> None:
    bad = b'{\n  "hooks": {\n    "Stop": [\n  }\n'  # an editor left it half-written
    settings_path, claude_path = _home(
        home, bad if broken == "settings" else None, bad if broken == "claude_json" else None)
    bad_path = settings_path if broken == "settings" else claude_path
    if command == "uninstall":
        bad_path.write_bytes(b"")
        _install(deja)
        bad_path.write_bytes(bad)
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    backups = _backups(home)
    proc = deja(command, "--no-claude-cli", "--yes", input="", expect=1)
    assert f"{bad_path} is not valid JSON" in proc.stderr
    assert "line 4 column 3" in proc.stderr and "left unchanged" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert {p: p.read_bytes() for p in before} == before
    assert _backups(home) == backups


def test_without_a_terminal_and_without_yes_it_shows_and_refuses(home: Path, deja: Deja) -> None:
    settings_path, claude_path = _home(home)
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    proc = deja("install", "--no-claude-cli", input="", expect=1)
    assert "+++ " + str(settings_path) in proc.stdout and "hook session-start" in proc.stdout
    assert "no terminal to confirm on" in proc.stderr and "deja install --yes" in proc.stderr
    dry = deja("install", "--no-claude-cli", "--dry-run", input="")
    assert "hook session-start" in dry.stdout
    assert {p: p.read_bytes() for p in before} == before
    assert _backups(home) == []


def test_stale_deja_entries_are_replaced_in_place(home: Path, deja: Deja) -> None:
    """A deja from an old venv: its hook and server entry are updated; its env stays."""
    settings = json.loads(json.dumps(SETTINGS))
    old = "/old/venv/bin/deja"
    settings["hooks"]["Stop"][0]["hooks"].append({"type": "command", "command": f"{old} hook stop"})
    config = json.loads(json.dumps(CLAUDE_JSON))
    config["mcpServers"]["deja"] = {"type": "stdio", "command": old, "args": ["serve"],
                                    "env": {"DEJA_EMBED_BACKEND": "onnx"}}
    config["mcpServers"]["zz"] = {"command": "zz"}
    settings_path, claude_path = _home(home, _claude_layout(settings), _claude_layout(config))
    _install(deja)
    stop = json.loads(settings_path.read_text())["hooks"]["Stop"]
    assert stop[0] == SETTINGS["hooks"]["Stop"][0]  # the other tool's group, without the old hook
    assert stop[1]["hooks"][0]["command"] == f"{shlex.quote(DEJA)} hook stop" and len(stop) == 2
    servers = json.loads(claude_path.read_text())["mcpServers"]
    assert list(servers) == ["github", "sentry", "deja", "zz"]
    assert servers["deja"] == {"type": "stdio", "command": DEJA, "args": ["serve"],
                               "env": {"DEJA_EMBED_BACKEND": "onnx"}}


def test_a_foreign_server_named_deja_is_not_replaced(home: Path, deja: Deja) -> None:
    config = {**CLAUDE_JSON, "mcpServers": {"deja": {"command": "node", "args": ["deja.js"]}}}
    settings_path, claude_path = _home(home, None, _claude_layout(config))
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    proc = deja("install", "--no-claude-cli", "--yes", input="", expect=1)
    assert "does not run deja" in proc.stderr and "'node'" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_db_option_reaches_the_server_and_the_hooks(home: Path, deja: Deja, tmp_path: Path) -> None:
    db = tmp_path / "my memory" / "deja.db"
    _install(deja, "--db", str(db))
    config = json.loads((home / ".claude.json").read_text())
    assert config["mcpServers"]["deja"]["args"] == ["--db", str(db), "serve"]
    stop = json.loads((home / ".claude" / "settings.json").read_text())["hooks"]["Stop"]
    assert stop[0]["hooks"][0]["command"] == \
        f"{shlex.quote(DEJA)} --db {shlex.quote(str(db))} hook stop"
    # Uninstall recognises them by command, whatever the options.
    _uninstall(deja)
    assert not (home / ".claude.json").exists()


def test_settings_behind_a_symlink_stay_behind_it(home: Path, deja: Deja, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "claude-settings.json"
    real.write_bytes(_claude_layout(SETTINGS))
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").symlink_to(real)
    _install(deja)
    link = home / ".claude" / "settings.json"
    assert link.is_symlink() and _deja_hooks(json.loads(real.read_text()))
    _uninstall(deja)
    assert link.is_symlink() and real.read_bytes() == _claude_layout(SETTINGS)


def test_an_enabled_deja_plugin_is_pointed_out(home: Path, deja: Deja) -> None:
    _home(home, _claude_layout({**SETTINGS, "enabledPlugins": {"deja@deja": True}}))
    out = _install(deja).stdout
    assert "the plugin deja@deja is enabled" in out and "claude plugin disable deja@deja" in out


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def test_project_scope_writes_the_repository_files_only(home: Path, deja: Deja,
                                                        tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    (repo / "src").mkdir()
    (repo / ".mcp.json").write_bytes(_claude_layout({"mcpServers": {"db": {"command": "db-mcp"}}}))
    settings_path, claude_path = _home(home)
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    deja("install", "--project", "--yes", input="", cwd=repo / "src")
    assert {p: p.read_bytes() for p in before} == before  # the user's files: untouched
    mcp = json.loads((repo / ".mcp.json").read_text())
    assert mcp["mcpServers"]["db"] == {"command": "db-mcp"}
    assert mcp["mcpServers"]["deja"]["command"] == DEJA
    project_settings = json.loads((repo / ".claude" / "settings.json").read_text())
    assert sorted(_deja_hooks(project_settings)) == sorted(spec.event for spec in HOOKS)
    again = deja("install", "--project", "--yes", input="", cwd=repo)
    assert "already installed" in again.stdout
    deja("uninstall", "--project", "--yes", input="", cwd=repo)
    assert not (repo / ".claude").exists()  # deja created it; it is gone again
    assert (repo / ".mcp.json").read_bytes() == _claude_layout({"mcpServers": {"db": {"command": "db-mcp"}}})
    assert {p: p.read_bytes() for p in before} == before


def test_project_scope_outside_a_repository_is_refused(home: Path, deja: Deja,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    proc = deja("install", "--project", "--yes", input="", cwd=folder, expect=1,
                env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert "is not inside a git repository" in proc.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("folder", ["plain", "with space", "it's \"quoted\" $HOME"])
def test_hook_commands_run_through_the_shell(tmp_path: Path, folder: str) -> None:
    """The command line Claude Code hands to `sh -c` reaches deja with its arguments intact."""
    bindir = tmp_path / folder
    bindir.mkdir()
    fake = bindir / "deja"
    fake.write_text(f"#!{sys.executable}\nimport sys, json\nprint(json.dumps(sys.argv))\n")
    fake.chmod(0o755)
    db = tmp_path / folder / "deja.db"
    for spec in HOOKS:
        command = Invocation(str(fake), str(db)).hook_command(spec.slug)
        out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True,
                             env={**os.environ, "PATH": "/nonexistent"}).stdout
        assert json.loads(out) == [str(fake), "--db", str(db), "hook", spec.slug]
        assert hook_slug_of({"command": command}) == spec.slug


def test_windows_hook_commands_are_written_for_git_bash() -> None:
    inv = Invocation(r"C:\Users\Jane Doe\venv\Scripts\deja.exe", r"D:\mem\deja.db", windows=True)
    command = inv.hook_command("session-end")
    assert command == "'C:/Users/Jane Doe/venv/Scripts/deja.exe' --db D:/mem/deja.db hook session-end"
    assert shlex.split(command) == ["C:/Users/Jane Doe/venv/Scripts/deja.exe", "--db",
                                    "D:/mem/deja.db", "hook", "session-end"]
    assert hook_slug_of({"command": command}) == "session-end"
    # The server is started without a shell: its path stays native.
    assert inv.server_entry()["command"] == r"C:\Users\Jane Doe\venv\Scripts\deja.exe"
    # Entries written by hand or by an older deja are recognised too; other tools' are not.
    assert hook_slug_of({"command": r"C:\tools\deja.exe hook stop"}) == "stop"
    assert hook_slug_of({"command": "deja hook stop"}) == "stop"
    assert hook_slug_of({"command": "not-deja hook stop"}) is None
    assert hook_slug_of({"command": "deja hook unknown-event"}) is None


def test_the_plugin_runs_the_same_hooks_and_server_as_install() -> None:
    """plugin/ holds what install writes, with `deja` from PATH instead of an absolute path."""
    plugin = REPO / "plugin"
    hooks = json.loads((plugin / "hooks" / "hooks.json").read_text())["hooks"]
    on_path = Invocation("deja")
    assert hooks == {spec.event: [on_path.hook_group(spec)] for spec in HOOKS}
    server = json.loads((plugin / ".mcp.json").read_text())["mcpServers"]["deja"]
    assert server == {"type": "stdio", "command": "deja", "args": ["serve"]}
    manifest = json.loads((plugin / ".claude-plugin" / "plugin.json").read_text())
    assert manifest["name"] == "deja" and manifest["version"] == __version__
    marketplace = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())
    assert [(p["name"], p["source"]) for p in marketplace["plugins"]] == [("deja", "./plugin")]


def _read_terminal(fd: int, until: bytes | None, timeout: float = 60) -> bytes:
    """What the child writes to its terminal, up to `until` (None: until it closes it)."""
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {until!r} within {timeout} s:\n{seen.decode(errors='replace')}"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            assert until is None, seen.decode(errors="replace")
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("answer", ["y", "n", "y, but the file changed meanwhile"])
def test_on_a_terminal_it_asks_first(home: Path, answer: str) -> None:
    """With a terminal on stdin, install shows the diff and writes only after a yes, and only
    over the content the diff was made from."""
    import pty  # POSIX only, like the terminal it stands for

    settings_path, claude_path = _home(home)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(deja_argv("install", "--no-claude-cli"), stdin=follower,
                            stdout=follower, stderr=follower, env=deja_env(home), cwd=str(REPO))
    os.close(follower)
    seen = _read_terminal(leader, b"[y/N]")
    if "changed" in answer:
        settings_path.write_bytes(_claude_layout({**SETTINGS, "model": "sonnet"}))
    before = {p: p.read_bytes() for p in (settings_path, claude_path)}
    os.write(leader, answer[0].encode() + b"\n")
    seen += _read_terminal(leader, None)
    os.close(leader)
    applied = answer == "y"
    assert proc.wait(timeout=60) == (0 if applied else 1)
    assert b"hook session-start" in seen
    changed = {p: p.read_bytes() != before[p] for p in before}
    if "changed" in answer:  # one file moved: none is written
        assert b"changed while deja was looking at it; nothing written" in seen
        assert changed == {settings_path: False, claude_path: False}
    else:
        assert changed == {settings_path: applied, claude_path: applied}
    assert (b"nothing written" in seen) == (not applied)
