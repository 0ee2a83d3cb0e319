"""What a task function receives: ``ctx.run_id``, ``ctx.attempt``, ``ctx.wait``, ``ctx.step``.

Waiting hands the run's slot back to the daemon (the run becomes WAITING) and
returns once the daemon has given it a slot again. Every wait and every
``ctx.step`` is recorded in the run's journal, by position. When the function
runs again (after a restart, after a long wait dropped its coroutine, on a
retry) each recorded call returns its recorded result at once: the run comes
back where it waited. So code between waits must be deterministic, or inside
a step (docs/waits.md). Waits and steps need an async task, one at a time.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from keyq.cadence import utc
from keyq.core import bounds
from keyq.core.durations import parse_duration
from keyq.core.journal import Entry, Journal, Kind, ReplayMismatchError
from keyq.core.model import (
    ChildResult,
    ScheduleTick,
    StartRun,
    Wait,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.errors import TriggerError, WaitError
from keyq.registry import TriggerRequest
from keyq.results import RunHandle, RunResult, TokenResult
from keyq.results import WaitToken as TokenHandle
from keyq.triggers import check_idempotency_key

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class AttemptHost(Protocol):
    """What a running attempt needs from the daemon."""

    @property
    def max_result_bytes(self) -> int: ...

    def now(self) -> float: ...

    async def suspend(self, run_id: str, wait: Wait, entry: Entry) -> tuple[ChildResult, ...]: ...

    async def record(self, run_id: str, entry: Entry) -> None: ...

    async def create_token(
        self, run_id: str, position: int, idempotency_key: str | None, timeout_s: float | None
    ) -> TokenHandle: ...

    async def child_results(self, child_ids: Sequence[str]) -> list[ChildResult]: ...

    async def token_result(self, token_id: str) -> TokenResult: ...

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]: ...


class Waits:
    """``ctx.wait``: durations, instants and tokens to wait for, holding no slot."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def for_(
        self, seconds: float = 0, *, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        """Wait this long (at most 100 years), giving the run's slot back meanwhile."""
        total = _total_s(seconds=seconds, minutes=minutes, hours=hours, days=days)
        await self._ctx._wait_until(lambda now: _resume_at(now + total))

    async def until(self, when: datetime) -> None:
        """Wait until ``when`` (a timezone-aware datetime), holding no slot."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise WaitError("wait.until needs a timezone-aware datetime, e.g. datetime.now(UTC)")
        await self._ctx._wait_until(lambda now: _resume_at(when.timestamp()))

    async def create_token(
        self, *, timeout: float | str | timedelta | None = None, idempotency_key: str | None = None
    ) -> TokenHandle:
        """A new waitpoint token for ``for_token``; complete it with ``keyq tokens complete``.

        ``timeout`` (seconds, "30m", a timedelta; None waits for ever) bounds the
        wait. A token with the ``idempotency_key`` of an existing one is that one.
        """
        try:
            timeout_s = None if timeout is None else parse_duration(timeout, field="timeout")
            if timeout_s is not None:
                bounds.duration("timeout", timeout_s)
            key = check_idempotency_key(idempotency_key)
        except (ValueError, TriggerError) as exc:
            raise WaitError(str(exc)) from None
        return await self._ctx._create_token(key, timeout_s)

    async def for_token(self, token: TokenHandle | str) -> TokenResult:
        """Wait, holding no slot, until the token is completed or times out.

        Returns a :class:`~keyq.results.TokenResult`: ``ok`` and ``output`` if
        it was completed, ``ok`` False (``timed_out``) if its timeout passed.
        """
        token_id = token.id if isinstance(token, TokenHandle) else token
        if not isinstance(token_id, str) or not token_id:
            raise WaitError(f"for_token needs a token or a token id, got {token!r}")
        return await self._ctx._for_token(token_id)


_UNIT_S = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}


def _total_s(**parts: float) -> float:
    """``wait.for_``'s duration in seconds; WaitError unless from 0 to 100 years."""
    limit = bounds.MAX_DURATION_S
    try:
        total = sum(
            bounds.number(f"wait.for_ {unit}", value, -limit, limit) * _UNIT_S[unit]
            for unit, value in parts.items()
        )
        return bounds.duration("wait.for_", total)
    except bounds.BoundError as exc:
        raise WaitError(str(exc)) from None


def _resume_at(at: float) -> float:
    """A wait's end as a storable instant: a past one is now, none is after the year 9999."""
    if at > bounds.MAX_INSTANT:
        raise WaitError("the wait would end after the year 9999")
    return max(at, bounds.MIN_INSTANT)


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """``ctx.schedule`` of a run a schedule fired: which schedule, and for which tick."""

    id: str
    tick: datetime  # aware, UTC
    previous: datetime | None  # the schedule's tick before this one, if it had one

    @classmethod
    def of(cls, tick: ScheduleTick | None) -> ScheduleInfo | None:
        if tick is None:
            return None
        previous = utc(tick.previous) if tick.previous is not None else None
        return cls(tick.id, utc(tick.tick), previous)


