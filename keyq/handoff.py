"""Triggers handed to the running daemon: one fsync from trigger to start.

A client that finds the daemon up sends it the validated runs over the
control socket instead of inserting them itself. The daemon checks them again
(its registry and limits decide), adopts them, and commits each run's INSERT
together with its RUNNING transition when a slot is free: one transaction,
one fsync, then it answers and the run starts. Measured on the reference
machine (bench/latency), this takes trigger → start from two fsyncs and a
poll of new rows to one.

Handing in is idempotent by run id, which the client chose: the daemon adopts
a run only if neither its memory nor the database has that id. So when no
answer comes (the daemon died, or stayed silent past ``ANSWER_TIMEOUT_S``),
the client may store the same runs itself, with the same ids, and a run is
still created once: whichever write lands first wins, the other finds it.

Runs with an idempotency key or a queue limit override take the direct path
(insert, then poke): the daemon adopts a run before its INSERT commits, and
those two are the options whose outcome depends on rows another process may
write in between.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from keyq.clock import host_monotonic
from keyq.registry import Registry
from keyq.triggers import NewRun, build_run

MAX_MESSAGE_BYTES = 64 * 1024  # the control socket's line limit; bigger batches go direct
_ENVELOPE_BYTES = 64  # the request's fields around the runs
ANSWER_TIMEOUT_S = 2.0  # then the client stores the runs itself (safe: see above)
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def eligible(runs: Sequence[NewRun]) -> bool:
    """True if the daemon may adopt these runs before they are stored."""
    return all(r.idempotency_key is None and r.queue_limit is None for r in runs)


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
                "options": {
                    "queue": run.queue,
                    "concurrency_key": run.concurrency_key,
                    "priority": run.priority,
                    "max_attempts": run.max_attempts,
                    "tags": list(run.tags),
                    "delay": run.available_at - run.created_at,
                },
            }
        )
        # The payload is already JSON text: spliced in, not decoded and encoded again.
        items.append(f'{head[:-1]},"payload":{run.payload}}}')
    encoded = f"[{','.join(items)}]".encode()
    return encoded if len(encoded) + _ENVELOPE_BYTES <= MAX_MESSAGE_BYTES else None


def request(encoded_runs: bytes, retry: bool) -> bytes:
    """The ``trigger`` request line.

    ``new_until`` (CLOCK_MONOTONIC, one clock for every process on the host)
    is when the client may start storing the runs itself: before it, they can
    only be new to the database, and the daemon skips looking them up. A retry
    sends 0: the daemon that took the first try may have stored them.
    """
    new_until = 0.0 if retry else host_monotonic() + ANSWER_TIMEOUT_S
    return b'{"op":"trigger","new_until":%r,"runs":%b}\n' % (new_until, encoded_runs)


def is_new(new_until: float) -> bool:
    """True while runs sent with ``new_until`` cannot have been stored by their sender,
    with a margin for the time between this check and the commit."""
    return host_monotonic() < new_until - ANSWER_TIMEOUT_S / 2


def decode(items: Any, registry: Registry, max_payload_bytes: int) -> list[NewRun]:
    """The runs of a ``trigger`` request, validated as a trigger is.

    Raises TriggerError (an unknown task, a bad option) or TypeError/KeyError
    for a malformed request: nothing is adopted unless every run is valid.
    """
    if not isinstance(items, list):
        raise TypeError("runs must be a list")
    runs = []
    for item in items:
        run_id, at, parent_id = item["id"], item["at"], item["parent_id"]
        if not isinstance(run_id, str) or not isinstance(at, int | float):
            raise TypeError("a run needs a string id and a numeric time")
        if parent_id is not None and not isinstance(parent_id, str):
            raise TypeError("parent_id must be a string or null")
        runs.append(
            build_run(
                registry.get(item["task"]),
                item["payload"],
                item["options"],
                run_id=run_id,
                now=float(at),
                max_payload_bytes=max_payload_bytes,
                parent_id=parent_id,
            )
        )
    if not eligible(runs):
        raise TypeError("runs with an idempotency key or a queue limit must be stored directly")
    return runs
