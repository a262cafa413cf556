"""Time bounds as a person types them, read into the ISO form records carry.

Record timestamps are ISO-8601 UTC text with milliseconds
('2026-05-01T00:00:00.000Z'), so a bound in the same form compares as text in
SQL and in the in-memory index alike. Used for `since`/`until` by search and
by the session list (history.py).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ingest.errors import InvalidQuery

__all__ = ["parse_time"]

_RELATIVE = re.compile(
    r"^\s*(\d+)\s*(s|sec|m|min|h|hr|hours?|d|days?|w|wk|weeks?|mo|months?|y|years?)\s*(ago)?\s*$",
    re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400,
                 "y": 365 * 86400}


def _unit(u: str) -> str:
    u = u.lower()
    if u.startswith("mo"):
        return "mo"
    if u in ("m", "min"):
        return "m"
    return u[0]


def parse_time(value: str, now: datetime | None = None) -> str:
    """An ISO-8601 UTC bound ('2026-05-01T00:00:00.000Z') from what a person types.

    Accepts ISO dates and datetimes, `7d`, `2w`, `3h`, `30min`, `6mo`, `1y`
    (optionally followed by "ago"), `today`, `yesterday`, `now`.
    Raises InvalidQuery with the accepted forms.
    """
    now = now or datetime.now(timezone.utc)
    text = value.strip().lower()
    when: datetime | None = None
    if text == "now":
        when = now
    elif text == "today":
        when = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elif text == "yesterday":
        when = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    elif (m := _RELATIVE.match(text)) is not None:
        when = now - timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[_unit(m.group(2))])
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidQuery(
                f"cannot read the time {value!r}: use an ISO date (2026-05-01), a datetime "
                "(2026-05-01T14:00), a relative form (7d, 2w, 3h, 6mo) or today/yesterday"
            ) from None
        when = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.astimezone(timezone.utc).microsecond // 1000:03d}Z"
