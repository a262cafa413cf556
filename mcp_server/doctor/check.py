"""A doctor finding (`Check`), the exit rule, and the stable `--json` object."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest.config import PostgresUrl

__all__ = ["Check", "STATUSES", "failed", "checks_json"]


STATUSES = ("ok", "warn", "fail")


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, "ok" | "warn" | "fail", what was found, how to fix it."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str | None = None


def failed(checks: list[Check]) -> bool:
    """The exit rule: something failed (warnings are not failures)."""
    return any(c.status == "fail" for c in checks)


def checks_json(db_path: Path | PostgresUrl, checks: list[Check]) -> dict[str, Any]:
    """The stable `deja doctor --json` object (documented in the README)."""
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return {"ok": not failed(checks), "database": str(db_path), "summary": counts,
            "checks": [asdict(c) for c in checks]}


