"""The attempts a daemon runs: launching, suspending, evicting and reporting them.

Each attempt is a plain asyncio task running one call of the task function
(:mod:`keyq.daemon.runner`) under its own cancel scope. What it does that the
store must know (it ended, it reached a wait, a step returned) becomes an
event posted to the daemon, carrying the attempt's claim, its fence. A run
waiting longer than ``checkpoint_after`` keeps only its durable record: its
suspended coroutine is dropped, and when the wait ends it starts again by
replay. This is also the host a task's :class:`~keyq.context.Context` talks to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from keyq.context import Context
from keyq.core.journal import Entry, Journal
from keyq.core.model import (
    Cancelled,
    ChildResult,
    ErrorInfo,
    Failed,
    Outcome,
    RunId,
    StartRun,
    Wait,
)
from keyq.core.timers import Deadlines
from keyq.daemon.runner import error_info, run_attempt
from keyq.errors import KeyqError, StoreError, WaitError
from keyq.registry import Registry, Task, TriggerRequest
from keyq.replies import Pending
from keyq.results import RunHandle, TokenResult, WaitToken
from keyq.store.protocol import AttemptEnded, Event, StepDone, Store, WaitReached

Runner = Callable[[Task | None, str, Context, int], Awaitable[Outcome]]
STRAY_CANCEL = "the task raised CancelledError without being cancelled (an awaited task was?)"


@dataclass(slots=True)
class _Attempt:
    scope: anyio.CancelScope
    claim: int


class Attempts:
    """The daemon's running and suspended attempts."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        log: Any,
        *,
        post: Callable[[Event], None],
        now: Callable[[], float],
        submit: Callable[[Sequence[TriggerRequest], str | None], Awaitable[list[RunHandle]]],
        checkpoint_after_s: float,
        max_result_bytes: int,
        run: Runner = run_attempt,
    ) -> None:
        self._registry = registry
        self._store = store
        self._log = log
        self._post = post
        self._now = now
        self._submit = submit
        self.checkpoint_after_s = checkpoint_after_s
        self.max_result_bytes = max_result_bytes
        self._run_task = run  # keyq.daemon.runner.run_attempt; a test may give a failing one
        self._running: dict[RunId, _Attempt] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._suspended: dict[RunId, Pending[tuple[ChildResult, ...]]] = {}
        self._evictions: Deadlines[RunId] = Deadlines()  # suspended coroutines to drop

    # --- what the store decided ------------------------------------------------------------

    def launch(self, start: StartRun) -> None:
        """Start an attempt, or resume a suspended one (its coroutine still here)."""
        if start.resumed:
            pending = self._suspended.pop(start.run_id, None)
            if pending is not None:
                self._evictions.cancel(start.run_id)
                attempt = self._running.get(start.run_id)
                if attempt is not None:
                    attempt.claim = start.claim
                pending.set(start.children)
                return
        # The scope exists before the task runs, so a cancel that arrives before
        # the attempt's first step is not lost.
        scope = anyio.CancelScope()
        self._running[start.run_id] = _Attempt(scope, start.claim)
        # A plain asyncio task, not TaskGroup.start_soon: a third of the cost per
        # run (bench/throughput). Each attempt still gets its own task, so its
        # context variables stay its own; stop_all stands in for the group.
        task = asyncio.get_running_loop().create_task(self._attempt(start, scope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self, run_id: RunId) -> None:
        """Cancel the run's attempt: a running one at its next await, a suspended one at once."""
        attempt = self._running.get(run_id)
        if attempt is not None:
            attempt.scope.cancel()
        self._release(run_id)  # leave the shielded wait; the cancellation lands next

    def began_waiting(self, run_id: RunId, now: float) -> None:
        self._evictions.push(run_id, now + self.checkpoint_after_s)

    def refused_wait(self, run_id: RunId, error: KeyqError | None) -> None:
        """The wait did not begin: raise ``error`` in the attempt, or (None) let the
        attempt's cancellation land."""
        self._release(run_id, error)

    def evict_due(self, now: float) -> None:
        """Drop the coroutines of runs waiting past the threshold: the journal has them."""
        for run_id in self._evictions.pop_due(now):
            pending = self._suspended.pop(run_id, None)
            if pending is None:  # canceled, or stopped: nothing left to drop
                continue
            attempt = self._running.pop(run_id, None)
            if attempt is not None:
                attempt.scope.cancel()  # its late report carries a claim the store refuses
            pending.set(())

    def next_eviction(self) -> float | None:
        return self._evictions.next_deadline()

    def executing(self) -> bool:
        """True while some attempt is running (not merely suspended in a wait)."""
        return any(run_id not in self._suspended for run_id in self._running)

    async def stop_all(self) -> None:
        """Cancel what still runs (waiting attempts, mostly) and wait for it to stop."""
        for attempt in self._running.values():
            attempt.scope.cancel()
        for pending in self._suspended.values():
            pending.set(())  # out of their shield, into the cancellation
        if self._tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(self._tasks)

    # --- one attempt -----------------------------------------------------------------------

    async def _attempt(self, start: StartRun, scope: anyio.CancelScope) -> None:
        outcome: Outcome = Cancelled()  # stays so if the scope is cancelled
        try:
            with scope:
                outcome = await self._run(self._registry.tasks.get(start.task), start)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the task itself is being cancelled (the loop is closing)
            outcome = Failed(ErrorInfo("CancelledError", STRAY_CANCEL))
        except Exception as exc:
            # A bug on keyq's side of the attempt. No task group takes the daemon
            # down with it now: fail the run, so its slot is freed and recorded.
            self._log.exception("attempt_crashed", run_id=start.run_id)
            outcome = Failed(error_info(exc), retryable=False)
        attempt = self._running.get(start.run_id)
        if attempt is not None and attempt.scope is scope:
            del self._running[start.run_id]
            self._post(AttemptEnded(start.run_id, attempt.claim, outcome))

    async def _run(self, task: Task | None, start: StartRun) -> Outcome:
        journal = None
        if start.replay:
            try:
                journal = Journal(await self._store.journal(start.run_id))
            except StoreError as exc:
                return Failed(error_info(exc))
        ctx = Context(start, self, journal)
        return await self._run_task(task, start.payload, ctx, self.max_result_bytes)

    def _claim(self, run_id: RunId) -> int:
        attempt = self._running.get(run_id)
        return attempt.claim if attempt is not None else -1

    def _release(self, run_id: RunId, error: BaseException | None = None) -> None:
        """Let a suspended coroutine go on: with ``error`` raised, or to its cancellation."""
        pending = self._suspended.get(run_id)
        if pending is None:
            return
        if error is not None:
            pending.fail(error)
        else:
            pending.set(())

    # --- the host of a task's Context --------------------------------------------------------

    def now(self) -> float:
        return self._now()

    async def suspend(self, run_id: str, wait: Wait, entry: Entry) -> tuple[ChildResult, ...]:
        """Called by a running attempt: wait holding no slot; returns waited children
        when the store still has them (else the caller reads them from the store)."""
        if run_id in self._suspended:
            raise WaitError("this run is already waiting: await its waits one at a time")
        await anyio.lowlevel.checkpoint()  # an attempt already cancelled does not wait
        pending: Pending[tuple[ChildResult, ...]] = Pending()
        self._suspended[run_id] = pending
        self._post(WaitReached(run_id, self._claim(run_id), wait, entry))
        try:
            # A wait is one durable step: a timeout in the task's own code must
            # not abandon it halfway (the store would think the run is waiting
            # while its code runs on without a slot). Only the daemon ends it.
            with anyio.CancelScope(shield=True):
                children = await pending.wait()
        finally:
            if self._suspended.get(run_id) is pending:
                del self._suspended[run_id]
        await anyio.lowlevel.checkpoint()  # a cancel (or an eviction) of the attempt lands here
        return children

    async def record(self, run_id: str, entry: Entry) -> None:
        """Called by a running attempt: make a step's result durable before it returns."""
        reply: Pending[None] = Pending()
        self._post(StepDone(run_id, self._claim(run_id), entry, reply))
        with anyio.CancelScope(shield=True):  # once asked, the record is made: wait for it
            await reply.wait()

    async def create_token(
        self, run_id: str, position: int, idempotency_key: str | None, timeout_s: float | None
    ) -> WaitToken:
        now = self._now()
        key = idempotency_key if idempotency_key is not None else f"{run_id}/{position}"
        timeout_at = None if timeout_s is None else now + timeout_s
        return await self._store.create_token(run_id, position, key, now, timeout_at)

    async def child_results(self, child_ids: Sequence[str]) -> list[ChildResult]:
        return await self._store.child_results(child_ids)

    async def token_result(self, token_id: str) -> TokenResult:
        return await self._store.token_result(token_id)

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        return await self._submit(requests, parent_id)
