"""Defining queues and tasks: names and limits are checked when they are defined."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.errors import DefinitionError, UnknownTaskError
from keyq.registry import Queue, Registry, Task, check_name


async def _noop(payload: Any, ctx: Any) -> None:
    return None


async def _other(payload: Any, ctx: Any) -> None:
    return None


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "analyze-workout", "user.analysis", "ns:task_1", "A-Z.09:_-", "x" * 128]
)
def test_registry__valid_names_are_accepted(registry: Registry, name: str) -> None:
    """Task ids and queue names of 1-128 chars of [A-Za-z0-9._:-] are accepted."""
    task = registry.task(id=name)(_noop)
    queue = registry.queue(name + "-q" if len(name) < 127 else name)
    assert task.id == name
    assert registry.get(name) is task
    assert registry.queues[queue.name] is queue


BAD_NAMES = [
    "",
    "x" * 129,
    "has space",
    "slash/y",
    "ünïcode",
    "semi;colon",
    "tab\t",
    "new\nline",
    "trailing-newline\n",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_registry__bad_task_id_fails_at_definition(registry: Registry, name: str) -> None:
    """A bad task id raises DefinitionError when decorated, and nothing is registered."""
    with pytest.raises(DefinitionError) as info:
        registry.task(id=name)(_noop)
    assert repr(name) in str(info.value)
    assert "1-128 characters" in str(info.value)
    assert registry.tasks == {}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_registry__bad_queue_name_fails_at_definition(registry: Registry, name: str) -> None:
    """A bad queue name raises DefinitionError when the queue is defined."""
    with pytest.raises(DefinitionError) as info:
        registry.queue(name)
    assert "queue name" in str(info.value)
    assert registry.queues == {}


def test_registry__bad_queue_name_on_a_task_fails(registry: Registry) -> None:
    """queue="bad name" on a task is refused before the task is registered."""
    with pytest.raises(DefinitionError, match="queue name"):
        registry.task(id="t", queue="bad name")(_noop)
    assert registry.tasks == {}


@pytest.mark.parametrize("name", [None, 5, b"bytes"])
def test_check_name__non_strings_are_refused(name: object) -> None:
    """A name that is not a string at all is refused with the same clear error."""
    with pytest.raises(DefinitionError, match="invalid task id"):
        check_name("task id", name)


def test_registry__id_defaults_to_function_name(registry: Registry) -> None:
    """@task() without an id uses the function's name."""

    async def send_email(payload: Any, ctx: Any) -> None:
        return None

    task = registry.task()(send_email)
    assert task.id == "send_email"
    assert registry.get("send_email") is task


# --- duplicates -----------------------------------------------------------------------------


def test_registry__duplicate_task_id_from_other_function_fails(registry: Registry) -> None:
    """Two different functions cannot share a task id; the error names the first one."""
    first = registry.task(id="dup")(_noop)
    with pytest.raises(DefinitionError) as info:
        registry.task(id="dup")(_other)
    message = str(info.value)
    assert "'dup'" in message
    assert f"{__name__}._noop" in message
    assert registry.get("dup") is first


def test_registry__same_function_registered_again_is_allowed(registry: Registry) -> None:
    """Re-importing a module (same function, same file) re-registers without error."""
    registry.task(id="again")(_noop)
    second = registry.task(id="again")(_noop)
    assert registry.get("again") is second


def test_registry__queue_redefined_with_other_limits_fails(registry: Registry) -> None:
    """Defining a queue name twice with different limits is an error naming the old limits."""
    registry.queue("q", concurrency_limit=2)
    with pytest.raises(DefinitionError) as info:
        registry.queue("q", concurrency_limit=3)
    assert "'q'" in str(info.value)
    assert "concurrency_limit=2" in str(info.value)
    with pytest.raises(DefinitionError):
        registry.queue("q", concurrency_limit=2, total_limit=10)
    assert registry.queues["q"] == Queue("q", 2)


def test_registry__queue_redefined_identically_is_the_same(registry: Registry) -> None:
    """Defining the same queue twice with the same limits is harmless."""
    a = registry.queue("q", concurrency_limit=2, total_limit=40)
    b = registry.queue("q", concurrency_limit=2, total_limit=40)
    assert a == b


def test_registry__task_with_conflicting_queue_object_fails(registry: Registry) -> None:
    """A task whose Queue object disagrees with the registered queue of that name is refused."""
    registry.queue("shared", concurrency_limit=1)
    with pytest.raises(DefinitionError, match="already defined"):
        registry.task(id="t", queue=Queue("shared", 5))(_noop)
    assert "t" not in registry.tasks


