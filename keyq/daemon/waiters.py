"""Who waits on the daemon: callers of ``result`` and ``until_idle``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import anyio

from keyq.core.model import RunId, Transition
from keyq.core.states import FINAL
from keyq.replies import Pending
from keyq.results import RunResult


class Waiters:
    """Callers waiting for a run to end, or for the daemon to have caught up."""

    def __init__(self) -> None:
        self._results: dict[RunId, list[Pending[RunResult]]] = {}
        self._idle: list[tuple[anyio.Event, bool]] = []

    @contextmanager
    def result_of(self, run_id: RunId) -> Iterator[Pending[RunResult]]:
        """A reply set when ``run_id`` turns final; held only inside the ``with``."""
        pending: Pending[RunResult] = Pending()
        self._results.setdefault(run_id, []).append(pending)
        try:
            yield pending
        finally:
            waiters = self._results.get(run_id)
            if waiters and pending in waiters:
                waiters.remove(pending)
                if not waiters:
                    del self._results[run_id]

    def ended(self, transitions: Iterable[Transition]) -> None:
        """Answer whoever waits on a run these (durable) transitions made final."""
        if not self._results:
            return
        for t in transitions:
            if t.to in FINAL and t.run_id in self._results:
                result = RunResult.from_stored(t.run_id, t.to, t.result, t.error)
                for pending in self._results.pop(t.run_id):
                    pending.set(result)

    def idle(self, *, attempts: bool) -> anyio.Event:
        """An event set at the next idle moment (with no attempt executing, if asked)."""
        event = anyio.Event()
        self._idle.append((event, attempts))
        return event

    def caught_up(self, executing: bool) -> None:
        """The daemon has nothing due: wake the idle waiters this satisfies."""
        if not self._idle:
            return
        still: list[tuple[anyio.Event, bool]] = []
        for event, attempts in self._idle:
            if attempts and executing:
                still.append((event, attempts))
            else:
                event.set()
        self._idle = still
