"""A trigger's arguments, checked and turned into the row to store.

Everything here is refused *before* anything is written: bad options, payloads
that are not JSON or too large, and priorities out of range each raise a
:class:`TriggerError` that names the field. Pure: the caller passes the run id
and ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyq.core import bounds
from keyq.core.bounds import (
    MAX_KEY_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    BoundError,
    check_limit,
    check_name,
)
from keyq.core.durations import parse_duration
from keyq.core.model import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, NewRun
from keyq.core.states import DELAYED, QUEUED
from keyq.errors import DefinitionError, PayloadError, TriggerError
from keyq.registry import Queue, Task

OPTIONS = frozenset(
    {
        "concurrency_key",
        "queue",
        "priority",
        "delay",
        "idempotency_key",
        "max_attempts",
        "tags",
        "ttl",
        "debounce",
        "debounce_key",
        "debounce_max",
    }
)
DEBOUNCE_MAX_FACTOR = 10  # debounce_max defaults to ten times the debounce


def build_run(
    task: Task,
    payload: Any,
    options: Mapping[str, Any],
    *,
    run_id: str,
    now: float,
    max_payload_bytes: int,
    parent_id: str | None = None,
) -> NewRun:
    """Validate one trigger of ``task`` and return the row to insert."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise TriggerError(
            f"unknown trigger option {sorted(unknown)[0]!r} (known: {', '.join(sorted(OPTIONS))})"
        )
    try:
        return _build(task, payload, options, run_id, now, max_payload_bytes, parent_id)
    except BoundError as exc:
        raise TriggerError(str(exc)) from None


def _build(
    task: Task,
    payload: Any,
    options: Mapping[str, Any],
    run_id: str,
    now: float,
    max_payload_bytes: int,
    parent_id: str | None,
) -> NewRun:
    queue_name, queue_limit = _queue(options.get("queue"), task.queue)
    created_at = bounds.instant("created_at", now)
    debounce = _debounce(options, created_at)
    if debounce is None:
        available_at = bounds.later("delay", created_at, _duration(options, "delay"))
        debounce_key = debounce_until = None
    else:
        debounce_key, available_at, debounce_until = debounce
    ttl = _duration(options, "ttl", positive=True)
    return NewRun(
        id=run_id,  # made by keyq.ids, or checked at the socket (keyq.handoff)
        task=task.id,
        queue=queue_name,
        concurrency_key=_concurrency_key(options.get("concurrency_key")),
        priority=_priority(options.get("priority")),
        max_attempts=_max_attempts(options.get("max_attempts"), task),
        payload=encode_payload(payload, max_payload_bytes),
        tags=_tags(options.get("tags")),
        idempotency_key=check_idempotency_key(options.get("idempotency_key")),
        queue_limit=queue_limit,
        parent_id=parent_id,
        created_at=created_at,
        available_at=available_at,
        state=DELAYED if available_at > created_at else QUEUED,
        expires_at=bounds.later("ttl", created_at, ttl) if ttl else None,
        debounce_key=debounce_key,
        debounce_until=debounce_until,
    )


def encode_payload(payload: Any, max_bytes: int, what: str = "payload") -> str:
    """The payload as compact JSON text; PayloadError if not JSON or over ``max_bytes``."""
    try:
        return bounds.json_text(payload, max_bytes)
    except bounds.TooLargeError as exc:
        raise PayloadError(
            f"{what} is {exc}; store large data elsewhere and pass a reference"
        ) from None
    except bounds.NotJSONError as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None


def _queue(value: Any, default: Queue) -> tuple[str, int | None]:
    """The queue name and, for an override that carries one, its new limit."""
    try:
        if value is None:
            return default.name, None
        if isinstance(value, str):
            return check_name("queue name", value), None
        if isinstance(value, Queue):
            return value.name, value.concurrency_limit
        if isinstance(value, Mapping):
            extra = set(value) - {"name", "concurrency_limit"}
            if extra:
                raise TriggerError(f"queue: unknown field {sorted(extra)[0]!r}")
            name = check_name("queue name", value.get("name"))
            return name, check_limit("queue.concurrency_limit", value.get("concurrency_limit"))
    except DefinitionError as exc:
        raise TriggerError(f"queue: {exc}") from None
    raise TriggerError(f"queue must be a name, a keyq.queue(...) or a mapping, got {value!r}")


def _concurrency_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(bounds.integer("concurrency_key", value, -bounds.MAX_INT64, bounds.MAX_INT64))
    return bounds.text("concurrency_key", value, MAX_KEY_LENGTH)


def _priority(value: Any) -> int:
    if value is None:
        return DEFAULT_PRIORITY
    return bounds.integer("priority", value, MIN_PRIORITY, MAX_PRIORITY)


def _duration(options: Mapping[str, Any], field: str, *, positive: bool = False) -> float:
    """The option's seconds (0 if not given); TriggerError naming it if not a duration."""
    value = options.get(field)
    if value is None:
        return 0.0
    try:
        seconds = parse_duration(value, field=field)
    except ValueError as exc:
        raise TriggerError(str(exc)) from None
    if positive and seconds <= 0:
        raise TriggerError(f"{field}: must be a duration > 0, got {value!r}")
    return seconds


def _debounce(options: Mapping[str, Any], created_at: float) -> tuple[str, float, float] | None:
    """A debounced trigger's key, start and latest start (``debounce_max``), or None."""
    if options.get("debounce") is None:
        for field in ("debounce_key", "debounce_max"):
            if options.get(field) is not None:
                raise TriggerError(f"{field}: given without debounce")
        return None
    if options.get("delay") is not None:
        raise TriggerError("delay: cannot be combined with debounce, which sets the start")
    if options.get("idempotency_key") is not None:
        raise TriggerError(
            "idempotency_key: cannot be combined with debounce; the debounce key already "
            "decides which run a trigger is"
        )
    if options.get("debounce_key") is None:
        raise TriggerError("debounce_key: required with debounce (the triggers it folds share it)")
    key = bounds.text("debounce_key", options["debounce_key"], MAX_KEY_LENGTH)
    seconds = _duration(options, "debounce", positive=True)
    longest = _duration(options, "debounce_max", positive=True) or DEBOUNCE_MAX_FACTOR * seconds
    if longest < seconds:
        raise TriggerError(
            f"debounce_max: must be at least the debounce ({seconds:g} s), "
            f"got {options['debounce_max']!r}"
        )
    return (
        key,
        bounds.later("debounce", created_at, seconds),
        bounds.later("debounce_max", created_at, longest),
    )


def _max_attempts(value: Any, task: Task) -> int:
    if value is None:
        return task.retry.max_attempts
    return bounds.integer("max_attempts", value, 1, bounds.MAX_ATTEMPTS)


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or len(value) > MAX_TAGS:
        raise TriggerError(
            f"tags must be a list of at most {MAX_TAGS} strings of 1-{MAX_TAG_LENGTH} "
            f"characters, got {value!r}"
        )
    return tuple(bounds.text(f"tags[{i}]", t, MAX_TAG_LENGTH) for i, t in enumerate(value))


def check_idempotency_key(value: Any) -> str | None:
    """A valid idempotency key (of a run or a token), or None; TriggerError otherwise."""
    if value is None:
        return None
    try:
        return bounds.text("idempotency_key", value, MAX_KEY_LENGTH)
    except BoundError as exc:
        raise TriggerError(str(exc)) from None
