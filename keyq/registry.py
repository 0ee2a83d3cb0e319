"""Queue and task definitions: ``keyq.queue``, ``@keyq.task``, and the registry holding them.

Names are checked when they are defined, so a bad id fails at import time,
not at the first trigger. A :class:`Task` stores nothing itself: it forwards
to whichever :class:`Submitter` is current (the daemon of this process, else a
client built from the configuration), and ``trigger_and_wait`` to the
:class:`Attempt` running. Those are set by the daemon and the client, which
sit above this module: it never imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from keyq.core import bounds
from keyq.core.bounds import check_limit, check_name
from keyq.core.ratelimit import Rate, parse_rate
from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.errors import DefinitionError, KeyqError, TriggerError, UnknownTaskError, WaitError
from keyq.results import RunHandle, RunResult
from keyq.schedules import Schedule


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue: ``concurrency_limit`` runs at once and ``rate_limit`` starts per
    window, each per concurrency key (or for the queue as a whole when runs carry
    no key), and optionally ``total_limit`` and ``rate_limit_total`` over all keys
    together. Rates are written ``"100/1m"``, ``"10/s"``."""

    name: str
    concurrency_limit: int | None = None
    total_limit: int | None = None
    rate_limit: Rate | None = None
    rate_limit_total: Rate | None = None

    def __post_init__(self) -> None:
        check_name("queue name", self.name)
        check_limit("concurrency_limit", self.concurrency_limit)
        check_limit("total_limit", self.total_limit)
        for name in ("rate_limit", "rate_limit_total"):
            try:
                rate = parse_rate(getattr(self, name), field=name)
            except ValueError as exc:
                raise DefinitionError(f"queue {self.name!r}: {exc}") from None
            object.__setattr__(self, name, rate)  # "100/1m" in, a Rate kept


TaskFn = Callable[..., Any]


@dataclass(eq=False)
class Task:
    """A registered task: its function, queue, retry policy and time budget."""

    id: str
    fn: TaskFn
    queue: Queue
    retry: Retry = DEFAULT_RETRY
    max_duration_s: float | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)

    def __repr__(self) -> str:
        return f"<keyq.Task {self.id!r} queue={self.queue.name!r}>"

    async def trigger(self, payload: Any = None, **options: Any) -> RunHandle:
        """Create a run of this task; returns once the run is durable on disk.

        Options: ``concurrency_key``, ``queue`` (a name, a :class:`Queue`, or
        ``{"name": ..., "concurrency_limit": ...}``), ``priority`` (1-10, lower
        first), ``delay`` (seconds, timedelta or "5m"), ``idempotency_key``,
        ``max_attempts``, ``tags``.
        """
        (handle,) = await current_producer().submit_triggers([(self, payload, options)])
        return handle

    async def batch_trigger(self, items: Iterable[Mapping[str, Any]]) -> list[RunHandle]:
        """Create several runs in one transaction; each item is ``{"payload": ..., **options}``."""
        return await current_producer().submit_triggers([(self, *split_item(i)) for i in items])

    async def trigger_and_wait(self, payload: Any = None, **options: Any) -> RunResult:
        """From inside a running task: trigger a child run and wait for it, holding no slot."""
        (result,) = await current_attempt().trigger_and_wait([(self, payload, options)])
        return result

    async def batch_trigger_and_wait(self, items: Iterable[Mapping[str, Any]]) -> list[RunResult]:
        """From inside a running task: trigger several children and wait for all of them."""
        return await current_attempt().trigger_and_wait([(self, *split_item(i)) for i in items])


