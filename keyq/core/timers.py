"""A deadline heap with lazy deletion.

Delays, retry backoff, wait deadlines and max_duration all become entries
here. Cancelling marks the entry dead instead of searching the heap, so push,
cancel and pop are O(log n) and nothing ever scans the backlog.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Entry(Generic[K]):
    at: float
    order: int
    key: K
    alive: bool = True

    def __lt__(self, other: _Entry[K]) -> bool:
        return (self.at, self.order) < (other.at, other.order)


class Deadlines(Generic[K]):
    """At most one live deadline per key; the earliest is popped first."""

    def __init__(self) -> None:
        self._heap: list[_Entry[K]] = []
        self._live: dict[K, _Entry[K]] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: K) -> bool:
        return key in self._live

    def push(self, key: K, at: float) -> None:
        """Set ``key``'s deadline to ``at``, replacing any earlier one."""
        self.cancel(key)
        entry = _Entry(at, next(self._order), key)
        self._live[key] = entry
        heapq.heappush(self._heap, entry)

    def cancel(self, key: K) -> None:
        """Forget ``key``'s deadline, if it has one."""
        entry = self._live.pop(key, None)
        if entry is not None:
            entry.alive = False

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        self._drop_dead()
        return self._heap[0].at if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return, earliest first, every key whose deadline is <= now."""
        due: list[K] = []
        while True:
            self._drop_dead()
            if not self._heap or self._heap[0].at > now:
                return due
            entry = heapq.heappop(self._heap)
            del self._live[entry.key]
            due.append(entry.key)

    def _drop_dead(self) -> None:
        heap = self._heap
        while heap and not heap[0].alive:
            heapq.heappop(heap)
