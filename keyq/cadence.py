"""When a schedule's ticks fall: a cron expression in a time zone, or a fixed interval.

Cron fields are matched by croniter (the 5 standard fields, or 6 with a leading
seconds field) on *wall-clock* times of the zone, and each wall time is then
placed on the timeline here, by keyq's DST rule (docs/schedules.md):

* a wall time that does not exist that day (spring forward: 02:30 in Paris on
  the last Sunday of March) fires once, at the first valid moment after it
  (03:00 local, the end of the gap); several such wall times fire once;
* a wall time that occurs twice (fall back) fires once, at its first occurrence.

``every`` ticks fall on multiples of the interval since the Unix epoch, in UTC:
the same instants whatever the zone, and across restarts.

A tick is a float of seconds since the epoch (UTC), the daemon's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keyq.core.durations import parse_duration

if TYPE_CHECKING:
    from croniter import croniter

MIN_EVERY_S = 1.0
_SCAN_LIMIT = 100_000  # wall times tried before giving up (an expression that never fires)


def zone(name: str, *, field: str = "tz") -> ZoneInfo:
    """The zone named ``name`` (IANA, e.g. ``Europe/Paris``); ValueError naming the field."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field}: expected a time zone name such as 'Europe/Paris', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{field}: unknown time zone {name!r}") from None


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression in a zone."""

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        check_cron(self.expression)
        zone(self.tz)

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``."""
        tz = ZoneInfo(self.tz)
        it = _croniter(self.expression, _wall(t, tz))
        for _ in range(_SCAN_LIMIT):
            at = _place(it.get_next(datetime), tz)
            if at > t:
                return at
        raise ValueError(f"cron {self.expression!r} has no tick after {t}")

    def at_or_before(self, t: float) -> float | None:
        """The last tick at or before ``t`` (None if none in the scan's reach)."""
        tz = ZoneInfo(self.tz)
        it = _croniter(self.expression, _wall(math.floor(t), tz) + timedelta(seconds=1))
        for _ in range(_SCAN_LIMIT):
            at = _place(it.get_prev(datetime), tz)
            if at <= t:
                return at
        return None

    def describe(self) -> str:
        return f"cron {self.expression}" + ("" if self.tz == "UTC" else f" ({self.tz})")


@dataclass(frozen=True, slots=True)
class Every:
    """A fixed interval, aligned to the epoch."""

    seconds: float

    def next_after(self, t: float) -> float:
        return (math.floor(t / self.seconds) + 1) * self.seconds

    def at_or_before(self, t: float) -> float | None:
        return math.floor(t / self.seconds) * self.seconds

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


Cadence = Cron | Every


def check_cron(expression: object, *, field: str = "cron") -> str:
    """``expression`` if it is a valid cron of 5 fields, or 6 with leading seconds."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"{field}: expected a cron expression such as '*/5 * * * *'")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"{field}: {expression!r} has {len(fields)} fields; cron takes 5 "
            "(minute hour day month weekday) or 6 with a leading seconds field"
        )
    from croniter import croniter  # imported when used: it costs every CLI call ~60 ms

    if not croniter.is_valid(expression, second_at_beginning=len(fields) == 6):
        raise ValueError(f"{field}: {expression!r} is not a valid cron expression")
    return expression


def parse_every(value: object, *, field: str = "every") -> Every:
    seconds = parse_duration(value, field=field)
    if seconds < MIN_EVERY_S:
        raise ValueError(f"{field}: must be at least {MIN_EVERY_S:g}s, got {value!r}")
    return Every(seconds)


def _croniter(expression: str, start: datetime) -> croniter:
    from croniter import croniter

    return croniter(expression, start, second_at_beginning=len(expression.split()) == 6)


def _wall(t: float, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time of instant ``t`` in ``tz``."""
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def _place(wall: datetime, tz: ZoneInfo) -> float:
    """The instant a wall time stands for, by the DST rule above."""
    first = wall.replace(tzinfo=tz, fold=0)
    if _wall(first.timestamp(), tz) == wall:
        return first.timestamp()  # exists (once, or twice and this is the first)
    # In a gap: fold=1 lands before the transition, fold=0 after it. Find the
    # transition (the gap's end) to the second.
    lo, hi = wall.replace(tzinfo=tz, fold=1).timestamp(), first.timestamp()
    lo_s, hi_s = math.floor(lo), math.ceil(hi)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _wall(mid, tz) < wall:
            lo_s = mid
        else:
            hi_s = mid
    return float(hi_s)


def utc(t: float) -> datetime:
    """A tick as an aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


def stored(text: str, tz: str) -> Cadence:
    """A cadence as the store writes it: the cron expression, or ``every N`` (seconds)."""
    if text.startswith("every "):
        return Every(float(text.removeprefix("every ")))
    return Cron(text, tz)
