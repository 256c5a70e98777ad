"""Report windows as people write them: `2026-11-01`, `2026-11-01T09:30:00+01:00`, `1793491200`, `24h`.

Shared by `GET /admin/usage` and `llm-gateway usage report`, so both read a time the same way. Times
without a zone are UTC (the ledger's clock is unix time). A bare date as the end of a window means the
end of that day, so `--since 2026-11-01 --until 2026-11-30` covers all of November's 30th.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

DEFAULT_WINDOW_S = 86400.0


def parse_instant(text: str, *, end: bool = False, now: float | None = None) -> float:
    """Unix seconds for `text`: an ISO date or datetime, unix seconds, or a duration ago (`90m`, `24h`,
    `7d`, `2w`). Raises ValueError with a message fit for a person."""
    text = text.strip()
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text.lower())
    if relative:
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else _iso(text, end)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or datetime (2026-11-01, 2026-11-01T09:30:00Z), "
            "unix seconds, or a duration ago (30m, 24h, 7d)"
        ) from None


def parse_window(since: str | None, until: str | None, *, now: float | None = None) -> tuple[float, float]:
    """(since, until) in unix seconds; until defaults to now, since to a day before until.

    Raises ValueError when the window is empty or reversed."""
    now = time.time() if now is None else now
    end = parse_instant(until, end=True, now=now) if until else now
    start = parse_instant(since, now=now) if since else end - DEFAULT_WINDOW_S
    if start >= end:
        raise ValueError("the window is empty: its start must be before its end")
    return start, end


def iso(instant: float) -> str:
    """Unix seconds → ISO 8601 in UTC, for echoing a window back."""
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


def _iso(text: str, end: bool) -> float:
    if len(text) == 10:  # a date alone
        day = date.fromisoformat(text)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return (start + timedelta(days=1) if end else start).timestamp()
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
