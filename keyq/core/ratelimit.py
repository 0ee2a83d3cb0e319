"""Rate limits: at most N starts in any window of W seconds. Pure.

A rate is kept as a sliding log, the way a rate limit must be if it promises
"in *any* window", not "per calendar minute": the times of the last N starts
of one bucket (or of a whole queue, for ``rate_limit_total``). A start at
``now`` is allowed when fewer than N starts fall in ``(now - W, now]``, that
is when the N-th most recent start is at or before ``now - W``; otherwise the
next start is allowed exactly W after it. A token bucket or a fixed window
would let up to 2N through across a boundary.

Memory is at most N times per rated bucket that started in the last W; a log
idle for a whole window has nothing left to say and is forgotten. Nothing here
scans: checking, recording and forgetting are O(1) or O(log n) per start.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from keyq.core.durations import format_duration, parse_duration
from keyq.core.timers import Deadlines

MAX_RATE_COUNT = 1_000_000  # starts remembered per log: a bound on memory per key
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S+)\s*")
_UNITS = ("ms", "s", "m", "h", "d", "w")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` starts in any ``window_s`` seconds."""

    count: int
    window_s: float

    def __str__(self) -> str:
        return f"{self.count}/{format_window(self.window_s)}"


def parse_rate(value: object, *, field: str) -> Rate | None:
    """``"100/1m"``, ``"10/s"``, ``"5/30s"``; ``"none"`` (or None) is no rate limit.

    ValueError naming ``field`` for anything else.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, Rate):
        return value
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{field}: expected a rate such as 100/1m, 10/s or none, got {value!r}")
    count, window = int(match[1]), match[2]
    if window in _UNITS:
        window = "1" + window  # "10/s" is "10/1s"
    try:
        seconds = parse_duration(window, field=field)
    except ValueError:
        raise ValueError(
            f"{field}: expected a rate such as 100/1m, 10/s or none, got {value!r} "
            f"({match[2]!r} is not a window: use s, m, h, d or e.g. 30s)"
        ) from None
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"{field}: the count must be 1 to {MAX_RATE_COUNT:,}, got {count}")
    if seconds <= 0:
        raise ValueError(f"{field}: the window must be longer than 0, got {value!r}")
    return Rate(count, seconds)


def format_window(seconds: float) -> str:
    """``1m``, ``30s``, ``1h``, ``1.5s``: the window as it would be written."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else format_duration(seconds)


class StartLogs:
    """The recent starts of every rated bucket or queue, by a key the caller chooses."""

    def __init__(self) -> None:
        self._logs: dict[Hashable, deque[float]] = {}
        self._idle: Deadlines[Hashable] = Deadlines()  # when each log has nothing left to say

    def __len__(self) -> int:
        return len(self._logs)

    def next_start(self, log: Hashable, rate: Rate, now: float) -> float | None:
        """None if a start at ``now`` is within ``rate``; else when the next one is."""
        starts = self._logs.get(log)
        if starts is None or len(starts) < rate.count:
            return None
        allowed_at = starts[-rate.count] + rate.window_s
        return None if allowed_at <= now else allowed_at

    def record(self, log: Hashable, rate: Rate, at: float) -> None:
        """A start at ``at`` (now, or a past one read back after a restart)."""
        starts = self._logs.get(log)
        if starts is None:
            starts = self._logs[log] = deque()
        if starts and at < starts[-1]:  # a past start read out of order: keep the log sorted
            starts.append(at)
            self._logs[log] = starts = deque(sorted(starts))
        else:
            starts.append(at)
        while len(starts) > rate.count:
            starts.popleft()
        self._idle.push(log, starts[-1] + rate.window_s)

    def count_in_window(self, log: Hashable, rate: Rate, now: float) -> int:
        """Starts in ``(now - window, now]`` that the log remembers (for ``keyq queues``)."""
        starts = self._logs.get(log)
        if not starts:
            return 0
        return sum(1 for at in starts if at > now - rate.window_s)

    def forget_idle(self, now: float, window_of: Callable[[Hashable], float | None]) -> None:
        """Drop logs whose newest start is a whole window old. ``window_of`` gives each
        log's window now: a rate changed since its last start may keep it longer."""
        for log in self._idle.pop_due(now):
            starts = self._logs[log]
            window = window_of(log)
            if window is not None and starts[-1] + window > now:
                self._idle.push(log, starts[-1] + window)
            else:
                del self._logs[log]
