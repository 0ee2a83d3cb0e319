"""Triggers handed to the running daemon: one fsync from trigger to start.

A client that finds the daemon up sends it the validated runs over the
control socket instead of inserting them itself. The daemon checks them again
(its registry and limits decide), adopts them, and commits each run's INSERT
together with its RUNNING transition when a slot is free: one transaction,
one fsync, then it answers and the run starts. Measured on the reference
machine (bench/latency), this takes trigger → start from two fsyncs and a
poll of new rows to one.

Handing in is idempotent by run id, which the client chose: the daemon adopts
a run only if its memory does not have that id (nor the database, for a
request sent again). So when no answer comes (the daemon died, or stayed
silent past ``ANSWER_TIMEOUT_S``), the client may store the same runs itself,
with the same ids, and a run is still created once: whichever write lands
first wins, the other finds it. The daemon adopts nothing close to the
client's deadline and answers a failed commit with an error before that
deadline, having dropped the runs: a trigger the client reports refused is
never stored later by the daemon.

Runs with an idempotency key or a queue limit override take the direct path
(insert, then poke): the daemon adopts a run before its INSERT commits, and
those two are the options whose outcome depends on rows another process may
write in between.

Debounced runs are the other way round: whether a trigger folds into an
earlier DELAYED run is the engine's decision while a daemon runs (it holds
that run in memory), so they go to the daemon in a ``debounce`` request and
are never stored by the client while the daemon holds the database
(:mod:`keyq.producer`). Sending one again after a lost answer folds it into
the run the first request made or folded into: the same run stands.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from keyq.clock import host_monotonic
from keyq.core import bounds
from keyq.core.model import NewRun
from keyq.errors import TriggerError
from keyq.registry import Registry
from keyq.triggers import build_run

MAX_MESSAGE_BYTES = 64 * 1024  # the control socket's line limit; bigger batches go direct
_ENVELOPE_BYTES = 64  # the request's fields around the runs
ANSWER_TIMEOUT_S = 2.0  # then the client stores the runs itself (safe: see above)
_CLOCK_SLACK_S = 0.5  # a deadline may be this much further off (the request's own time)
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def eligible(runs: Sequence[NewRun]) -> bool:
    """True if the daemon may adopt these runs before they are stored."""
    return all(
        r.idempotency_key is None and r.queue_limit is None and r.debounce_key is None for r in runs
    )


def debounced(runs: Sequence[NewRun]) -> bool:
    """True if a run of these is debounced: the batch goes to the daemon's ``debounce``."""
    return any(r.debounce_key is not None for r in runs)


def encode(runs: Sequence[NewRun]) -> bytes | None:
    """The runs as the JSON list :func:`request` sends; None if too big for one line."""
    items = []
    for run in runs:
        head = _DUMPS(
            {
                "id": run.id,
                "task": run.task,
                "at": run.created_at,
                "parent_id": run.parent_id,
                "options": _options(run),
            }
        )
        # The payload is already JSON text: spliced in, not decoded and encoded again.
        items.append(f'{head[:-1]},"payload":{run.payload}}}')
    encoded = f"[{','.join(items)}]".encode()
    return encoded if len(encoded) + _ENVELOPE_BYTES <= MAX_MESSAGE_BYTES else None


def _options(run: NewRun) -> dict[str, Any]:
    """The trigger options that rebuild ``run`` (:func:`decode` checks them again)."""
    options: dict[str, Any] = {
        "queue": run.queue,
        "concurrency_key": run.concurrency_key,
        "priority": run.priority,
        "max_attempts": run.max_attempts,
        "tags": list(run.tags),
    }
    if run.debounce_key is None:
        options["delay"] = run.available_at - run.created_at
    else:
        options["debounce"] = run.available_at - run.created_at
        options["debounce_key"] = run.debounce_key
        options["debounce_max"] = (run.debounce_until or run.available_at) - run.created_at
    if run.expires_at is not None:
        options["ttl"] = run.expires_at - run.created_at
    return options


def debounce_request(encoded_runs: bytes, retry: bool) -> bytes:
    """The ``debounce`` request line: the daemon answers with the run standing for each."""
    flag = b"true" if retry else b"false"
    return b'{"op":"debounce","retry":%b,"runs":%b}\n' % (flag, encoded_runs)


def request(encoded_runs: bytes, retry: bool) -> bytes:
    """The ``trigger`` request line.

    ``deadline`` (CLOCK_MONOTONIC, one clock for every process on the host) is
    when the client stops waiting for the answer and stores the runs itself:
    the daemon adopts none of them close to it (:mod:`keyq.store.handins`), so
    a run it has not begun to commit by then is the client's alone to store (or
    to refuse). ``retry``: this request was sent before, to a daemon that may
    have stored the runs, so the daemon looks their ids up first.
    """
    deadline = host_monotonic() + ANSWER_TIMEOUT_S
    flag = b"true" if retry else b"false"
    return b'{"op":"trigger","deadline":%r,"retry":%b,"runs":%b}\n' % (deadline, flag, encoded_runs)


def check_deadline(value: Any) -> float:
    """A request's ``deadline``: a time on the host's monotonic clock within the answer
    timeout from now (a later one would let the daemon adopt runs their client has
    already stored or been refused)."""
    limit = host_monotonic() + ANSWER_TIMEOUT_S + _CLOCK_SLACK_S
    try:
        return bounds.number("deadline", value, 0, limit)
    except bounds.BoundError as exc:
        clock = f"the host's monotonic clock plus {ANSWER_TIMEOUT_S:g} s"
        raise TriggerError(f"{exc} ({clock})") from None


_FIELDS = ("id", "task", "at", "parent_id", "options", "payload")


def decode(
    items: Any, registry: Registry, max_payload_bytes: int, *, debounce: bool = False
) -> list[NewRun]:
    """The runs of a ``trigger`` (or, with ``debounce``, a ``debounce``) request,
    validated as a trigger is.

    Raises TriggerError naming the run and the field (an unknown task, a bad
    option, a malformed item): nothing is adopted unless every run is valid.
    """
    if not isinstance(items, list) or not items:
        raise TriggerError("runs must be a non-empty list of runs")
    runs = []
    for i, item in enumerate(items):
        try:
            runs.append(_decode_one(item, registry, max_payload_bytes))
        except TriggerError as exc:
            raise TriggerError(f"runs[{i}]: {exc}") from None
    if not eligible([r for r in runs if r.debounce_key is None] if debounce else runs):
        raise TriggerError(
            "runs with an idempotency key or a queue limit must be stored directly, "
            "and debounced runs sent with op 'debounce'"
        )
    return runs


def _decode_one(item: Any, registry: Registry, max_payload_bytes: int) -> NewRun:
    if not isinstance(item, dict):
        raise TriggerError(f"a run must be an object with {', '.join(_FIELDS)}")
    missing = [f for f in _FIELDS if f not in item]
    if missing:
        raise TriggerError(f"missing field {missing[0]!r}")
    task, options = item["task"], item["options"]
    if not isinstance(task, str):
        raise TriggerError(f"task must be a task id, got {task!r}")
    if not isinstance(options, dict):
        raise TriggerError(f"options must be an object, got {options!r}")
    try:
        run_id = bounds.run_id("run id", item["id"])
        parent = item["parent_id"]
        parent_id = None if parent is None else bounds.run_id("parent_id", parent)
    except bounds.BoundError as exc:
        raise TriggerError(str(exc)) from None
    return build_run(
        registry.get(task),
        item["payload"],
        options,
        run_id=run_id,
        now=item["at"],
        max_payload_bytes=max_payload_bytes,
        parent_id=parent_id,
    )
