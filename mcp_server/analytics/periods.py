"""Days, ISO weeks and months, and the sparkline of a series. Pure.

Records carry ISO-8601 UTC timestamps, so a day is the first ten characters
of one. Weeks are ISO weeks (`2026-W18`, Monday first) and months `2026-05`,
both computed from the day, so the three views always add up to the same totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta

__all__ = ["week_of", "month_of", "PERIODS", "dense_days", "dense_weeks", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"


def week_of(day: str) -> str:
    """`2026-05-01` -> `2026-W18` (the ISO week, whose year may differ from the day's)."""
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def month_of(day: str) -> str:
    return day[:7]


PERIODS = {"day": lambda d: d, "week": week_of, "month": month_of}


def dense_days(days: Iterable[str]) -> list[str]:
    """Every day from the first to the last of `days`, in order (for charts with gaps)."""
    ds = sorted({date.fromisoformat(d) for d in days})
    if not ds:
        return []
    n = (ds[-1] - ds[0]).days + 1
    return [(ds[0] + timedelta(days=i)).isoformat() for i in range(n)]


def dense_weeks(days: Iterable[str]) -> list[str]:
    """Every ISO week from the first to the last of `days`, in order."""
    span = dense_days(days)
    out: list[str] = []
    for d in span:
        w = week_of(d)
        if not out or out[-1] != w:
            out.append(w)
    return out


def sparkline(values: Sequence[float], width: int | None = None) -> str:
    """`values` as block characters, scaled to the largest; 0 is a space-like lowest bar.

    With `width`, consecutive values are summed into at most `width` columns.
    """
    vals = list(values)
    if width and len(vals) > width:
        step = -(-len(vals) // width)
        vals = [sum(vals[i:i + step]) for i in range(0, len(vals), step)]
    top = max(vals, default=0)
    if top <= 0:
        return _BARS[0] * len(vals)
    return "".join(" " if v <= 0 else _BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1)
                                                                    + 0.5))] for v in vals)