class Registry:
    """The tasks and queues a process knows. ``keyq.task`` and ``keyq.queue`` use
    :data:`default_registry`; tests may build their own."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.queues: dict[str, Queue] = {}
        self.schedules: dict[str, Schedule] = {}

    def queue(
        self,
        name: str,
        concurrency_limit: int | None = None,
        total_limit: int | None = None,
        *,
        rate_limit: Rate | str | None = None,
        rate_limit_total: Rate | str | None = None,
    ) -> Queue:
        """Define (or look up an identical) queue by name."""
        q = Queue(name, concurrency_limit, total_limit, rate_limit, rate_limit_total)  # type: ignore[arg-type]
        existing = self.queues.get(name)
        if existing is not None and existing != q:
            raise DefinitionError(
                f"queue {name!r} is already defined with concurrency_limit="
                f"{existing.concurrency_limit}, total_limit={existing.total_limit}, "
                f"rate_limit={existing.rate_limit}, rate_limit_total={existing.rate_limit_total}"
            )
        self.queues[name] = q
        return q

    def task(
        self,
        id: str | TaskFn | None = None,
        *,
        queue: Queue | str | None = None,
        retry: Retry | None = None,
        max_duration: float | timedelta | None = None,
        cron: str | None = None,
        every: float | str | timedelta | None = None,
        tz: str = "UTC",
        schedules: Sequence[Schedule] = (),
    ) -> Any:
        """Decorator registering an async (or sync, run in a thread) function as a task.

        ``@task(id="send-email", queue=..., retry=..., max_duration=300)``, or bare
        ``@task`` to use the function's name as the id. ``cron="*/5 * * * *"``
        with ``tz``, or ``every="30s"``, schedules it (a schedule whose id is the
        task's); ``schedules=[keyq.Schedule(...), ...]`` gives it several.
        """
        if callable(id):
            return self.task()(id)

        def register(fn: TaskFn) -> Task:
            task_id = check_name("task id", id if id is not None else fn.__name__)
            q = self._queue_for(task_id, queue)
            budget = _max_duration(task_id, max_duration)
            own = [Schedule(task_id, cron, every, tz)] if (cron, every) != (None, None) else []
            attached = [s.for_task(task_id) for s in [*own, *schedules]]
            task = Task(task_id, fn, q, retry or DEFAULT_RETRY, budget)
            self._add(task)
            for schedule in attached:
                self.add_schedule(schedule)
            return task

        return register

    def add_schedule(self, schedule: Schedule) -> None:
        """Register a schedule attached to a task (``@task`` does it)."""
        existing = self.schedules.get(schedule.id)
        if existing is not None and existing != schedule:
            raise DefinitionError(
                f"schedule id {schedule.id!r} is already used by task {existing.task!r}"
            )
        self.schedules[schedule.id] = schedule

    def get(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise UnknownTaskError(task_id, list(self.tasks)) from None

    def _queue_for(self, task_id: str, queue: Queue | str | None) -> Queue:
        if queue is None:
            return self.queues.get(task_id) or self.queue(task_id)
        if isinstance(queue, str):
            return self.queues.get(check_name("queue name", queue)) or self.queue(queue)
        if isinstance(queue, Queue):
            return self.queue(
                queue.name,
                queue.concurrency_limit,
                queue.total_limit,
                rate_limit=queue.rate_limit,
                rate_limit_total=queue.rate_limit_total,
            )
        raise DefinitionError(f"task {task_id!r}: queue must be a keyq.queue(...) or a name")

    def _add(self, task: Task) -> None:
        existing = self.tasks.get(task.id)
        same_fn = existing is not None and _same_function(existing.fn, task.fn)
        if existing is not None and not same_fn:
            where = f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            raise DefinitionError(f"task id {task.id!r} is already defined by {where}")
        self.tasks[task.id] = task


def _same_function(a: TaskFn, b: TaskFn) -> bool:
    # The same module imported twice (as __main__ and by name, or reloaded).
    return bool(
        a.__qualname__ == b.__qualname__ and a.__code__.co_filename == b.__code__.co_filename
    )


def _max_duration(task_id: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    try:
        budget = bounds.number("max_duration", seconds, 0, bounds.MAX_DURATION_S)
    except bounds.BoundError as exc:
        raise DefinitionError(f"task {task_id!r}: {exc}") from None
    if budget <= 0:
        raise DefinitionError(f"task {task_id!r}: max_duration must be > 0 seconds, got {value!r}")
    return budget


# --- where Task.trigger goes ------------------------------------------------------------------

TriggerRequest = tuple[Task, Any, Mapping[str, Any]]


def split_item(item: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A batch item ``{"payload": ..., **options}`` as (payload, options)."""
    if not isinstance(item, Mapping):
        raise TriggerError(f"batch items must be mappings with a 'payload', got {item!r}")
    options = dict(item)
    return options.pop("payload", None), options


class Submitter(Protocol):
    """Where ``Task.trigger`` sends its runs: the daemon of this process, or a client."""

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]: ...


class Attempt(Protocol):
    """The running attempt a task's code is in (``keyq.Context``)."""

    async def trigger_and_wait(self, requests: Sequence[TriggerRequest]) -> list[RunResult]: ...


_producer: ContextVar[Submitter | None] = ContextVar("keyq_producer", default=None)
_attempt: ContextVar[Attempt | None] = ContextVar("keyq_attempt", default=None)
_default_producer: Submitter | None = None
_make_default_producer: Callable[[], Submitter] | None = None


def current_producer() -> Submitter:
    """The in-process daemon if one runs in this context, else a client from the config
    (made on first use by the factory :func:`use_default_producer` set)."""
    producer = _producer.get()
    if producer is not None:
        return producer
    global _default_producer
    if _default_producer is None:
        if _make_default_producer is None:
            raise KeyqError("no way to store runs: import keyq (its Client is the default)")
        _default_producer = _make_default_producer()
    return _default_producer


def use_default_producer(factory: Callable[[], Submitter] | None) -> None:
    """What ``Task.trigger`` uses outside a daemon (keyq.client sets its AsyncClient); None
    also forgets the one made (tests)."""
    global _default_producer, _make_default_producer
    _make_default_producer, _default_producer = factory, None


def set_producer(producer: Submitter | None) -> Token[Submitter | None]:
    """Make ``producer`` what ``Task.trigger`` uses in this context."""
    return _producer.set(producer)


def reset_producer(token: Token[Submitter | None]) -> None:
    _producer.reset(token)


def current_attempt() -> Attempt:
    """The attempt running in this task (or thread); WaitError outside one."""
    attempt = _attempt.get()
    if attempt is None:
        raise WaitError("trigger_and_wait can only be used inside a running keyq task")
    return attempt


def set_attempt(attempt: Attempt | None) -> Token[Attempt | None]:
    return _attempt.set(attempt)


def reset_attempt(token: Token[Attempt | None]) -> None:
    _attempt.reset(token)


default_registry = Registry()
queue = default_registry.queue
task = default_registry.task
