"""The asyncio event loop ``keyq serve`` runs on: asyncio's own, with its timers
kept to the microsecond.

asyncio waits for its next timer in ``epoll_wait``, whose timeout counts whole
milliseconds, and rounds the wait up. A timer therefore fires up to 1 ms late,
0.5 ms on average: a task's ``await anyio.sleep(0.02)`` lasts about 20.5 ms, and
every delay, backoff and wait timeout ends as late. When runs are short, that is
slot time lost each time one finishes (bench/burst). ``select(2)`` takes
microseconds, and an epoll descriptor is itself readable when any descriptor
it watches is ready: the selector waits on it there, then collects the events
without waiting.
"""

from __future__ import annotations

import asyncio
import select
import selectors

FD_SETSIZE = 1024  # select(2) cannot watch a descriptor at or above this


class PreciseEpollSelector(selectors.EpollSelector):
    """An :class:`~selectors.EpollSelector` whose timeouts are not rounded to milliseconds."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        epoll_fd = self.fileno()
        if timeout is not None and timeout > 0 and epoll_fd < FD_SETSIZE:
            select.select([epoll_fd], [], [], timeout)  # returns early when one is ready
            timeout = 0
        return super().select(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop for ``anyio.run(..., backend_options={"loop_factory": new_event_loop})``."""
    if not hasattr(select, "epoll"):  # not Linux: asyncio's default selector
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(PreciseEpollSelector())
