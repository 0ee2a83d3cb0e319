"""The engine: every active run's state, slots and timers, decided without I/O.

The engine is a value-in, value-out object in the style of h11's
``ConnectionState``: its methods take ``now`` and mutate in-memory state, and
``tick(now)`` hands back one :class:`~keyq.core.model.Step` holding everything the
shell must do: the transitions to persist (in one transaction), then the runs
to start and the attempts to cancel. It never awaits, logs or reads a clock.
It composes the run book, the slots, the dispatcher, two deadline heaps, the
waits and the rules of runs not yet started (``unstarted``: TTL, debounce);
recovery and the shell's exceptional paths are in ``recovery``.

Invariants kept at every step (and checked by :meth:`Engine.audit`):

* a run is in exactly one state; final runs leave the engine;
* exactly the RUNNING runs hold a slot, one at every level;
* after ``tick``, no queued run could start within the limits (no idle slot);
* a slot is never taken beyond a limit (``Limits.acquire`` refuses).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from keyq.core.audit import audit
from keyq.core.dispatch import Dispatcher
from keyq.core.limits import Key, KeyRule, Limits, QueueLimit
from keyq.core.model import (
    RESUME_PRIORITY,
    Cancelled,
    CancelRequest,
    ChildResult,
    CountedStart,
    EngineStatistics,
    ErrorInfo,
    Outcome,
    RunId,
    RunSpec,
    Step,
    TaskPolicy,
    TokenExpiry,
    Wait,
    WaitForToken,
)
from keyq.core.outcomes import INTERRUPTED, Final, RetryAt, judge
from keyq.core.runbook import ActiveRun, RunBook
from keyq.core.states import (
    CANCELED,
    DELAYED,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    Reason,
    RunState,
)
from keyq.core.timers import Deadlines
from keyq.core.unstarted import Unstarted
from keyq.core.waits import Waits
from keyq.errors import RunStateError

DEFAULT_POLICY = TaskPolicy()
WAIT_ABANDONED = ErrorInfo(
    "WaitError", "the task ended while one of its waits was pending; await waits one at a time"
)


class Engine:
    """Holds the active runs and decides, on every tick, what starts next."""

    def __init__(
        self,
        limits: Limits | None = None,
        policies: Mapping[str, TaskPolicy] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self._policies: dict[str, TaskPolicy] = dict(policies or {})
        self._rng = rng if rng is not None else random.Random()
        self._book = RunBook()
        self._runs = self._book.runs  # the active runs by id (the book's)
        self._dispatcher = Dispatcher()
        self._wakeups: Deadlines[RunId] = Deadlines()  # DELAYED -> QUEUED, wait deadlines
        self._timeouts: Deadlines[RunId] = Deadlines()  # max_duration of RUNNING runs
        self.waits = Waits(self._runs, self._wakeups, self._resume)
        self._unstarted = Unstarted()  # TTLs and debounced runs, until their first start
        self._holding = False  # draining: start nothing new

    # --- runs entering ------------------------------------------------------------

    def submit(self, spec: RunSpec) -> bool:
        """Adopt a stored QUEUED or DELAYED run; False if the engine already has it."""
        if spec.id in self._runs:
            return False
        if spec.state not in (QUEUED, DELAYED):
            raise RunStateError(f"run {spec.id}: cannot submit a run that is {spec.state}")
        run = self._book.adopt(spec)
        if spec.expires_at is not None or spec.debounce_key is not None:
            self._unstarted.entered(spec)
        if run.state is DELAYED:
            self._wakeups.push(run.id, spec.available_at)
        else:
            self._dispatcher.push(run.id, run.queue, run.key, run.priority)
        return True

    def debounce(self, task: str, key: str, payload: str, at: float, now: float) -> RunId | None:
        """A debounced trigger folds into the DELAYED run of that task and key, if any: its
        payload replaces the run's and its start moves to ``at`` (at most the run's
        ``debounce_max``). That run's id, or None: the trigger makes a new run."""
        run_id = self._unstarted.target(task, key)
        if run_id is None:
            return None
        run, at = self._runs[run_id], self._unstarted.capped(run_id, at)
        run.payload = payload
        self._book.move(run, DELAYED, now, Reason.DEBOUNCED, available_at=at, payload=payload)
        self._wakeups.push(run_id, at)
        return run_id

    def stored(self, seqs: Mapping[RunId, int]) -> None:
        """Runs submitted before their rows existed (handed in, seq 0) are stored."""
        for run_id, seq in seqs.items():
            run = self._runs.get(run_id)
            if run is not None:
                run.seq = seq

    # --- outcomes from the shell ------------------------------------------------------

    def finished(
        self, run_id: RunId, outcome: Outcome, now: float, claim: int | None = None
    ) -> None:
        """An attempt ended; record it and free its slot. An attempt whose ``claim`` is
        not the run's latest (it was evicted, or the run was started again) is ignored."""
        run = self._runs.get(run_id)
        if run is None or (claim is not None and claim != run.claim):
            return  # already final (a canceled WAITING run reports its stopped coroutine)
        if run.state is WAITING or run.resume:
            self._ended_while_waiting(run, outcome, now)
            return
        if run.state is not RUNNING:
            raise RunStateError(f"run {run_id}: an attempt ended while the run is {run.state}")
        self._leave_running(run, now)
        policy = self._policy(run)
        v = judge(outcome, run.cancel_reason, run.attempt, run.max_attempts, policy, now, self._rng)
        run.cancel_reason = None
        if isinstance(v, Final):
            self._finish(run, v.state, now, v.reason, v.result, v.error)
        elif isinstance(v, RetryAt):
            self._book.move(run, DELAYED, now, Reason.RETRY, error=v.error, available_at=v.at)
            self._wakeups.push(run.id, v.at)
        else:
            self._interrupted(run, now)

    def _ended_while_waiting(self, run: ActiveRun, outcome: Outcome, now: float) -> None:
        """The task's code returned or raised while its wait was still pending (it
        ran two waits at once, say). The wait cannot be honoured: fail the run."""
        if isinstance(outcome, Cancelled):
            return  # a suspended coroutine stopped at shutdown: the stored state stands
        self._wakeups.cancel(run.id)
        if run.state is QUEUED:
            self._dispatcher.discard(run.id)
        run.wait, run.resume = None, False
        self._finish(run, FAILED, now, Reason.FAILED, error=WAIT_ABANDONED)

    def wait(
        self,
        run_id: RunId,
        wait: Wait,
        now: float,
        known: Mapping[RunId, ChildResult] | None = None,
        claim: int | None = None,
    ) -> bool:
        """A RUNNING run reached a waitpoint: it gives its slot back and waits.

        For children, ``known`` carries the results of children that were
        already final before this wait (an idempotency key matched an old run):
        the shell reads them from the store, see :meth:`unresolved_children`.
        Returns False, changing nothing, if the attempt is being stopped: its
        outcome decides the run and the wait never happened.
        """
        run = self._book.require(run_id, RUNNING)
        if run.cancel_reason is not None or (claim is not None and claim != run.claim):
            return False
        self._leave_running(run, now)
        run.wait = wait
        self._book.move(run, WAITING, now, Reason.WAIT)
        self.waits.arm(run, wait, now)
        if known:
            self.waits.hear(run.id, known, now)
        return True

    def cancel(self, run_id: RunId, now: float) -> None:
        """Cancel an active run and its active children (and theirs). A RUNNING one
        ends when its attempt has stopped."""
        run = self._runs.get(run_id)
        if run is None:
            raise RunStateError(f"run {run_id} is not active")
        for child_id in self._book.children_of(run_id):
            if child_id in self._runs:  # a cascade may have ended it already
                self.cancel(child_id, now)
        if run.state is RUNNING:
            if run.cancel_reason is not Reason.CANCELED:
                run.cancel_reason = Reason.CANCELED
                self._book.cancels.append(run.id)
                self._book.cancel_requests.append(CancelRequest(run.id, run.seq, now))
            return
        if run.state is QUEUED:
            self._dispatcher.discard(run.id)
        if run.state is WAITING or run.resume:
            self._book.cancels.append(run.id)  # stop the suspended coroutine
        self._finish(run, CANCELED, now, Reason.CANCELED)

    def hold_starts(self) -> None:
        """Start nothing from now on (graceful shutdown); running attempts carry on."""
        self._holding = True

    def interrupt_all(self, now: float) -> None:
        """Ask every RUNNING attempt to stop, to be re-queued (shutdown past its grace)."""
        for run in self._runs.values():
            if run.state is RUNNING and run.cancel_reason is None:
                run.cancel_reason = Reason.INTERRUPTED
                self._book.cancels.append(run.id)

    # --- limits ----------------------------------------------------------------------

    def set_environment(self, concurrency: int, burst_factor: float) -> None:
        self.limits.set_environment(concurrency, burst_factor)
        self._dispatcher.limits_changed(self.limits)

    def configure_limits(
        self,
        queues: Mapping[str, tuple[QueueLimit, bool]],
        keys: Mapping[tuple[str, Key], KeyRule],
    ) -> None:
        """Replace every queue and key setting at once (start-up, reload): a queue or
        key not given goes back to no limit and not paused."""
        self.limits.configure(queues, keys)
        self._dispatcher.limits_changed(self.limits)

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> Step:
        """Fire due timers, start what may start, and hand back everything to do."""
        self.limits.advance(now)
        if self._unstarted:
            for run_id in self._unstarted.expired(now):  # before its delay can end
                self._expire(self._runs[run_id], now)
        for run_id in self._wakeups.pop_due(now):
            run = self._runs[run_id]
            if run.state is DELAYED:
                if self._unstarted:
                    self._unstarted.delay_over(run_id)
                self._book.move(run, QUEUED, now, Reason.DELAY_OVER)
                self._dispatcher.push(run.id, run.queue, run.key, run.priority)
            elif isinstance(run.wait, WaitForToken):
                self._book.expired.append(TokenExpiry(run.id, run.wait.token_id, now))
                self._resume(run, now, Reason.TOKEN_TIMEOUT)
            else:
                self._resume(run, now, Reason.WAIT_DONE)
        for run_id in self._timeouts.pop_due(now):
            run = self._runs[run_id]
            if run.cancel_reason is None:
                run.cancel_reason = Reason.TIMEOUT
                self._book.cancels.append(run_id)
        self._dispatcher.rates_passed(now, self.limits)
        self._dispatch(now)
        return self._book.take_step()

    def next_deadline(self) -> float | None:
        """When ``tick`` next has timed work to do, or None."""
        deadlines = (
            self._wakeups.next_deadline(),
            self._timeouts.next_deadline(),
            self._unstarted.next_deadline(),
            self.limits.next_rate_pass() if len(self._dispatcher) else None,  # none held back
        )
        return min((d for d in deadlines if d is not None), default=None)

    # --- inspection -------------------------------------------------------------------

    def __contains__(self, run_id: RunId) -> bool:
        return run_id in self._runs

    def holds(self, run_id: RunId, claim: int) -> bool:
        """True if the run is active and ``claim`` is its latest attempt's."""
        run = self._runs.get(run_id)
        return run is not None and run.claim == claim

    def state_of(self, run_id: RunId) -> RunState | None:
        run = self._runs.get(run_id)
        return run.state if run is not None else None

    def __len__(self) -> int:
        return len(self._runs)

    def statistics(self) -> EngineStatistics:
        c = self._book.counts
        return EngineStatistics(
            queued=c[QUEUED],
            delayed=c[DELAYED],
            running=c[RUNNING],
            waiting=c[WAITING],
            burst_limit=self.limits.burst,
            base_limit=self.limits.base,
        )

    def queued_in(self, queue: str, key: Key) -> int:
        return self._dispatcher.queued_in(queue, key)

    def audit(self) -> list[str]:
        """Check every invariant by a full walk (tests, ``keyq doctor``; never the hot path)."""
        return audit(
            self._runs,
            self._book.counts,
            self.limits,
            self._dispatcher,
            self._holding,
            self._unstarted.indexed(),
        )

    # --- internals ----------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        if self._holding:
            return
        while (popped := self._dispatcher.pop(self.limits)) is not None:
            self._start(self._runs[popped.run_id], now)

    def _start(self, run: ActiveRun, now: float) -> None:
        if self.limits.acquire(run.id, run.queue, run.key):
            self._book.counted.append(CountedStart(run.queue, run.key, now))
        if run.resume:
            reason = Reason.RESUMED
        else:
            run.attempt += 1
            run.used_s = 0.0
            reason = Reason.RESTARTED if run.restart else Reason.STARTED
        if self._unstarted:
            self._unstarted.left(run.id)
        children = self.waits.results_for(run) if run.resume else ()
        resumed, run.resume, run.restart, run.wait = run.resume, False, False, None
        self._book.move(run, RUNNING, now, reason)
        run.span_started_at = now
        run.claim += 1
        budget = self._policy(run).max_duration_s
        if budget is not None:
            self._timeouts.push(run.id, now + max(0.0, budget - run.used_s))
        self._book.start(run, resumed, children)

    def _leave_running(self, run: ActiveRun, now: float) -> None:
        self.limits.advance(now)
        self._timeouts.cancel(run.id)
        run.used_s += now - run.span_started_at
        self.limits.release(run.id)
        self._dispatcher.unblocked(run.queue, run.key, self.limits)

    def _interrupted(self, run: ActiveRun, now: float) -> None:
        """The attempt was cut short (shutdown, crash): run again, if attempts are left."""
        run.cancel_reason = None
        if run.attempt < run.max_attempts:
            run.restart = True
            if run.state is not QUEUED:  # recovered runs may be queued to resume
                self._book.move(run, QUEUED, now, Reason.INTERRUPTED)
            self._dispatcher.push(run.id, run.queue, run.key, run.priority)
        else:
            self._finish(run, FAILED, now, Reason.INTERRUPTED, error=INTERRUPTED)

    def _expire(self, run: ActiveRun, now: float) -> None:
        """Not started within its TTL: canceled, whether delayed or queued."""
        if run.state is QUEUED:
            self._dispatcher.discard(run.id)
        self._finish(run, CANCELED, now, Reason.TTL_EXPIRED)

    def _resume(self, run: ActiveRun, now: float, reason: Reason) -> None:
        self.waits.forget_token(run)
        run.resume = True
        self._book.move(run, QUEUED, now, reason)
        self._dispatcher.push(run.id, run.queue, run.key, RESUME_PRIORITY)

    def _finish(
        self,
        run: ActiveRun,
        to: RunState,
        now: float,
        reason: Reason,
        result: str | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        self._book.move(run, to, now, reason, result=result, error=error)
        self._book.remove(run)  # final runs leave the engine
        self._wakeups.cancel(run.id)
        self._timeouts.cancel(run.id)
        if self._unstarted:
            self._unstarted.left(run.id)
        self.waits.final(run, lambda: ChildResult(run.id, to, result, error), now)

    def _policy(self, run: ActiveRun) -> TaskPolicy:
        return self._policies.get(run.task, DEFAULT_POLICY)
