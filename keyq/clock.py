"""Time, the only module that reads the real clock.

The daemon asks its :class:`Clock` for ``now()`` and waits through
``wait_until(deadline, wake)``, so a :class:`FakeClock` drives delays, backoff,
waits and max_duration in tests without sleeping (SPEC §10).

Instants are UTC epoch seconds because deadlines are stored and must survive a
restart. ``SystemClock`` caps each sleep, so a wall-clock jump or a suspend is
absorbed on the next pass instead of oversleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


def host_monotonic() -> float:
    """CLOCK_MONOTONIC seconds: one clock for every process on this host, never set
    back. Not the daemon's scheduling time (that is :class:`Clock`): it stamps
    requests between processes (keyq.handoff), which a test's FakeClock must not move."""
    return time.monotonic()


class Clock(Protocol):
    """What the daemon needs of time."""

    def now(self) -> float:
        """Current UTC epoch seconds."""
        ...

    async def wait_until(self, deadline: float | None, wake: anyio.Event) -> None:
        """Return at ``deadline`` (None: no deadline) or as soon as ``wake`` is set."""
        ...


class SystemClock:
    """Real time; sleeps are capped at ``max_sleep_s``."""

    def __init__(self, max_sleep_s: float = 60.0) -> None:
        self.max_sleep_s = max_sleep_s

    def now(self) -> float:
        return time.time()

    async def wait_until(self, deadline: float | None, wake: anyio.Event) -> None:
        delay = self.max_sleep_s if deadline is None else deadline - time.time()
        if delay <= 0:
            return
        with anyio.move_on_after(min(delay, self.max_sleep_s)):
            await wake.wait()


class FakeClock:
    """Time that moves only when a test calls :meth:`advance` (after trio's MockClock).

    It starts at an odd epoch so that a stray real-time read shows up in assertions.
    """

    def __init__(self, start: float = 1_234_567_890.25) -> None:
        self._now = start
        self._parked: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter whose deadline has passed."""
        if seconds < 0:
            raise ValueError("time can't go backwards")
        self._now += seconds
        still: list[tuple[float, anyio.Event]] = []
        for deadline, event in self._parked:
            if deadline <= self._now:
                event.set()
            elif not event.is_set():
                still.append((deadline, event))
        self._parked = still

    async def wait_until(self, deadline: float | None, wake: anyio.Event) -> None:
        if deadline is not None and deadline <= self._now:
            return
        if deadline is not None:
            self._parked.append((deadline, wake))
        await wake.wait()
