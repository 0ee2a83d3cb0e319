"""Queue and task definitions: ``keyq.queue``, ``@keyq.task``, and the registry holding them.

Names are checked when they are defined, so a bad id fails at import time,
not at the first trigger. Triggering itself lives in :mod:`keyq.producer`;
a :class:`Task` only forwards to whichever producer is current (the daemon of
this process, else a client built from the configuration).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from keyq.core import bounds
from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.errors import DefinitionError, UnknownTaskError

if TYPE_CHECKING:
    from keyq.results import RunHandle, RunResult

NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid task id or queue name, else raise DefinitionError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(
            f"invalid {kind} {name!r}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    return name


def check_limit(field_name: str, value: object) -> int | None:
    """A concurrency limit: None (no limit) or an integer from 0 to ``bounds.MAX_LIMIT``."""
    if value is None:
        return None
    try:
        return bounds.integer(field_name, value, 0, bounds.MAX_LIMIT)
    except bounds.BoundError as exc:
        raise DefinitionError(f"{exc} (or None for no limit)") from None


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue: ``concurrency_limit`` runs per concurrency key (or for the
    queue as a whole when runs carry no key), and optionally ``total_limit`` over
    all keys together."""

    name: str
    concurrency_limit: int | None = None
    total_limit: int | None = None

    def __post_init__(self) -> None:
        check_name("queue name", self.name)
        check_limit("concurrency_limit", self.concurrency_limit)
        check_limit("total_limit", self.total_limit)


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
        from keyq.producer import current_producer

        (handle,) = await current_producer().submit_triggers([(self, payload, options)])
        return handle

    async def batch_trigger(self, items: Iterable[Mapping[str, Any]]) -> list[RunHandle]:
        """Create several runs in one transaction; each item is ``{"payload": ..., **options}``."""
        from keyq.producer import current_producer, split_item

        return await current_producer().submit_triggers([(self, *split_item(i)) for i in items])

    async def trigger_and_wait(self, payload: Any = None, **options: Any) -> RunResult:
        """From inside a running task: trigger a child run and wait for it, holding no slot."""
        from keyq.context import current_context

        (result,) = await current_context().trigger_and_wait([(self, payload, options)])
        return result

    async def batch_trigger_and_wait(self, items: Iterable[Mapping[str, Any]]) -> list[RunResult]:
        """From inside a running task: trigger several children and wait for all of them."""
        from keyq.context import current_context
        from keyq.producer import split_item

        return await current_context().trigger_and_wait([(self, *split_item(i)) for i in items])


class Registry:
    """The tasks and queues a process knows. ``keyq.task`` and ``keyq.queue`` use
    :data:`default_registry`; tests may build their own."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.queues: dict[str, Queue] = {}

    def queue(
        self, name: str, concurrency_limit: int | None = None, total_limit: int | None = None
    ) -> Queue:
        """Define (or look up an identical) queue by name."""
        q = Queue(name, concurrency_limit, total_limit)
        existing = self.queues.get(name)
        if existing is not None and existing != q:
            raise DefinitionError(
                f"queue {name!r} is already defined with concurrency_limit="
                f"{existing.concurrency_limit}, total_limit={existing.total_limit}"
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
    ) -> Any:
        """Decorator registering an async (or sync, run in a thread) function as a task.

        ``@task(id="send-email", queue=..., retry=..., max_duration=300)``, or bare
        ``@task`` to use the function's name as the id.
        """
        if callable(id):
            return self.task()(id)

        def register(fn: TaskFn) -> Task:
            task_id = check_name("task id", id if id is not None else fn.__name__)
            q = self._queue_for(task_id, queue)
            budget = _max_duration(task_id, max_duration)
            task = Task(task_id, fn, q, retry or DEFAULT_RETRY, budget)
            self._add(task)
            return task

        return register

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
            return self.queue(queue.name, queue.concurrency_limit, queue.total_limit)
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


default_registry = Registry()
queue = default_registry.queue
task = default_registry.task
