"""Shared fixtures: the shared real transcripts, a temporary database, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DEJA_SHARED", REPO.parent / "shared"))
SHARED_PROJECTS = SHARED / "transcripts" / "projects"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared: needs ../shared/transcripts")


@pytest.fixture
def shared_projects() -> Path:
    if not SHARED_PROJECTS.is_dir():
        pytest.fail(f"the shared transcripts are missing: {SHARED_PROJECTS}")
    return SHARED_PROJECTS


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "deja.db"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DEJA_DB", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Ingest embeds by default; most tests are about the keyword side and the
    # model costs ~1 min on the shared corpus. Embedding tests set DEJA_EMBED=1.
    env["DEJA_EMBED"] = "0"
    # One ONNX export of the model for every test and run (HOME is per test).
    env.setdefault("DEJA_MODEL_CACHE", str(REPO / ".pytest_cache" / "deja-models"))
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def run_deja(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `deja ARGS...` (as `python -m mcp_server.cli`) in a subprocess; HOME is a temp folder."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(*args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from mcp_server.cli import main; sys.exit(main())",
             *args],
            capture_output=True, text=True, timeout=timeout,
            env=_env({"HOME": str(home), **(env or {})}), cwd=str(REPO), **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"deja {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                f"stderr:\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture
def deja_json(run_deja: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Any]:
    """Run a deja command that prints one JSON object on stdout, and parse it."""

    def run(*args: str, **kw: Any) -> Any:
        proc = run_deja(*args, **kw)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{proc.stdout}"
        return json.loads(lines[0])

    return run


class FixedEmbedder:
    """An embedder whose every vector is the one given: for tests of the vector
    plumbing with vectors written straight into the schema (the real model is
    tested elsewhere)."""

    backend = "fixed"
    dim = 384

    def __init__(self, vector: Any) -> None:
        from ingest.embed import DEFAULT_MODEL

        self.model_id = DEFAULT_MODEL
        self.vector = vector

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        return np.stack([self.vector for _ in texts])
