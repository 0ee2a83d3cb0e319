"""The SQLite store: keyq's in-memory engine as admission, one file as the truth.

On one machine the fastest admission is the engine itself (its rings,
limits and timers in memory), and SQLite in WAL mode makes every decision
durable before it takes effect. This store owns both: it registers as the
database's one daemon (the instance lock), recovers every active run at
start, and at each :meth:`SqliteStore.tick` applies what the daemon reports,
lets the engine decide, and records the step (:mod:`keyq.store.recorder`)
before handing back what to start.

Runs that other processes stored directly are found by their seq
(``ingest``), after a poke or at the latest every two seconds; token
completions likewise while a run waits on a token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

import anyio

from keyq.config import Config
from keyq.core.engine import Engine
from keyq.core.journal import Entry
from keyq.core.limits import Key, KeyRule, Limits
from keyq.core.model import ChildResult, EngineStatistics, ErrorInfo, NewRun, RunId, TaskPolicy
from keyq.core.settings import QueueSetting, key_settings, queue_settings
from keyq.core.states import FAILED, RunState
from keyq.core.timetable import Fire
from keyq.errors import StoreError
from keyq.ids import new_token_id
from keyq.logs import get_logger
from keyq.registry import Registry
from keyq.results import TokenResult, WaitToken
from keyq.store.admission import Admission
from keyq.store.database import Database
from keyq.store.instance import InstanceLock
from keyq.store.permissions import FileAccess, database_files
from keyq.store.protocol import Event, Tick
from keyq.store.recorder import Recorder
from keyq.store.scheduling import Scheduling

POLL_INTERVAL_S = 2.0  # safety net for a lost poke; pokes are the normal path


class SqliteStore:
    """The daemon's store on one SQLite file (see :class:`keyq.store.protocol.Store`)."""

    def __init__(
        self, config: Config, registry: Registry, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self._registry = registry
        self._log = get_logger()
        limits = Limits(config.limits.concurrency, config.limits.burst_factor)
        self.engine = Engine(limits, _policies(registry), rng)
        self.access = FileAccess()  # the files' mode and group: from the config at open
        self._lock = InstanceLock(config.database)
        # While a commit is retried (the daemon refuses new hand-ins, pings its watchdog).
        self.on_failing: Callable[[StoreError], None] = _nothing
        self._stop = anyio.Event()  # set by stopping(): ends a failing commit's retries
        self._db: Database | None = None
        self._admission: Admission | None = None
        self._poked = True
        self._next_poll_at = 0.0
        self._scheduling = Scheduling(registry, self._log)

    # --- ownership ------------------------------------------------------------------------

    async def open(self, now: float) -> None:
        """Take the database (the instance lock; files shared with ``[security] group``),
        then recover every active run where it was."""
        self.access = FileAccess.for_group(self.config.security.group)  # before any file
        await self._lock.acquire_for_daemon()
        try:
            self._db = await Database.open(self.config)
            for path in [*database_files(self.config.database), self._lock.path]:
                self.access.apply(path)
            recorder = Recorder(
                self._db,
                self.engine,
                self._log,
                retry_for_s=self.config.commit_retry_s,
                stop=self._stop,
                while_failing=lambda exc: self.on_failing(exc),
            )
            self._admission = Admission(self._db, self.engine, recorder, self._log)
            await self._read_settings()
            await self._admission.recover(now)
            await self._scheduling.recover(self._db)
            await self._scheduling.load(self._db, self.config, now)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        try:
            if self._db is not None:
                await self._db.close()
                self._db = None
        finally:
            self._lock.release()

    # --- the wake-up ----------------------------------------------------------------------

    async def tick(self, events: Sequence[Event], now: float) -> Tick:
        """Read what other processes stored, apply ``events``, decide, record, hand back."""
        admission = self._require()
        if self._poked or now >= self._next_poll_at:
            await self._ingest_safely(now)
        await admission.apply(events, now)
        if admission.settings_changed:
            await self._read_settings()
            await self._scheduling.load(self._database(), self.config, now, reload=True)
        self._fire(admission, now)
        tick = await admission.record(self.engine.tick(now), now)
        self._scheduling.annotate(tick.started, tick.transitions)
        due = [self.engine.next_deadline(), self._scheduling.timetable.next_deadline()]
        next_due_at = min([d for d in due if d is not None], default=self._next_poll_at)
        return _with(tick, again=self._poked, next_due_at=min(next_due_at, self._next_poll_at))

    def poke(self) -> None:
        self._poked = True

    def stopping(self) -> None:
        self.engine.hold_starts()
        self._stop.set()

    def interrupt_all(self, now: float) -> None:
        self.engine.interrupt_all(now)

    def reconfigure(self, config: Config) -> None:
        """A new configuration: limits and task policies apply at the next read of settings
        (the database path stays the one opened)."""
        self.config = config.with_database(self.config.database)

    # --- reads and writes for attempts -------------------------------------------------------

    async def journal(self, run_id: RunId) -> list[Entry]:
        return await self._database().load_journal(run_id)

    async def create_token(
        self, run_id: RunId, position: int, key: str, now: float, timeout_at: float | None
    ) -> WaitToken:
        token = await self._database().create_token(
            new_token_id(now), run_id, position, key, now, timeout_at
        )
        self._require().journaled.add(run_id)
        return token

    async def token_result(self, token_id: str) -> TokenResult:
        token = await self._database().token(token_id)
        if token is None:
            error = ErrorInfo("TokenNotFound", f"waitpoint token {token_id} does not exist")
            return TokenResult(token_id, False, None, error)
        return token.result()

    async def child_results(self, child_ids: Sequence[RunId]) -> list[ChildResult]:
        results = []
        for run_id in child_ids:
            row = await self._database().outcome(run_id)
            if row is None:
                error = ErrorInfo("RunNotFound", f"child run {run_id} does not exist")
                row = ChildResult(run_id, FAILED, None, error)
            results.append(row)
        return results

    async def outcome(self, run_id: RunId) -> ChildResult | None:
        return await self._database().outcome(run_id)

    # --- what the admission holds ---------------------------------------------------------------

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()

    def state_of(self, run_id: RunId) -> RunState | None:
        return self.engine.state_of(run_id)

    # --- internals -------------------------------------------------------------------------------

    def _require(self) -> Admission:
        if self._admission is None:
            raise StoreError("the store is not open")
        return self._admission

    def _fire(self, admission: Admission, now: float) -> None:
        """Hand the runs of due schedule ticks in with this step."""
        fired = self._scheduling.due(now, self.config.max_payload_bytes)
        if fired:
            fires, runs = [f for f, _ in fired], [r for _, r in fired]
            admission.fire(runs, _Unclaimed(self._scheduling, fires, runs))

    def _database(self) -> Database:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def _ingest_safely(self, now: float) -> None:
        self._poked = False
        self._next_poll_at = now + POLL_INTERVAL_S
        try:
            if await self._require().ingest(now):
                await self._read_settings()  # a trigger set a queue's limit: re-read them all
        except StoreError as exc:  # the runs are on disk: read them on the next pass
            self._log.error("ingest_failed", error=str(exc))

    async def _read_settings(self) -> None:
        """Apply every limit layer: code, config, then the database's runtime overrides."""
        stored_queues, stored_keys = await self._database().settings()
        code, config = self._registry.queues, self.config.queues
        queues = queue_settings(code, config, stored_queues)
        keys: dict[tuple[str, Key], KeyRule] = {
            (k.queue, k.key): k.rule for k in key_settings(stored_keys)
        }
        limits = self.config.limits
        self.engine.set_environment(limits.concurrency, limits.burst_factor)
        self.engine.configure_limits({n: (s.limit, s.paused) for n, s in queues.items()}, keys)
        self._database().rate_horizon_s = _longest_window(queues.values(), keys.values())


class _Unclaimed:
    """The reply of a schedule's runs: nobody waits, but a refusal re-arms the ticks."""

    def __init__(self, scheduling: Scheduling, fires: list[Fire], runs: list[NewRun]) -> None:
        self._scheduling, self._fires, self._runs = scheduling, fires, runs

    def set(self, value: None) -> None:
        """Stored: the ticks are claimed."""

    def fail(self, error: BaseException) -> None:
        self._scheduling.refused(self._fires, self._runs, error)


def _nothing(exc: StoreError) -> None:
    """Nobody to tell that a commit is failing."""


def _policies(registry: Registry) -> dict[str, TaskPolicy]:
    return {t.id: TaskPolicy(t.retry, t.max_duration_s) for t in registry.tasks.values()}


def _longest_window(queues: Iterable[QueueSetting], keys: Iterable[KeyRule]) -> float:
    """The longest rate window in force: counted starts older than it matter no more."""
    rates = [r for s in queues for r in (s.limit.rate, s.limit.total_rate)]
    rates += [k.rate for k in keys]
    return max((r.window_s for r in rates if r is not None), default=0.0)


def _with(tick: Tick, *, again: bool, next_due_at: float) -> Tick:
    return Tick(
        tick.started,
        tick.stop,
        tick.transitions,
        tick.waiting,
        tick.refused_waits,
        tick.answered_client,
        again,
        next_due_at,
    )
