"""The seam between the daemon and where runs are kept: what the daemon tells a store,
and what it gets back.

Admission lives behind this seam. The daemon runs attempts; the store decides
which runs start, keeps every limit and timer, and makes every transition
durable. One call per wake-up, :meth:`Store.tick`, carries everything that
happened since the last one (attempts that ended or reached a wait, steps to
record, cancels, runs handed in) and hands back what to start and stop, what
was recorded, and when to call again. The SQLite store (:mod:`keyq.store.sqlite`)
keeps keyq's in-memory engine as its admission, on one machine; a PostgreSQL
store would claim from shared tables (``docs/architecture.md``). So the daemon
never assumes it sees every active run: children, tokens and cancel cascades
are resolved behind the seam.

Every event about an attempt carries its fence: the run id and the claim
number the store gave the attempt when it started it. A store refuses an event
whose claim is no longer the run's (an evicted or stale attempt reporting
late); the daemon learns it only by the run not changing. Nothing here is
SQLite's: no file, lock, WAL or rowid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyq.config import Config
from keyq.core.journal import Entry
from keyq.core.model import (
    ChildResult,
    EngineStatistics,
    NewRun,
    Outcome,
    RunId,
    StartRun,
    Transition,
    Wait,
)
from keyq.core.states import RunState
from keyq.errors import KeyqError, StoreError
from keyq.replies import Reply
from keyq.results import TokenResult, WaitToken

# --- what the daemon tells the store --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt returned, raised or stopped."""

    run_id: RunId
    claim: int
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class WaitReached:
    """An attempt reached a waitpoint: it gives its slot back and waits; ``entry`` is
    its journal record, written with the WAITING transition."""

    run_id: RunId
    claim: int
    wait: Wait
    entry: Entry


@dataclass(frozen=True, slots=True)
class StepDone:
    """A ``ctx.step`` returned: its result is to be durable before ``reply`` is set."""

    run_id: RunId
    claim: int
    entry: Entry
    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class CancelAsked:
    """An operator asked to cancel a run (and its active children); ``reply`` once the
    cancel is durable, or failed naming why not (no such run, already final)."""

    run_id: RunId
    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class RunsHandedIn:
    """Validated runs to store and start (:mod:`keyq.handoff`): ``reply`` is set once
    they are durable, or failed (then they are never stored by the store)."""

    runs: list[NewRun]
    reply: Reply[None]
    deadline: float | None  # the client's, on the host's monotonic clock; None: in process
    retry: bool  # sent before: the runs may be stored already


@dataclass(frozen=True, slots=True)
class DebounceAsked:
    """Validated runs of which some are debounced: each folds into the DELAYED run of
    its task and debounce key (``Engine.debounce``) or is stored as a new run;
    ``reply`` gets the id of the run standing for each once that is durable."""

    runs: list[NewRun]
    reply: Reply[list[RunId]]
    retry: bool  # sent before: a run may be stored already


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """Limits changed (config reload, an operator's set-limit): read every layer again."""

    reply: Reply[None]


Event = (
    AttemptEnded
    | WaitReached
    | StepDone
    | CancelAsked
    | RunsHandedIn
    | DebounceAsked
    | SettingsChanged
)


# --- what the store hands back -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """One wake-up's work, all of it durable already.

    ``started``: attempts to launch, or waiting ones to resume (each with its
    claim); ``stop``: attempts to cancel; ``transitions``: what was recorded
    (for the logs and for whoever waits on a result); ``waiting``: runs whose
    wait began (the daemon may drop their coroutines after a while);
    ``refused_waits``: waits that did not begin, with the error to raise in the
    attempt or None to let its cancellation land; ``again``: call again at once
    (more to read); ``next_due_at``: when something falls due.
    """

    started: tuple[StartRun, ...] = ()
    stop: tuple[RunId, ...] = ()
    transitions: tuple[Transition, ...] = ()
    waiting: tuple[RunId, ...] = ()
    refused_waits: tuple[tuple[RunId, KeyqError | None], ...] = ()
    answered_client: bool = False
    again: bool = False
    next_due_at: float | None = None


class CommitAbandoned(KeyqError):
    """The store gave up a commit it kept failing: because it was asked to stop
    (``requested``: nothing of the tick was acted on, the next start recovers), or
    because it could not go on (``commit_retry`` ran out, say): the daemon stops."""

    def __init__(self, message: str, *, requested: bool) -> None:
        super().__init__(message)
        self.requested = requested


class Store(Protocol):
    """Where the daemon's runs are kept and who starts next."""

    on_failing: Callable[[StoreError], None]
    """Called while the store retries a failing commit (the daemon refuses new
    hand-ins meanwhile and keeps its watchdog fed)."""

    async def open(self, now: float) -> None:
        """Register as the database's daemon and take over what a dead one left
        (SQLite: the instance lock, then recovery of every active run)."""

    async def close(self) -> None: ...

    async def tick(self, events: Sequence[Event], now: float) -> Tick:
        """Apply ``events``, decide what starts, record it all durably; then hand back
        what to do. Raises :class:`CommitAbandoned` if the store gave up a
        commit: the daemon must stop without acting on it."""

    def poke(self) -> None:
        """Runs or token completions were stored by another process: read them soon."""

    def stopping(self) -> None:
        """Start nothing more; give up retrying a failing commit."""

    def interrupt_all(self, now: float) -> None:
        """Ask every running attempt to stop, to run again later (shutdown past its grace)."""

    def statistics(self) -> EngineStatistics:
        """Counts of what this store's admission holds (the daemon's ``stats`` op)."""

    def state_of(self, run_id: RunId) -> RunState | None:
        """The run's state if this store's admission holds it, else None."""

    def reconfigure(self, config: Config) -> None:
        """A new configuration (SIGHUP); its limits apply at the next SettingsChanged."""

    async def journal(self, run_id: RunId) -> list[Entry]:
        """The run's recorded waits and steps, by position (for a replay)."""

    async def create_token(
        self, run_id: RunId, position: int, key: str, now: float, timeout_at: float | None
    ) -> WaitToken:
        """A run's waitpoint token (or the one with ``key``), journalled at ``position``."""

    async def token_result(self, token_id: str) -> TokenResult:
        """How a wait on the token ended, as stored."""

    async def child_results(self, child_ids: Sequence[RunId]) -> list[ChildResult]:
        """How these runs ended, as stored (one missing is a failed child)."""

    async def outcome(self, run_id: RunId) -> ChildResult | None:
        """The run's status and result as stored; None if there is no such run."""
