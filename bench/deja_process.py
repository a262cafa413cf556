"""What the benches that run deja as a subprocess share: its command, its environment, percentiles.

A hook or `deja stats` is timed as a user meets it: the installed `deja` script
(as `deja install` writes it into settings.json), this checkout first on the
path, and no DEJA_DB / DEJA_CONFIG of the person running the bench.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "deja_command", "env", "pct"]


def env() -> dict[str, str]:
    """The environment for a deja subprocess: this checkout importable, the caller's database
    and settings file out of the way."""
    out = {k: v for k, v in os.environ.items() if k not in ("DEJA_DB", "DEJA_CONFIG")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    return out


def deja_command() -> list[str]:
    """The venv's `deja` script, else `python -m mcp_server.cli`."""
    script = shutil.which("deja") or str(Path(sys.executable).with_name("deja"))
    return [script] if Path(script).exists() else [sys.executable, "-m", "mcp_server.cli"]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile by the nearest-rank rule."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]
