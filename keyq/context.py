"""What a task function receives: ``ctx.run_id``, ``ctx.attempt``, ``ctx.wait``.

Waiting is cooperative: ``await ctx.wait.for_(...)`` hands the run's slot back
to the daemon (the run becomes WAITING) and returns once the daemon has given
it a slot again. Waits need an async task; a sync task runs in a thread and
cannot wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from keyq.errors import WaitError
from keyq.model import ChildResult, StartRun, Wait, WaitChildren, WaitUntil
from keyq.results import RunHandle, RunResult

if TYPE_CHECKING:
    from keyq.producer import TriggerRequest


class AttemptHost(Protocol):
    """What a running attempt needs from the daemon."""

    def now(self) -> float: ...

    async def suspend(self, run_id: str, wait: Wait) -> tuple[ChildResult, ...]: ...

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]: ...


class Waits:
    """``ctx.wait``: durations, instants, and child runs to wait for, holding no slot."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def for_(
        self, seconds: float = 0, *, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        """Wait this long, giving the run's slot back meanwhile."""
        total = timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days).total_seconds()
        if total < 0:
            raise WaitError(f"wait.for_ needs a duration >= 0, got {total} s")
        await self._ctx._suspend(WaitUntil(self._ctx._host.now() + total))

    async def until(self, when: datetime) -> None:
        """Wait until ``when`` (a timezone-aware datetime), holding no slot."""
        if when.tzinfo is None:
            raise WaitError("wait.until needs a timezone-aware datetime, e.g. datetime.now(UTC)")
        await self._ctx._suspend(WaitUntil(when.timestamp()))


class Context:
    """The run a task function is executing, and its waits."""

    def __init__(self, start: StartRun, host: AttemptHost) -> None:
        self.run_id = start.run_id
        self.task_id = start.task
        self.queue = start.queue
        self.concurrency_key = start.concurrency_key
        self.attempt = start.attempt
        self.wait = Waits(self)
        self._host = host

    def __repr__(self) -> str:
        return f"<keyq.Context run={self.run_id} task={self.task_id} attempt={self.attempt}>"

    async def trigger_and_wait(self, requests: Sequence[TriggerRequest]) -> list[RunResult]:
        """Trigger child runs of this run and wait, slot-free, until all are final."""
        handles = await self._host.submit_triggers(requests, parent_id=self.run_id)
        children = await self._suspend(WaitChildren(tuple(h.id for h in handles)))
        return [RunResult.from_stored(c.run_id, c.status, c.output, c.error) for c in children]

    async def _suspend(self, wait: Wait) -> tuple[ChildResult, ...]:
        return await self._host.suspend(self.run_id, wait)


_current: ContextVar[Context | None] = ContextVar("keyq_context", default=None)


def current_context() -> Context:
    """The Context of the task running in this task (or thread); WaitError outside one."""
    ctx = _current.get()
    if ctx is None:
        raise WaitError("trigger_and_wait can only be used inside a running keyq task")
    return ctx


def set_context(ctx: Context | None) -> object:
    return _current.set(ctx)


def reset_context(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
