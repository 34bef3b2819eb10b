"""Human durations in config and on the command line: "30m", "3h", "1d", "1h30m", "90s"."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raises ValueError with the accepted forms when it is not one."""
    cleaned = str(text).strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    pos, seconds = 0, Decimal(0)
    while pos < len(cleaned):
        match = _PART.match(cleaned, pos)
        if not match:
            raise ValueError(
                f"bad duration {text!r}: use a number and a unit (ms, s, m, h, d, w), e.g. 30m, 3h, 1d, 1h30m"
            )
        seconds += Decimal(match.group(1)) * Decimal(str(_UNITS[match.group(2)]))  # exact: 0.001ms is 1 µs
        pos = match.end()
    try:
        return timedelta(microseconds=int((seconds * 1_000_000).to_integral_value()))
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling parse_duration reads back ("1h30m", "45s", "1500ms")."""
    if value < timedelta(0):
        return "-" + format_duration(-value)
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    if micros % 1_000_000:
        millis, rest = divmod(micros, 1000)
        return f"{millis}ms" if not rest else f"{millis}.{rest:03d}".rstrip("0") + "ms"
    parts, remaining = [], micros // 1_000_000
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
