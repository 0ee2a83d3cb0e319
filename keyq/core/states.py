"""The run state machine, as one literal table.

A run moves only along the edges listed in ``TRANSITIONS``; every state change
in keyq goes through :func:`check_transition`, which raises
:class:`IllegalTransition` and leaves the run untouched otherwise::

    DELAYED --delay over--> QUEUED --slot free--> RUNNING --returns--> COMPLETED
       ^                      ^  ^                  |  |  |
       |  retry after backoff |  | wait done        |  |  +--raises, none left--> FAILED
       +----------------------+--+-- WAITING <------+  +--waits
    cancel: any non-final state --> CANCELED

QUEUED and DELAYED hold no slot; RUNNING holds exactly one at every level;
WAITING gives its slot back. COMPLETED, FAILED and CANCELED are final.
"""

from __future__ import annotations

from enum import StrEnum

from keyq.errors import IllegalTransition


class RunState(StrEnum):
    """The state of a run; the value is the lower-case name used in JSON and SQL."""

    DELAYED = "delayed"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class Reason(StrEnum):
    """Why a run changed state: the ``reason`` of each timeline entry, in JSON and SQL."""

    TRIGGERED = "triggered"  # created (QUEUED, or DELAYED with a delay)
    DELAY_OVER = "delay_over"  # DELAYED -> QUEUED at its time
    STARTED = "started"  # a first attempt
    RESTARTED = "restarted"  # an attempt after an interrupted one
    RESUMED = "resumed"  # a waiting attempt goes on
    COMPLETED = "completed"
    FAILED = "failed"  # the task raised, no attempt left (or not to be retried)
    TIMEOUT = "timeout"  # past max_duration
    RETRY = "retry"  # failed, waiting out its backoff
    INTERRUPTED = "interrupted"  # the daemon stopped or died during the attempt
    CANCELED = "canceled"
    WAIT = "wait"  # RUNNING -> WAITING
    WAIT_DONE = "wait_done"  # a wait.for_ / wait.until is over
    TOKEN_COMPLETED = "token_completed"
    TOKEN_TIMEOUT = "token_timeout"
    CHILDREN_DONE = "children_done"
    UNRECORDABLE = "unrecordable"  # the database refused the run's record for good
    DEBOUNCED = "debounced"  # DELAYED -> DELAYED: a later trigger replaced its payload
    TTL_EXPIRED = "ttl_expired"  # not started within its ttl


DELAYED, QUEUED, RUNNING, WAITING = (
    RunState.DELAYED,
    RunState.QUEUED,
    RunState.RUNNING,
    RunState.WAITING,
)
COMPLETED, FAILED, CANCELED = RunState.COMPLETED, RunState.FAILED, RunState.CANCELED

FINAL: frozenset[RunState] = frozenset({COMPLETED, FAILED, CANCELED})
ACTIVE: frozenset[RunState] = frozenset({DELAYED, QUEUED, RUNNING, WAITING})
ACTIVE_ORDER: tuple[RunState, ...] = (QUEUED, DELAYED, RUNNING, WAITING)  # as shown, too
HOLDS_SLOT: frozenset[RunState] = frozenset({RUNNING})

# A new run is created QUEUED, or DELAYED when it has a delay; `None` stands for
# "not yet a run" so that creation is a transition like any other.
TRANSITIONS: dict[RunState | None, frozenset[RunState]] = {
    None: frozenset({QUEUED, DELAYED}),
    # DELAYED -> FAILED (as from every active state): the database refused to
    # record a change of the run for good (reason "unrecordable").
    # DELAYED -> DELAYED: a debounced trigger replaced the payload and moved the start.
    DELAYED: frozenset({DELAYED, QUEUED, CANCELED, FAILED}),
    # QUEUED -> FAILED: a run queued to resume lost its attempt in a crash and
    # has no attempts left.
    QUEUED: frozenset({RUNNING, CANCELED, FAILED}),
    # RUNNING -> QUEUED is an interrupted attempt re-queued at once on recovery;
    # RUNNING -> DELAYED is a failed attempt waiting out its backoff.
    RUNNING: frozenset({COMPLETED, FAILED, CANCELED, WAITING, QUEUED, DELAYED}),
    # WAITING -> QUEUED: the waitpoint is done and the run waits for a slot again;
    # WAITING -> FAILED: the run cannot be resumed (no attempts left after a crash).
    WAITING: frozenset({QUEUED, CANCELED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
}


def check_transition(run_id: str, current: RunState | None, to: RunState) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> to`` is in the table."""
    if to not in TRANSITIONS[current]:
        was = current.value if current is not None else "new"
        raise IllegalTransition(f"run {run_id}: cannot go from {was} to {to.value}")
