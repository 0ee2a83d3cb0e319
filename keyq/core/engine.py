"""The engine: every active run's state, slots and timers, decided without I/O.

The engine is a value-in, value-out object in the style of h11's
``ConnectionState``: its methods take ``now`` and mutate in-memory state, and
``tick(now)`` hands back one :class:`~keyq.core.model.Step` holding everything the
shell must do: the transitions to persist (in one transaction), then the runs
to start and the attempts to cancel. It never awaits, logs or reads a clock.

Invariants kept at every step (and checked by :meth:`Engine.audit`):

* a run is in exactly one state; final runs leave the engine;
* exactly the RUNNING runs hold a slot, one at every level;
* after ``tick``, no queued run could start within the limits (no idle slot);
* a slot is never taken beyond a limit (``Limits.acquire`` refuses).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from keyq.core.dispatch import Dispatcher
from keyq.core.limits import Key, Limits, QueueLimit
from keyq.core.model import (
    RESUME_PRIORITY,
    Cancelled,
    CancelRequest,
    ChildResult,
    Completed,
    ErrorInfo,
    Failed,
    Outcome,
    RunId,
    RunSpec,
    StartRun,
    Step,
    TokenExpiry,
    Transition,
    Wait,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.core.states import (
    CANCELED,
    COMPLETED,
    DELAYED,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    Reason,
    RunState,
    check_transition,
)
from keyq.core.timers import Deadlines
from keyq.errors import RunStateError


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """What the engine needs to know of a task: its retry policy and time budget."""

    retry: Retry = DEFAULT_RETRY
    max_duration_s: float | None = None


DEFAULT_POLICY = TaskPolicy()
INTERRUPTED = ErrorInfo("Interrupted", "the daemon stopped during the last attempt")
WAIT_ABANDONED = ErrorInfo(
    "WaitError", "the task ended while one of its waits was pending; await waits one at a time"
)


@dataclass(slots=True, eq=False)
class _Run:
    id: RunId
    seq: int
    task: str
    queue: str
    key: Key
    priority: int
    payload: str
    max_attempts: int
    state: RunState
    attempt: int
    parent_id: RunId | None
    wait: Wait | None = None
    resume: bool = False  # the next start continues a waiting attempt
    restart: bool = False  # the next start follows an interrupted attempt
    cancel_reason: Reason | None = None  # why the engine asked the runner to stop
    used_s: float = 0.0  # running time spent by the current attempt
    span_started_at: float = 0.0
    claim: int = 0  # +1 at every start or resume: events about older ones are refused
    # Results of waited children reported so far; None until the first (most runs never wait).
    child_results: dict[RunId, ChildResult] | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery could not settle from the runs alone: the shell reads the rest.

    ``children`` maps each waiting run to the children it waits for that are
    neither active nor known (final before the restart); ``tokens`` lists the
    waitpoint tokens waiting runs wait for (completed, maybe, while stopped).
    """

    children: dict[RunId, list[RunId]]
    tokens: list[str]


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counts of active runs by state, and of slots in use."""

    queued: int
    delayed: int
    running: int
    waiting: int
    burst_limit: int
    base_limit: int


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
        self._runs: dict[RunId, _Run] = {}
        self._dispatcher = Dispatcher()
        self._wakeups: Deadlines[RunId] = Deadlines()  # DELAYED -> QUEUED, wait deadlines
        self._timeouts: Deadlines[RunId] = Deadlines()  # max_duration of RUNNING runs
        self._counts: Counter[RunState] = Counter()
        self._watchers: dict[RunId, list[RunId]] = {}  # child -> waiting non-parents
        self._children: dict[RunId, dict[RunId, None]] = {}  # parent -> its active children
        self._token_waiters: dict[str, dict[RunId, None]] = {}  # token -> runs waiting on it
        self._holding = False  # draining: start nothing new
        self._transitions: list[Transition] = []
        self._starts: list[StartRun] = []
        self._cancels: list[RunId] = []
        self._cancel_requests: list[CancelRequest] = []
        self._expired: list[TokenExpiry] = []  # token waits ended by their timeout

    # --- runs entering ------------------------------------------------------------

    def submit(self, spec: RunSpec) -> bool:
        """Adopt a stored QUEUED or DELAYED run; False if the engine already has it."""
        if spec.id in self._runs:
            return False
        if spec.state not in (QUEUED, DELAYED):
            raise RunStateError(f"run {spec.id}: cannot submit a run that is {spec.state}")
        run = self._adopt(spec)
        if run.state is DELAYED:
            self._wakeups.push(run.id, spec.available_at)
        else:
            self._dispatcher.push(run.id, run.queue, run.key, run.priority)
        return True

    def stored(self, seqs: Mapping[RunId, int]) -> None:
        """Runs submitted before their rows existed (handed in, seq 0) are stored."""
        for run_id, seq in seqs.items():
            run = self._runs.get(run_id)
            if run is not None:
                run.seq = seq

    def adopt(self, specs: Iterable[RunSpec]) -> None:
        """Take stored runs exactly as they are, to operate on them without running them
        (a cancel while no daemon runs): a RUNNING one holds its slot as if its attempt
        were alive, a WAITING one waits on its waitpoint. Start nothing afterwards
        (:meth:`hold_starts`); an attempt asked to stop has stopped, so report it."""
        for spec in specs:
            if spec.state in (QUEUED, DELAYED) and spec.wait is None:
                self.submit(spec)
                continue
            run = self._adopt(spec)
            if run.state is RUNNING:
                self.limits.acquire(run.id, run.queue, run.key)
            elif run.state is WAITING and spec.wait is not None:
                self._await(run, spec.wait, 0.0)
            elif run.state is QUEUED:  # queued to resume its wait
                run.resume = True
                self._dispatcher.push(run.id, run.queue, run.key, RESUME_PRIORITY)

    def withdraw(self, run_ids: Iterable[RunId]) -> None:
        """Forget runs submitted before their rows existed whose commit failed, as if
        they had never been triggered: their trigger is answered with the error, so
        nothing may run them later. Their transitions are not to be recorded."""
        for run_id in run_ids:
            run = self._runs.pop(run_id, None)
            if run is None:
                continue
            if run.state is RUNNING:
                self._leave_running(run, run.span_started_at)
            elif run.state is QUEUED:
                self._dispatcher.discard(run.id)
            self._wakeups.cancel(run.id)
            self._counts[run.state] -= 1
            self._forget_child(run)

    def abandon(self, run_id: RunId, now: float, error: ErrorInfo) -> bool:
        """The database refused a change of this run for good: fail the run (stopping
        its attempt), so that it holds nothing and the rest goes on. False if the run
        is no longer active."""
        run = self._runs.get(run_id)
        if run is None:
            return False
        if run.state is RUNNING:
            self._leave_running(run, now)
            self._cancels.append(run.id)
        elif run.state is QUEUED:
            self._dispatcher.discard(run.id)
        if run.state is WAITING or run.resume:
            self._cancels.append(run.id)  # its suspended coroutine
        run.cancel_reason, run.resume = None, False
        self._finish(run, FAILED, now, Reason.UNRECORDABLE, error=error)
        return True

    def recover(self, specs: Iterable[RunSpec], now: float) -> Recovered:
        """Adopt the runs loaded at start-up, where they were.

        A WAITING run waits again on its stored waitpoint, and a run queued to
        resume still resumes first: their coroutines are gone, so the shell
        resumes them by replay. A RUNNING run's attempt was cut short: it is
        re-queued as interrupted if it has attempts left, else FAILED.
        """
        waiting: list[tuple[_Run, Wait]] = []
        for spec in specs:
            if spec.id in self._runs:
                continue
            if spec.cancel_requested:  # acknowledged before the crash: honour it now
                self._finish(self._adopt(spec), CANCELED, now, Reason.CANCELED)
            elif spec.state is WAITING and spec.wait is not None:
                waiting.append((self._adopt(spec), spec.wait))
            elif spec.state is QUEUED and spec.wait is not None:
                run = self._adopt(spec)
                run.resume = True
                self._dispatcher.push(run.id, run.queue, run.key, RESUME_PRIORITY)
            elif spec.state in (RUNNING, WAITING):
                self._interrupted(self._adopt(spec), now)
            else:
                self.submit(spec)
        # Children are adopted after their parents (by seq): set the waits up last.
        unknown: dict[RunId, list[RunId]] = {}
        for run, wait in waiting:
            self._await(run, wait, now)
            if isinstance(wait, WaitChildren) and run.state is WAITING:
                missing = self.unresolved_children(run.id, wait.child_ids)
                if missing:
                    unknown[run.id] = missing
        return Recovered(unknown, list(self._token_waiters))

    def children_known(self, run_id: RunId, known: Mapping[RunId, ChildResult], now: float) -> None:
        """Results of children that were final before a restart (read by the shell)."""
        run = self._runs.get(run_id)
        if run is not None:
            _results(run).update(known)
            self._resume_if_children_done(run, now)

    @property
    def waits_for_tokens(self) -> bool:
        """True while some run waits on a waitpoint token."""
        return bool(self._token_waiters)

    def token_done(self, token_id: str, now: float) -> None:
        """A waitpoint token was completed (or timed out): its waiting runs resume."""
        for run_id in list(self._token_waiters.get(token_id, ())):
            run = self._runs[run_id]
            if run.state is WAITING:
                self._wakeups.cancel(run.id)
                self._resume(run, now, Reason.TOKEN_COMPLETED)

    def _adopt(self, spec: RunSpec) -> _Run:
        run = _Run(  # positional: a million of these at recovery (bench/scale)
            spec.id,
            spec.seq,
            spec.task,
            spec.queue,
            spec.concurrency_key,
            spec.priority,
            spec.payload,
            spec.max_attempts,
            spec.state,
            spec.attempt,
            spec.parent_id,
            spec.wait,
        )
        self._runs[run.id] = run
        self._counts[run.state] += 1
        if run.parent_id is not None:
            self._children.setdefault(run.parent_id, {})[run.id] = None
        return run

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
        if isinstance(outcome, Failed) and run.cancel_reason is not Reason.CANCELED:
            self._attempt_failed(run, now, outcome.error, outcome.retryable, Reason.FAILED)
        elif run.cancel_reason is Reason.TIMEOUT:  # past its budget, even if a thread then returned
            budget = self._policy(run).max_duration_s
            timeout = ErrorInfo("Timeout", f"attempt exceeded max_duration of {budget} s")
            self._attempt_failed(run, now, timeout, True, Reason.TIMEOUT)
        elif isinstance(outcome, Completed):
            self._finish(run, COMPLETED, now, Reason.COMPLETED, result=outcome.result)
        elif run.cancel_reason is Reason.CANCELED:  # a cancel wins over a retry
            cause = outcome.error if isinstance(outcome, Failed) else None
            self._finish(run, CANCELED, now, Reason.CANCELED, error=cause)
        else:
            self._interrupted(run, now)

    def _ended_while_waiting(self, run: _Run, outcome: Outcome, now: float) -> None:
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
        run = self._require(run_id, RUNNING)
        if run.cancel_reason is not None or (claim is not None and claim != run.claim):
            return False
        self._leave_running(run, now)
        run.wait = wait
        self._move(run, WAITING, now, Reason.WAIT)
        if known:
            _results(run).update(known)
        self._await(run, wait, now)
        return True

    def _await(self, run: _Run, wait: Wait, now: float) -> None:
        """Arm what ends a WAITING run's wait: a timer, a token, its children."""
        run.wait = wait
        if isinstance(wait, WaitUntil):
            self._wakeups.push(run.id, wait.resume_at)
            return
        if isinstance(wait, WaitForToken):
            self._token_waiters.setdefault(wait.token_id, {})[run.id] = None
            if wait.timeout_at is not None:
                self._wakeups.push(run.id, wait.timeout_at)
            return
        for child in wait.child_ids:
            active = self._runs.get(child)
            if active is not None and active.parent_id != run.id:
                self._watchers.setdefault(child, []).append(run.id)
        self._resume_if_children_done(run, now)

    def unresolved_children(self, run_id: RunId, child_ids: tuple[RunId, ...]) -> list[RunId]:
        """Children the engine cannot follow: neither active nor already reported."""
        run = self._runs.get(run_id)
        results = (run.child_results if run is not None else None) or _NO_RESULTS
        return [c for c in child_ids if c not in self._runs and c not in results]

    def cancel(self, run_id: RunId, now: float) -> None:
        """Cancel an active run and its active children (and theirs). A RUNNING one
        ends when its attempt has stopped."""
        run = self._runs.get(run_id)
        if run is None:
            raise RunStateError(f"run {run_id} is not active")
        for child_id in list(self._children.get(run_id, ())):
            if child_id in self._runs:
                self.cancel(child_id, now)
        if run.state is RUNNING:
            if run.cancel_reason is not Reason.CANCELED:
                run.cancel_reason = Reason.CANCELED
                self._cancels.append(run.id)
                self._cancel_requests.append(CancelRequest(run.id, run.seq, now))
            return
        if run.state is QUEUED:
            self._dispatcher.discard(run.id)
        if run.state is WAITING or run.resume:
            self._cancels.append(run.id)  # stop the suspended coroutine
        self._finish(run, CANCELED, now, Reason.CANCELED)

    def hold_starts(self) -> None:
        """Start nothing from now on (graceful shutdown); running attempts carry on."""
        self._holding = True

    def interrupt_all(self, now: float) -> None:
        """Ask every RUNNING attempt to stop, to be re-queued (shutdown past its grace)."""
        for run in self._runs.values():
            if run.state is RUNNING and run.cancel_reason is None:
                run.cancel_reason = Reason.INTERRUPTED
                self._cancels.append(run.id)

    # --- limits ----------------------------------------------------------------------

    def set_environment(self, concurrency: int, burst_factor: float) -> None:
        self.limits.set_environment(concurrency, burst_factor)
        self._dispatcher.limits_changed(self.limits)

    def configure_limits(
        self,
        queues: Mapping[str, tuple[QueueLimit, bool]],
        keys: Mapping[tuple[str, Key], tuple[int | None, bool]],
    ) -> None:
        """Replace every queue and key setting at once (start-up, reload): a queue or
        key not given goes back to no limit and not paused."""
        for name in self.limits.queue_names():
            if name not in queues:
                self.limits.set_queue(name, QueueLimit())
                self.limits.set_queue_paused(name, False)
        for name, (limit, paused) in queues.items():
            self.limits.set_queue(name, limit)
            self.limits.set_queue_paused(name, paused)
        self.limits.clear_key_settings()
        for (queue, key), (key_limit, paused) in keys.items():
            self.limits.set_key_limit(queue, key, key_limit)
            self.limits.set_key_paused(queue, key, paused)
        self._dispatcher.limits_changed(self.limits)

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> Step:
        """Fire due timers, start what may start, and hand back everything to do."""
        for run_id in self._wakeups.pop_due(now):
            run = self._runs[run_id]
            if run.state is DELAYED:
                self._move(run, QUEUED, now, Reason.DELAY_OVER)
                self._dispatcher.push(run.id, run.queue, run.key, run.priority)
            elif isinstance(run.wait, WaitForToken):
                self._expired.append(TokenExpiry(run.id, run.wait.token_id, now))
                self._resume(run, now, Reason.TOKEN_TIMEOUT)
            else:
                self._resume(run, now, Reason.WAIT_DONE)
        for run_id in self._timeouts.pop_due(now):
            run = self._runs[run_id]
            if run.cancel_reason is None:
                run.cancel_reason = Reason.TIMEOUT
                self._cancels.append(run_id)
        self._dispatch(now)
        return self._take_step()

    def next_deadline(self) -> float | None:
        """When ``tick`` next has timed work to do, or None."""
        deadlines = (self._wakeups.next_deadline(), self._timeouts.next_deadline())
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

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
        c = self._counts
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
        problems: list[str] = []
        by_state = Counter(run.state for run in self._runs.values())
        if +by_state != +self._counts:
            problems.append(f"state counts {dict(self._counts)} != actual {dict(by_state)}")
        for run in self._runs.values():
            holds = self.limits.holds(run.id)
            if holds != (run.state is RUNNING):
                problems.append(f"run {run.id} is {run.state} and holds a slot: {holds}")
            if run.state is QUEUED and run.id not in self._dispatcher:
                problems.append(f"run {run.id} is queued but not in the dispatcher")
            idle_slot = not self._holding and self.limits.can_start(run.queue, run.key)
            if run.state is QUEUED and idle_slot:
                problems.append(f"run {run.id} could start but is left queued")
        if self.limits.running != by_state[RUNNING]:
            problems.append(f"{self.limits.running} slots held by {by_state[RUNNING]} runs")
        return problems

    # --- internals ----------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        if self._holding:
            return
        while (popped := self._dispatcher.pop(self.limits)) is not None:
            self._start(self._runs[popped.run_id], now)

    def _start(self, run: _Run, now: float) -> None:
        self.limits.acquire(run.id, run.queue, run.key)
        if run.resume:
            reason = Reason.RESUMED
        else:
            run.attempt += 1
            run.used_s = 0.0
            reason = Reason.RESTARTED if run.restart else Reason.STARTED
        children = self._waited_children(run)
        resumed, run.resume, run.restart, run.wait = run.resume, False, False, None
        self._move(run, RUNNING, now, reason)
        run.span_started_at = now
        run.claim += 1
        budget = self._policy(run).max_duration_s
        if budget is not None:
            self._timeouts.push(run.id, now + max(0.0, budget - run.used_s))
        self._starts.append(
            StartRun(
                run.id,
                run.task,
                run.queue,
                run.key,
                run.attempt,
                run.payload,
                resumed,
                children,
                run.claim,
            )
        )

    def _waited_children(self, run: _Run) -> tuple[ChildResult, ...]:
        """The waited children's results, in wait order; () unless all are known
        (after a restart the shell reads them from the store)."""
        if not (run.resume and isinstance(run.wait, WaitChildren)):
            return ()
        ids = run.wait.child_ids  # may repeat: two items with one idempotency key
        known = run.child_results or _NO_RESULTS
        results = tuple(known[c] for c in ids if c in known)
        run.child_results = None
        return results if len(results) == len(ids) else ()

    def _leave_running(self, run: _Run, now: float) -> None:
        self._timeouts.cancel(run.id)
        run.used_s += now - run.span_started_at
        self.limits.release(run.id)
        self._dispatcher.unblocked(run.queue, run.key, self.limits)

    def _attempt_failed(
        self, run: _Run, now: float, error: ErrorInfo, retryable: bool, reason: Reason
    ) -> None:
        run.cancel_reason = None
        if retryable and run.attempt < run.max_attempts:
            retry_at = now + self._policy(run).retry.delay_s(run.attempt, self._rng)
            self._move(run, DELAYED, now, Reason.RETRY, error=error, available_at=retry_at)
            self._wakeups.push(run.id, retry_at)
        else:
            self._finish(run, FAILED, now, reason, error=error)

    def _interrupted(self, run: _Run, now: float) -> None:
        """The attempt was cut short (shutdown, crash): run again, if attempts are left."""
        run.cancel_reason = None
        if run.attempt < run.max_attempts:
            run.restart = True
            if run.state is not QUEUED:  # recovered runs may be queued to resume
                self._move(run, QUEUED, now, Reason.INTERRUPTED)
            self._dispatcher.push(run.id, run.queue, run.key, run.priority)
        else:
            self._finish(run, FAILED, now, Reason.INTERRUPTED, error=INTERRUPTED)

    def _resume(self, run: _Run, now: float, reason: Reason) -> None:
        self._forget_token(run)
        run.resume = True
        self._move(run, QUEUED, now, reason)
        self._dispatcher.push(run.id, run.queue, run.key, RESUME_PRIORITY)

    def _finish(
        self,
        run: _Run,
        to: RunState,
        now: float,
        reason: Reason,
        result: str | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        self._move(run, to, now, reason, result=result, error=error)
        self._counts[to] -= 1  # final runs are not counted: they leave the engine
        del self._runs[run.id]
        self._wakeups.cancel(run.id)
        self._timeouts.cancel(run.id)
        self._forget_token(run)
        self._forget_child(run)
        waiting = self._watchers.pop(run.id, [])
        if run.parent_id is not None:
            waiting.append(run.parent_id)
        for waiter_id in waiting:
            self._child_finished(waiter_id, ChildResult(run.id, to, result, error), now)

    def _forget_child(self, run: _Run) -> None:
        if run.parent_id is not None:
            siblings = self._children.get(run.parent_id)
            if siblings is not None:
                siblings.pop(run.id, None)
                if not siblings:
                    del self._children[run.parent_id]

    def _forget_token(self, run: _Run) -> None:
        if isinstance(run.wait, WaitForToken):
            waiters = self._token_waiters.get(run.wait.token_id)
            if waiters is not None:
                waiters.pop(run.id, None)
                if not waiters:
                    del self._token_waiters[run.wait.token_id]

    def _child_finished(self, waiter_id: RunId, child: ChildResult, now: float) -> None:
        waiter = self._runs.get(waiter_id)
        if waiter is None:
            return
        _results(waiter)[child.run_id] = child
        self._resume_if_children_done(waiter, now)

    def _resume_if_children_done(self, run: _Run, now: float) -> None:
        wait = run.wait
        if (
            run.state is WAITING
            and isinstance(wait, WaitChildren)
            and all(c in (run.child_results or _NO_RESULTS) for c in wait.child_ids)
        ):
            self._resume(run, now, Reason.CHILDREN_DONE)

    def _move(
        self,
        run: _Run,
        to: RunState,
        now: float,
        reason: Reason,
        *,
        result: str | None = None,
        error: ErrorInfo | None = None,
        available_at: float | None = None,
    ) -> None:
        check_transition(run.id, run.state, to)
        self._transitions.append(
            Transition(
                run.id,
                run.seq,
                run.task,
                run.queue,
                run.key,
                now,
                run.state,
                to,
                reason,
                run.attempt,
                available_at=available_at,
                result=result,
                error=error,
                wait=run.wait,
            )
        )
        self._counts[run.state] -= 1
        self._counts[to] += 1
        run.state = to

    def _require(self, run_id: RunId, state: RunState) -> _Run:
        run = self._runs.get(run_id)
        if run is None or run.state is not state:
            actual = run.state if run is not None else "not active"
            raise RunStateError(f"run {run_id} is {actual}, expected {state}")
        return run

    def _policy(self, run: _Run) -> TaskPolicy:
        return self._policies.get(run.task, DEFAULT_POLICY)

    def _take_step(self) -> Step:
        if not (self._transitions or self._starts or self._cancels or self._cancel_requests):
            return _EMPTY_STEP
        step = Step(
            tuple(self._transitions),
            tuple(self._starts),
            tuple(self._cancels),
            tuple(self._cancel_requests),
            tuple(self._expired),
        )
        self._transitions.clear()
        self._starts.clear()
        self._cancels.clear()
        self._cancel_requests.clear()
        self._expired.clear()
        return step


_EMPTY_STEP = Step()
_NO_RESULTS: Mapping[RunId, ChildResult] = MappingProxyType({})


def _results(run: _Run) -> dict[RunId, ChildResult]:
    """The run's child results, created on first use."""
    if run.child_results is None:
        run.child_results = {}
    return run.child_results
