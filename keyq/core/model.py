"""Values that flow between the pure core and the shell.

Times are UTC epoch seconds (``float``); names ending in ``_at`` are instants
and names ending in ``_s`` are durations. Payloads and results travel as JSON
text: the core never parses them.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.core.states import Reason, RunState

RunId = str

#: Priority 0 is reserved for runs resuming after a wait: they go ahead of
#: fresh runs. User priorities are 1 (first) to 10 (last).
RESUME_PRIORITY = 0
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 1, 10, 5


# --- waits ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Wait until an instant (``ctx.wait.for_`` and ``ctx.wait.until``)."""

    resume_at: float


@dataclass(frozen=True, slots=True)
class WaitChildren:
    """Wait until every listed child run is final (``trigger_and_wait``)."""

    child_ids: tuple[RunId, ...]


@dataclass(frozen=True, slots=True)
class WaitForToken:
    """Wait until a waitpoint token is completed, or until ``timeout_at`` (``for_token``)."""

    token_id: str
    timeout_at: float | None = None


Wait = WaitUntil | WaitChildren | WaitForToken


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an attempt failed: the exception's type name and message."""

    type: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """A validated run, exactly as it will be inserted."""

    id: str
    task: str
    queue: str
    concurrency_key: str | None
    priority: int
    max_attempts: int
    payload: str
    tags: tuple[str, ...]
    idempotency_key: str | None
    queue_limit: int | None
    parent_id: str | None
    created_at: float
    available_at: float
    state: RunState
    schedule: ScheduleTick | None = None  # the tick a schedule fired this run for
    expires_at: float | None = None  # ttl: canceled if not started by then
    debounce_key: str | None = None  # debounced: later triggers with this key fold in
    debounce_until: float | None = None  # the latest start debouncing may push it to


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """The schedule tick a run was fired for (``ctx.schedule``, the run's JSON)."""

    id: str
    tick: float
    previous: float | None


@dataclass(slots=True)  # not frozen: built per run, and a frozen __init__ costs 4x
class RunSpec:
    """A run as stored, handed to the engine when it enters (ingest or recovery)."""

    id: RunId
    seq: int
    task: str
    queue: str
    concurrency_key: str | None
    priority: int
    payload: str
    max_attempts: int
    state: RunState = RunState.QUEUED
    attempt: int = 0
    available_at: float = 0.0
    created_at: float = 0.0
    # A trigger-time queue override's limit. The engine ignores it: the producer
    # stored it in queue_settings, which the daemon re-reads when it sees one.
    queue_limit: int | None = None
    parent_id: RunId | None = None
    wait: Wait | None = None  # the stored waitpoint of a waiting (or resuming) run
    cancel_requested: bool = False  # a cancel was acknowledged before the attempt stopped
    expires_at: float | None = None  # ttl: canceled if not started by then
    debounce_key: str | None = None
    debounce_until: float | None = None


@dataclass(slots=True)  # not frozen: built per run, and a frozen __init__ costs 4x
class Transition:
    """One state change of one run: the durable record and the audit log entry."""

    run_id: RunId
    seq: int
    task: str
    queue: str
    concurrency_key: str | None
    at: float
    from_: RunState | None
    to: RunState
    reason: Reason
    attempt: int
    available_at: float | None = None  # when a DELAYED run becomes QUEUED
    result: str | None = None  # JSON text, on COMPLETED
    error: ErrorInfo | None = None  # on a failed attempt or FAILED
    wait: Wait | None = None  # the waitpoint the run is waiting on or resuming from
    payload: str | None = None  # JSON text: a debounced trigger's, replacing the run's


# --- outcomes of one attempt, reported by the runner -------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """The task function returned; ``result`` is its JSON-encoded return value."""

    result: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The task function raised (or its result was not JSON)."""

    error: ErrorInfo
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The attempt stopped because the engine asked (cancel or max_duration)."""


Outcome = Completed | Failed | Cancelled


@dataclass(frozen=True, slots=True)
class ChildResult:
    """How a child run ended, as its waiting parent sees it."""

    run_id: RunId
    status: RunState
    output: str | None  # JSON text
    error: ErrorInfo | None


# --- what the shell must do ------------------------------------------------------


@dataclass(slots=True)  # not frozen: built per run, and a frozen __init__ costs 4x
class StartRun:
    """Start (or resume) one run after the Step's transitions are committed."""

    run_id: RunId
    task: str
    queue: str
    concurrency_key: str | None
    attempt: int
    payload: str
    resumed: bool = False
    children: tuple[ChildResult, ...] = ()
    claim: int = 0  # the attempt's fence: every event about it carries this number
    replay: bool = False  # the run has recorded waits or steps: a fresh start replays them
    schedule: ScheduleTick | None = None  # set by the store for a scheduled run


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A RUNNING run was asked to cancel: recorded so that a crash before its
    attempt stops does not run it again."""

    run_id: RunId
    seq: int
    at: float


@dataclass(frozen=True, slots=True)
class TokenExpiry:
    """A run's wait on a token ended by the token's timeout: the token is timed out
    in the same transaction as the run's transition, so the two always agree."""

    run_id: RunId
    token_id: str
    at: float


@dataclass(frozen=True, slots=True)
class CountedStart:
    """A start a rate limit counted: stored with its transition, so that after a
    restart the window is rebuilt and no fresh burst is granted."""

    queue: str
    concurrency_key: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Step:
    """What the engine decided: persist ``transitions``, ``cancel_requests``,
    ``expired_tokens`` and ``counted_starts`` in one transaction, then start
    ``start`` and cancel the attempts in ``cancel``."""

    transitions: tuple[Transition, ...] = ()
    start: tuple[StartRun, ...] = ()
    cancel: tuple[RunId, ...] = ()
    cancel_requests: tuple[CancelRequest, ...] = ()
    expired_tokens: tuple[TokenExpiry, ...] = ()
    counted_starts: tuple[CountedStart, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.transitions or self.start or self.cancel or self.cancel_requests)


# --- what the engine reports --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """What the engine needs to know of a task: its retry policy and time budget."""

    retry: Retry = DEFAULT_RETRY
    max_duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery could not settle from the runs alone: the shell reads the rest.

    ``children`` maps each waiting run to the children it waits for that are
    neither active nor known (final before the restart); ``tokens`` lists the
    waitpoint tokens waiting runs wait for (completed, maybe, while stopped).
    """

    children: dict[RunId, list[RunId]]
    tokens: list[str]


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counts of active runs by state, and of slots in use."""

    queued: int
    delayed: int
    running: int
    waiting: int
    burst_limit: int
    base_limit: int
