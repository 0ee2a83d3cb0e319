"""Helpers shared by the daemon and end-to-end tiers."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio


class Overlap:
    """Counts attempts running at once, per key and overall, from inside the task."""

    def __init__(self) -> None:
        self.now: Counter[object] = Counter()
        self.peak: Counter[object] = Counter()
        self.order: list[object] = []

    @contextmanager
    def running(self, *groups: object) -> Iterator[None]:
        self.order.append(groups[0] if groups else None)
        for g in (*groups, "*"):
            self.now[g] += 1
            self.peak[g] = max(self.peak[g], self.now[g])
        try:
            yield
        finally:
            for g in (*groups, "*"):
                self.now[g] -= 1


async def work() -> None:
    """A few milliseconds of pretend work, so that started attempts overlap."""
    await anyio.sleep(0.005)


@asynccontextmanager
async def deadline(seconds: float = 10.0) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield
