"""What WAITING runs wait for, and when each wait is over.

A run waits on a timer, a waitpoint token, or child runs. A parent hears from
its own children when they finish; a run waiting on runs that are not its
children (an idempotency key matched an older run) watches them. Results of
children that were final before the wait (or before a restart) are told by
the shell, which reads them from the store. When a wait is over the run is
handed to ``resume`` (the engine queues it ahead of fresh runs). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from keyq.core.model import ChildResult, RunId, Wait, WaitChildren, WaitForToken, WaitUntil
from keyq.core.runbook import ActiveRun
from keyq.core.states import WAITING, Reason
from keyq.core.timers import Deadlines

Resume = Callable[[ActiveRun, float, Reason], None]


class Waits:
    """Token waiters, child watchers, each waiter's children heard from, and the rule
    that ends a wait."""

    def __init__(
        self, runs: Mapping[RunId, ActiveRun], wakeups: Deadlines[RunId], resume: Resume
    ) -> None:
        self._runs = runs
        self._wakeups = wakeups  # the engine's: a wait's time, or a token's timeout
        self._resume = resume
        self._on_token: dict[str, dict[RunId, None]] = {}  # token -> runs waiting on it
        self._watchers: dict[RunId, list[RunId]] = {}  # child -> waiting non-parents
        self._heard: dict[RunId, dict[RunId, ChildResult]] = {}  # waiter -> children's results

    def arm(self, run: ActiveRun, wait: Wait, now: float) -> None:
        """Set up what ends a WAITING run's wait: a timer, a token, its children."""
        run.wait = wait
        if isinstance(wait, WaitUntil):
            self._wakeups.push(run.id, wait.resume_at)
            return
        if isinstance(wait, WaitForToken):
            self._on_token.setdefault(wait.token_id, {})[run.id] = None
            if wait.timeout_at is not None:
                self._wakeups.push(run.id, wait.timeout_at)
            return
        for child in wait.child_ids:
            active = self._runs.get(child)
            if active is not None and active.parent_id != run.id:
                self._watchers.setdefault(child, []).append(run.id)
        self._resume_if_children_done(run, now)

    # --- tokens ----------------------------------------------------------------------------

    @property
    def on_tokens(self) -> bool:
        """True while some run waits on a waitpoint token."""
        return bool(self._on_token)

    def tokens(self) -> list[str]:
        return list(self._on_token)

    def token_done(self, token_id: str, now: float) -> None:
        """A waitpoint token was completed (or timed out): its waiting runs resume."""
        for run_id in list(self._on_token.get(token_id, ())):
            run = self._runs[run_id]
            if run.state is WAITING:
                self._wakeups.cancel(run.id)
                self._resume(run, now, Reason.TOKEN_COMPLETED)

    def forget_token(self, run: ActiveRun) -> None:
        """The run no longer waits on its token (it resumed, or it is final)."""
        if isinstance(run.wait, WaitForToken):
            waiters = self._on_token.get(run.wait.token_id)
            if waiters is not None:
                waiters.pop(run.id, None)
                if not waiters:
                    del self._on_token[run.wait.token_id]

    # --- children --------------------------------------------------------------------------

    def hear(self, waiter_id: RunId, results: Mapping[RunId, ChildResult], now: float) -> None:
        """Results of children of ``waiter_id`` (finished, or final before it waited)."""
        run = self._runs.get(waiter_id)
        if run is not None:
            self._heard.setdefault(waiter_id, {}).update(results)
            self._resume_if_children_done(run, now)

    def final(self, run: ActiveRun, outcome: Callable[[], ChildResult], now: float) -> None:
        """``run`` is final: its token wait and what it heard go, and its parent and its
        watchers hear how it ended (``outcome``, built only if someone listens)."""
        if isinstance(run.wait, WaitForToken):
            self.forget_token(run)
        if self._heard:
            self._heard.pop(run.id, None)
        waiting = self._watchers.pop(run.id, None) if self._watchers else None
        if run.parent_id is None and not waiting:
            return  # the common case: nobody waits on it
        waiting = waiting or []
        if run.parent_id is not None:
            waiting.append(run.parent_id)
        child = outcome()
        for waiter_id in waiting:
            self.hear(waiter_id, {child.run_id: child}, now)

    def unresolved(self, run_id: RunId, child_ids: Sequence[RunId]) -> list[RunId]:
        """Children the engine cannot follow: neither active nor already heard of."""
        heard = self._heard.get(run_id, _NONE)
        return [c for c in child_ids if c not in self._runs and c not in heard]

    def results_for(self, run: ActiveRun) -> tuple[ChildResult, ...]:
        """For a run resuming from a wait on children: their results in wait order,
        forgotten here; () unless all are known (after a restart the shell reads them)."""
        if not (run.resume and isinstance(run.wait, WaitChildren)):
            return ()
        ids = run.wait.child_ids  # may repeat: two items with one idempotency key
        heard = self._heard.pop(run.id, _NONE)
        results = tuple(heard[c] for c in ids if c in heard)
        return results if len(results) == len(ids) else ()

    def _resume_if_children_done(self, run: ActiveRun, now: float) -> None:
        wait = run.wait
        if run.state is WAITING and isinstance(wait, WaitChildren):
            heard = self._heard.get(run.id, _NONE)
            if all(c in heard for c in wait.child_ids):
                self._resume(run, now, Reason.CHILDREN_DONE)


_NONE: Mapping[RunId, ChildResult] = {}
