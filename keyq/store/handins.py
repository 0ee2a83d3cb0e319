"""Runs handed to the daemon: stored promptly, before their client's deadline, or never.

A client hands runs to the daemon with a deadline on the host's monotonic
clock (:mod:`keyq.handoff`): past it, the client stores them itself or reports
the refusal. So the store adopts none close to the deadline, and waits for
the write lock only until a little before it: a commit that stores handed-in
runs has begun before the client gives up, or it never happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyq.clock import host_monotonic
from keyq.core.model import NewRun, RunId
from keyq.replies import Reply

ADOPT_MARGIN_S = 0.5  # the store adopts nothing this close to the client's deadline


@dataclass(eq=False, slots=True)
class HandIn:
    """Runs handed in, to be stored with the next step, and who waits for the answer."""

    runs: list[NewRun]
    reply: Reply[None]
    deadline: float | None  # None: a caller in this process, which waits as long as it takes

    @property
    def ids(self) -> set[RunId]:
        return {r.id for r in self.runs}


def too_late(deadline: float | None) -> bool:
    """True once a client may be storing its runs itself: they must not be adopted."""
    return deadline is not None and host_monotonic() >= deadline - ADOPT_MARGIN_S


def lock_wait_s(deadline: float | None) -> float | None:
    """How long a commit of runs handed in with ``deadline`` may wait for the write lock:
    it must have begun before the client gives up and stores them itself."""
    if deadline is None:
        return None
    return max(0.0, deadline - host_monotonic() - ADOPT_MARGIN_S / 2)