# --- queues of tasks ---------------------------------------------------------------------------


def test_registry__task_without_queue_gets_its_own(registry: Registry) -> None:
    """A task defined without a queue runs on a queue named after its id, with no limit."""
    task = registry.task(id="solo")(_noop)
    assert task.queue == Queue("solo")
    assert registry.queues["solo"] == Queue("solo")


def test_registry__tasks_share_a_queue_object(registry: Registry) -> None:
    """Several tasks defined on one queue share its name and limit."""
    q = registry.queue("user-analysis", concurrency_limit=2)
    a = registry.task(id="a", queue=q)(_noop)
    b = registry.task(id="b", queue=q)(_other)
    assert a.queue == b.queue == Queue("user-analysis", 2)


def test_registry__queue_by_name_reuses_a_defined_queue(registry: Registry) -> None:
    """queue="name" picks up a queue already defined with that name, limits included."""
    registry.queue("mail", concurrency_limit=4)
    task = registry.task(id="send", queue="mail")(_noop)
    assert task.queue == Queue("mail", 4)


def test_registry__queue_of_wrong_type_fails(registry: Registry) -> None:
    """queue=5 is refused at definition time naming the task."""
    with pytest.raises(DefinitionError, match="'t': queue must be"):
        registry.task(id="t", queue=5)(_noop)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [-1, 1.5, "2", True])
def test_registry__bad_queue_limit_fails(registry: Registry, limit: object) -> None:
    """A queue limit must be an integer >= 0 (or None); the error names the field."""
    with pytest.raises(DefinitionError, match="concurrency_limit"):
        registry.queue("q", concurrency_limit=limit)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="total_limit"):
        registry.queue("q2", total_limit=limit)  # type: ignore[arg-type]


# --- other options ------------------------------------------------------------------------------


def test_registry__task_options_are_kept(registry: Registry) -> None:
    """retry and max_duration (seconds or timedelta) are stored on the task."""
    retry = Retry(max_attempts=5, backoff="fixed", min_delay=2, max_delay=2)
    a = registry.task(id="a", retry=retry, max_duration=300)(_noop)
    b = registry.task(id="b", max_duration=timedelta(minutes=2))(_noop)
    assert (a.retry, a.max_duration_s) == (retry, 300.0)
    assert (b.retry, b.max_duration_s) == (DEFAULT_RETRY, 120.0)


@pytest.mark.parametrize("budget", [0, -5, timedelta(0), "300"])
def test_registry__bad_max_duration_fails(registry: Registry, budget: object) -> None:
    """max_duration must be a positive number of seconds or timedelta."""
    with pytest.raises(DefinitionError, match="max_duration"):
        registry.task(id="t", max_duration=budget)(_noop)  # type: ignore[arg-type]


def test_registry__sync_functions_are_marked(registry: Registry) -> None:
    """A plain def task is recorded as sync (it will run in a worker thread)."""

    def blocking(payload: Any, ctx: Any) -> int:
        return 1

    assert registry.task(id="sync")(blocking).is_async is False
    assert registry.task(id="async")(_noop).is_async is True


def test_registry__unknown_task_names_it_and_the_known_ones(registry: Registry) -> None:
    """Looking up an unknown id raises UnknownTaskError listing the ids that exist."""
    registry.task(id="known-a")(_noop)
    registry.task(id="known-b")(_other)
    with pytest.raises(UnknownTaskError) as info:
        registry.get("nope")
    assert "unknown task 'nope'" in str(info.value)
    assert "known-a, known-b" in str(info.value)
    assert info.value.task_id == "nope"


def test_registry__unknown_task_in_empty_registry_gives_a_hint(registry: Registry) -> None:
    """With no tasks loaded, the error says how to load them."""
    with pytest.raises(UnknownTaskError, match="--app"):
        registry.get("nope")


def test_registry__bare_decorator_is_not_silently_ignored(registry: Registry) -> None:
    """`@keyq.task` without parentheses registers the task, or fails at definition time."""
    outcome: object
    try:
        outcome = registry.task(_noop)  # type: ignore[arg-type]
    except DefinitionError as exc:
        outcome = exc
    if isinstance(outcome, DefinitionError):
        assert "_noop" in str(outcome)
        assert registry.tasks == {}
    else:
        assert isinstance(outcome, Task), f"@task without () gave {outcome!r}, registered nothing"
        assert registry.get("_noop") is outcome
