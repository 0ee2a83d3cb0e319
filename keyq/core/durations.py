"""Human durations: ``90``, ``1.5``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``"1h30m"``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Seconds in ``value``; ValueError naming ``field`` when it is not a duration >= 0."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration such as 30s, 5m or 2h, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), field)
    else:
        raise ValueError(f"{field}: expected a duration such as 30s, 5m or 2h, got {value!r}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{field}: must be a finite duration >= 0, got {value!r}")
    return seconds


def _parse_text(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"{field}: {text!r} is not a duration (use a number of seconds or e.g. 30s, 5m, 2h, 7d)"
        )
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """A short human form: ``850ms``, ``12s``, ``4m05s``, ``3h20m``, ``2d4h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"
