"""Human durations in config and on the command line ("30m", "3h", "1d", "1h30m", "90s"), and Gordo's
pandas-style frequencies ("10T", "1H") for model resolutions."""

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
        count, remaining = divmod(remaining, int(_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


_FIXED_UNITS = {
    "N": 1e-9, "ns": 1e-9, "U": 1e-6, "us": 1e-6, "L": 1e-3, "ms": 1e-3,
    "S": 1.0, "s": 1.0, "sec": 1.0, "T": 60.0, "min": 60.0, "H": 3600.0, "h": 3600.0,
    "D": 86400.0, "d": 86400.0, "W": 604800.0,
}
_FREQUENCY = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([A-Za-z]+)\s*$")


def parse_frequency(text: str) -> timedelta:
    """A pandas frequency string as Gordo writes it ("10T", "1H", "30S", "10min") as a timedelta.

    Parsed here because pandas 3 no longer reads the "T"/"H" aliases Gordo's metadata uses."""
    match = _FREQUENCY.match(str(text))
    if not match or match.group(2) not in _FIXED_UNITS:
        raise ValueError(f"{text!r} is not a fixed frequency like 10T, 1H or 30S")
    count = float(match.group(1)) if match.group(1) else 1.0
    value = timedelta(seconds=count * _FIXED_UNITS[match.group(2)])
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is not a positive frequency")
    return value


def parse_resolution(text: str) -> timedelta:
    """A model resolution in latigo's spelling ("10m") or Gordo's pandas spelling ("10T", "1H")."""
    try:
        return parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_frequency(text)
    except ValueError:
        raise ValueError(f"resolution {text!r}: use a duration like 10m or a frequency like 10T or 1H") from None
