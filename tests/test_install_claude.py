"""`deja install` and the plugin, checked by the real Claude Code CLI in a scratch HOME.

`claude mcp list` health-checks each server by starting it: "Connected" means
Claude Code started `deja serve` from what was installed and completed the MCP
handshake. Skipped without the `claude` command, a failure under CI=true
(fixtures/claude.py); .ci/run installs it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.claude import claude, connected, require_claude
from fixtures.paths import REPO

Deja = Callable[..., Any]

DEJA = str(Path(sys.executable).parent / "deja")

# Servers that fail at once, so the health check does not wait on them (no network here).
OTHER_SERVERS = {"broken": {"type": "stdio", "command": "/nonexistent/mcp", "args": []},
                 "also-broken": {"type": "stdio", "command": "false", "args": ["x"]}}
SETTINGS = {"permissions": {"allow": ["Bash(ls)"]},
            "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "other-memory save"}]}]}}


@pytest.fixture(autouse=True)
def _claude_cli() -> None:
    require_claude()


def test_after_install_claude_shows_deja_connected(home: Path, deja: Deja) -> None:
    (home / ".claude").mkdir()
    settings_path, config_path = home / ".claude" / "settings.json", home / ".claude.json"
    settings_path.write_text(json.dumps(SETTINGS, indent=2) + "\n")
    config_bytes = json.dumps({"numStartups": 7, "mcpServers": OTHER_SERVERS}, indent=4).encode()
    config_path.write_bytes(config_bytes)
    out = deja("install", "--yes", input="").stdout
    assert "runs: " in out and "mcp add --scope user deja -- " + DEJA + " serve" in out
    listed = claude(home, "mcp", "list").stdout
    assert connected(listed, "deja"), listed
    assert not connected(listed, "broken")
    got = claude(home, "mcp", "get", "deja").stdout
    assert "User config" in got and DEJA in got
    config = json.loads(config_path.read_text())
    assert {k: config["mcpServers"][k] for k in OTHER_SERVERS} == OTHER_SERVERS
    assert config["numStartups"] == 7
    assert "already installed" in deja("install", "--yes", input="").stdout
    deja("uninstall", "--yes", input="")
    # Nothing else changed the files in between: they are back as they were, byte for byte
    # (Claude Code's own first-run keys, which `claude mcp add` wrote, included).
    assert config_path.read_bytes() == config_bytes
    assert json.loads(settings_path.read_text()) == SETTINGS
    assert not connected(claude(home, "mcp", "list").stdout, "deja")
    assert claude(home, "mcp", "get", "deja", expect=None).returncode != 0


def test_plugin_validate_strict_passes_on_the_repository(home: Path) -> None:
    for path in (REPO, REPO / "plugin"):
        out = claude(home, "plugin", "validate", "--strict", str(path)).stdout
        assert "Validation passed" in out, out


def test_the_plugin_installed_from_the_marketplace_connects(home: Path) -> None:
    marketplace = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())
    [plugin] = marketplace["plugins"]
    name = f"{plugin['name']}@{marketplace['name']}"
    claude(home, "plugin", "marketplace", "add", str(REPO))
    claude(home, "plugin", "install", name)
    details = claude(home, "plugin", "details", name).stdout
    assert "Hooks (5)" in details and "MCP servers (1)" in details, details
    listed = claude(home, "mcp", "list").stdout
    assert connected(listed, f"plugin:{plugin['name']}:deja"), listed


def test_uninstall_after_claude_code_changed_its_file_uses_claude(home: Path, deja: Deja) -> None:
    config_path = home / ".claude.json"
    config_path.write_text(json.dumps({"numStartups": 7, "mcpServers": OTHER_SERVERS}))
    deja("install", "--yes", input="")
    config = json.loads(config_path.read_text())
    config["numStartups"] = 8  # Claude Code counts every start
    config_path.write_text(json.dumps(config, indent=2))
    out = deja("uninstall", "--yes", input="").stdout
    assert "mcp remove --scope user deja" in out
    assert claude(home, "mcp", "get", "deja", expect=None).returncode != 0
    left = json.loads(config_path.read_text())
    assert left["numStartups"] == 8 and left["mcpServers"] == OTHER_SERVERS