class Context:
    """The run a task function is executing: its ids, its waits and its steps.

    ``schedule`` is the :class:`ScheduleInfo` of a run a schedule fired, else None.
    """

    def __init__(self, start: StartRun, host: AttemptHost, journal: Journal | None = None) -> None:
        self.run_id = start.run_id
        self.task_id = start.task
        self.queue = start.queue
        self.concurrency_key = start.concurrency_key
        self.attempt = start.attempt
        self.schedule = ScheduleInfo.of(start.schedule)
        self.wait = Waits(self)
        self._host = host
        self._journal = journal if journal is not None else Journal()
        self._busy: str | None = None
        #: set when the code made a different call than the run's record: the
        #: attempt fails with it even if the task's code caught the exception
        self.mismatch: ReplayMismatchError | None = None

    def __repr__(self) -> str:
        return f"<keyq.Context run={self.run_id} task={self.task_id} attempt={self.attempt}>"

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run and return its JSON result.

        The result is recorded before ``step`` returns; when the function runs
        again (restart, replay, retry), the step returns the recorded result
        without calling ``fn``. Put non-deterministic work (I/O, random, the
        clock) in steps. ``fn`` may be sync or async; the value returned is the
        result as JSON decodes it, the same on the first run and on replays.
        A step whose ``fn`` raises records nothing: the exception propagates.
        """
        if not isinstance(name, str) or not name:
            raise WaitError(f"ctx.step needs a name, got {name!r}")
        with self._one_at_a_time(f"step {name!r}"):
            position, entry = self._next("step", name)
            if entry is not None:
                return json.loads(entry.data)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            text = self._encode(f"step {name!r}", value)
            await self._host.record(self.run_id, Entry(position, "step", name, text))
            return json.loads(text)

    async def trigger_and_wait(self, requests: Sequence[TriggerRequest]) -> list[RunResult]:
        """Trigger child runs of this run and wait, slot-free, until all are final.

        Children triggered without an idempotency key get one made of this run's
        id and the call's position, so a replay finds them instead of
        triggering them twice.
        """
        name = ",".join(dict.fromkeys(task.id for task, _, _ in requests))
        with self._one_at_a_time("trigger_and_wait"):
            position, entry = self._next("children", name)
            if entry is not None:
                child_ids = json.loads(entry.data)["children"]
                children = await self._host.child_results(child_ids)
            else:
                keyed = [
                    (task, payload, {"idempotency_key": f"{self.run_id}/{position}/{i}", **opts})
                    for i, (task, payload, opts) in enumerate(requests)
                ]
                handles = await self._host.submit_triggers(keyed, parent_id=self.run_id)
                child_ids = [h.id for h in handles]
                data = _dumps({"children": child_ids})
                wait = WaitChildren(tuple(child_ids))
                got = await self._host.suspend(
                    self.run_id, wait, Entry(position, "children", name, data)
                )
                complete = len(got) == len(child_ids)
                children = list(got) if complete else await self._host.child_results(child_ids)
        return [RunResult.from_stored(c.run_id, c.status, c.output, c.error) for c in children]

    @property
    def is_replaying(self) -> bool:
        """True while the function re-runs recorded waits and steps (skip side effects)."""
        return self._journal.unreplayed() > 0

    # --- internals -------------------------------------------------------------------------

    async def _wait_until(self, resume_at: Callable[[float], float]) -> None:
        with self._one_at_a_time("wait"):
            position, entry = self._next("wait", "")
            if entry is not None:
                return
            at = resume_at(self._host.now())
            data = _dumps({"resume_at": at})
            await self._host.suspend(self.run_id, WaitUntil(at), Entry(position, "wait", "", data))

    async def _create_token(self, key: str | None, timeout_s: float | None) -> TokenHandle:
        with self._one_at_a_time("create_token"):
            position, entry = self._next("token", "")
            if entry is not None:
                data = json.loads(entry.data)
                return TokenHandle(data["token"], data["timeout_at"])
            return await self._host.create_token(self.run_id, position, key, timeout_s)

    async def _for_token(self, token_id: str) -> TokenResult:
        with self._one_at_a_time("for_token"):
            position, entry = self._next("for_token", token_id)
            if entry is None:
                data = _dumps({"token": token_id})
                await self._host.suspend(
                    self.run_id,
                    WaitForToken(token_id),
                    Entry(position, "for_token", token_id, data),
                )
            return await self._host.token_result(token_id)

    def _next(self, kind: Kind, name: str) -> tuple[int, Entry | None]:
        try:
            return self._journal.next(kind, name)
        except ReplayMismatchError as exc:
            self.mismatch = exc
            raise

    @contextmanager
    def _one_at_a_time(self, what: str) -> Iterator[None]:
        # Positions must not depend on scheduling: two waits or steps at once
        # would take them in whatever order the event loop ran them.
        if self._busy is not None:
            raise WaitError(
                f"{what} started while {self._busy} is pending: await waits and steps one at a time"
            )
        self._busy = what
        try:
            yield
        finally:
            self._busy = None

    def _encode(self, what: str, value: object) -> str:
        try:
            return bounds.json_text(value, self._host.max_result_bytes)
        except bounds.TooLargeError as exc:
            raise WaitError(f"{what} returned {exc}") from None
        except bounds.NotJSONError as exc:
            raise WaitError(f"{what} returned a value that is not JSON: {exc}") from None
