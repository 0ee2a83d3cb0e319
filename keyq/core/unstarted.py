"""Runs that have not started yet: their TTL timers and the debounce index.

A run's ``ttl`` and ``debounce`` only matter until its first attempt starts:
a run not started by its ``expires_at`` is canceled (a deadline here, never a
scan), and while a debounced run is still DELAYED a later trigger with the
same task and debounce key folds into it instead of making a new run. Both
are forgotten at the first start, so a retry's backoff is neither expired nor
debounced. Pure: the engine asks, and moves its runs itself.
"""

from __future__ import annotations

from keyq.core.model import RunId, RunSpec
from keyq.core.states import DELAYED
from keyq.core.timers import Deadlines

Scope = tuple[str, str]  # (task id, debounce key)


class Unstarted:
    """TTL deadlines and the debounced DELAYED runs, by run id; empty when unused."""

    def __init__(self) -> None:
        self._expiries: Deadlines[RunId] = Deadlines()
        self._debounced: dict[Scope, RunId] = {}
        self._caps: dict[RunId, tuple[Scope, float]] = {}  # run -> its scope, latest start

    def __bool__(self) -> bool:
        """True while some run has a TTL or is debounced (the engine's hot path asks)."""
        return bool(self._caps) or bool(self._expiries)

    def entered(self, spec: RunSpec) -> None:
        """A run joined the engine: arm its TTL and index it if it is debounced."""
        if spec.attempt:
            return  # it started before: neither rule applies any more
        if spec.expires_at is not None:
            self._expiries.push(spec.id, spec.expires_at)
        if spec.debounce_key is not None and spec.state is DELAYED:
            scope = (spec.task, spec.debounce_key)
            until = spec.debounce_until if spec.debounce_until is not None else spec.available_at
            self._debounced[scope] = spec.id
            self._caps[spec.id] = (scope, until)

    def target(self, task: str, debounce_key: str) -> RunId | None:
        """The DELAYED run a trigger with this task and key folds into, if any."""
        return self._debounced.get((task, debounce_key))

    def capped(self, run_id: RunId, at: float) -> float:
        """``at``, or the run's latest allowed start (``debounce_max``) if earlier."""
        return min(at, self._caps[run_id][1])

    def delay_over(self, run_id: RunId) -> None:
        """The run left DELAYED: later triggers make a new run."""
        capped = self._caps.pop(run_id, None)
        if capped is not None and self._debounced.get(capped[0]) == run_id:
            del self._debounced[capped[0]]

    def left(self, run_id: RunId) -> None:
        """The run started (its first attempt) or ended: forget both rules for it."""
        self._expiries.cancel(run_id)
        self.delay_over(run_id)

    def expired(self, now: float) -> list[RunId]:
        """Runs whose TTL ran out, earliest first (each is then forgotten here)."""
        due = self._expiries.pop_due(now)
        for run_id in due:
            self.delay_over(run_id)
        return due

    def next_deadline(self) -> float | None:
        return self._expiries.next_deadline()

    def indexed(self) -> list[tuple[Scope, RunId]]:
        """Every debounce scope and the run it names (``Engine.audit``)."""
        return list(self._debounced.items())
