"""The daemon: the engine running in an event loop, with SQLite, attempts and a socket.

``async with keyq.Daemon(config) as daemon:`` starts it in the current event
loop (SPEC §10); ``keyq serve`` runs the same object under signals. One main
loop owns the engine::

    while running:
        ingest new rows if poked; apply what attempts, operators and
        clients posted (runs handed in: keyq.handoff)
        step = engine.tick(now)
        commit new runs and step.transitions (one transaction),
        THEN answer, start/cancel attempts
        sleep until the next deadline or until something is posted

The write-ahead rule: no run starts, and no outcome is acknowledged, before
its transition is on disk. A crash at any point therefore loses nothing that
was acknowledged; runs caught RUNNING are re-queued on the next start.

Waits and steps are recorded in the run's journal (:mod:`keyq.core.journal`). A
waiting run keeps its coroutine for ``checkpoint_after`` seconds, then only
its record: when its wait ends, or after a restart, its function runs again
from the top and replays the journal up to where it waited.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.abc
import structlog

from keyq import handoff
from keyq.clock import Clock, SystemClock
from keyq.config import Config, load_config
from keyq.context import Context
from keyq.core.engine import Engine, EngineStatistics, TaskPolicy
from keyq.core.journal import Entry, Journal
from keyq.core.limits import Limits
from keyq.core.model import (
    Cancelled,
    ChildResult,
    ErrorInfo,
    Failed,
    NewRun,
    Outcome,
    RunId,
    StartRun,
    Step,
    Transition,
    Wait,
    WaitChildren,
    WaitForToken,
)
from keyq.core.settings import key_settings, queue_settings
from keyq.core.states import DELAYED, FAILED, FINAL, QUEUED, RunState
from keyq.core.timers import Deadlines
from keyq.daemon import systemd
from keyq.daemon.control import serve_control
from keyq.daemon.recorder import CommitAbandoned, HandIn, Recorder
from keyq.daemon.replies import Reply, Slot
from keyq.daemon.runner import error_info, run_attempt
from keyq.errors import (
    KeyqError,
    RunNotFoundError,
    RunStateError,
    StoreError,
    TokenNotFoundError,
    TriggerError,
    WaitError,
)
from keyq.ids import new_token_id
from keyq.logs import configure_logging, get_logger, log_transitions
from keyq.producer import Producer
from keyq.registry import (
    Registry,
    Submitter,
    Task,
    TriggerRequest,
    default_registry,
    reset_producer,
    set_producer,
)
from keyq.results import RunHandle, RunResult, TokenResult
from keyq.results import WaitToken as TokenHandle
from keyq.store.codec import spec_from_new
from keyq.store.instance import InstanceLock, socket_path
from keyq.store.permissions import FileAccess, database_files
from keyq.store.sqlite import SqliteStore

STRAY_CANCEL = "the task raised CancelledError without being cancelled (an awaited task was?)"
INGEST_BATCH = 5000
INTERRUPT_WAIT_S = 5.0  # after the grace period: how long interrupted attempts get to stop
POLL_INTERVAL_S = 2.0  # safety net for a lost poke; pokes are the normal path


@dataclass(frozen=True, slots=True)
class _Finished:
    run_id: RunId
    outcome: Outcome
    scope: anyio.CancelScope  # which attempt: an evicted one may report late


@dataclass(frozen=True, slots=True)
class _Waiting:
    run_id: RunId
    wait: Wait
    entry: Entry


@dataclass(frozen=True, slots=True)
class _Record:
    run_id: RunId
    entry: Entry
    reply: Slot[None]


@dataclass(frozen=True, slots=True)
class _Cancel:
    run_id: RunId
    reply: Slot[None]


@dataclass(frozen=True, slots=True)
class _Apply:
    change: Callable[[Engine, float], None]
    reply: Slot[None]


@dataclass(frozen=True, slots=True)
class _Trigger:
    runs: list[NewRun]
    reply: Reply[None]
    deadline: float | None  # keyq.handoff.request; None: a caller in this process
    retry: bool  # sent before: the runs may be stored already


_Command = _Finished | _Waiting | _Record | _Cancel | _Apply | _Trigger


class Daemon:
    """keyq's scheduler in this process. Use as ``async with Daemon(config) as daemon``."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: Registry | None = None,
        clock: Clock | None = None,
        control_socket: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.registry = registry if registry is not None else default_registry
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.socket_path = socket_path(self.config.database) if control_socket else None
        self.access = FileAccess()  # the files' mode and group: set from the config at start
        limits = Limits(self.config.limits.concurrency, self.config.limits.burst_factor)
        self.engine = Engine(limits, self._policies(), rng)
        self.log = get_logger()
        self._lock = InstanceLock(self.config.database)
        self._producer = self._new_producer()
        self._store: SqliteStore | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()
        self._inbox: list[_Command] = []
        self._replies: list[tuple[RunId | None, Reply[None]]] = []  # answered after the commit
        self._wake = anyio.Event()
        self._poked = True
        self._next_poll_at = 0.0
        self._last_seq = 0
        self._last_token_seq = 0
        self._attempts: dict[RunId, anyio.CancelScope] = {}
        self._attempt_tasks: set[asyncio.Task[None]] = set()
        self._suspended: dict[RunId, Slot[tuple[ChildResult, ...]]] = {}
        self._evictions: Deadlines[RunId] = Deadlines()  # suspended coroutines to drop
        self._journaled: set[RunId] = set()  # active runs that start by replay
        self._entries: list[tuple[RunId, Entry, float]] = []  # to commit with the next step
        self._hand_ins: list[HandIn] = []  # runs handed in, stored with the next step
        self._recorder: Recorder | None = None
        self._answered_client = False  # a client waits for this step's commit
        self._result_waiters: dict[RunId, list[Slot[RunResult]]] = {}
        self._idle_waiters: list[tuple[anyio.Event, bool]] = []
        self._stopping = False
        self._stop_event = anyio.Event()  # set with _stopping: ends a commit's retries
        self._failure: CommitAbandoned | None = None
        self._exit_loop = False
        self._drained = anyio.Event()
        self._stop_requested = anyio.Event()
        self._watchdog_s: float | None = None
        self._last_ping = 0.0
        self._loop_done = anyio.Event()
        self._token: Token[Submitter | None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        if not structlog.is_configured():
            configure_logging(self.config.log)
        self.access = FileAccess.for_group(self.config.security.group)  # before any file
        await self._lock.acquire_for_daemon()
        # Before any task starts: attempts inherit it, so Task.trigger inside a
        # task reaches this daemon's database, not whatever ./keyq.toml says.
        self._token = set_producer(self)
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        return self

    async def _close(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            if self._token is not None:
                reset_producer(self._token)
            self._lock.release()

    async def _start(self) -> None:
        self._store = await SqliteStore.open(self.config)
        self._stack.push_async_callback(self._store.close)
        self._recorder = Recorder(
            self._store,
            self.engine,
            self.log,
            retry_for_s=self.config.commit_retry_s,
            stop=self._stop_event,
            while_failing=self._while_failing,
        )
        self._stack.callback(lambda: self._producer.close())
        await self._recover()
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self._stop_attempts)  # before the group exits
        for path in [*database_files(self.config.database), self._lock.path]:
            self.access.apply(path)
        if self.socket_path is not None:
            await self._tg.start(serve_control, self, self.socket_path)
        self._tg.start_soon(self._main_loop, name="keyq main loop")
        self.log.info(
            "daemon_started",
            database=str(self.config.database),
            tasks=len(self.registry.tasks),
            recovered=len(self.engine),
            concurrency=self.config.limits.concurrency,
            burst=self.engine.limits.burst,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            grace = self.config.shutdown_grace_s if exc is None else 0.0
            with anyio.CancelScope(shield=True):
                await self.stop(grace_s=grace)
        finally:
            assert self._tg is not None
            self._tg.cancel_scope.cancel()  # the main loop and the control socket
            for command in self._inbox:
                if isinstance(command, _Record):  # never committed: the step runs again
                    command.reply.fail(
                        StoreError("the daemon stopped before the step was recorded")
                    )
                elif isinstance(command, _Trigger):  # never adopted: the caller stores them
                    command.reply.fail(StoreError("the daemon stopped before storing the runs"))
            if self._failure is not None:
                self.log.error("daemon_failed", error=str(self._failure))
            try:
                await self._close()
            finally:
                self.log.info("daemon_stopped")

    async def _stop_attempts(self) -> None:
        """Cancel what still runs (waiting attempts, mostly) and wait for it to stop."""
        for scope in self._attempts.values():
            scope.cancel()
        for slot in self._suspended.values():
            slot.set(())  # out of their shield, into the cancellation
        if self._attempt_tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(self._attempt_tasks)

    async def stop(self, grace_s: float | None = None) -> None:
        """Start nothing new, let running attempts finish within ``grace_s``, then stop.

        Attempts still running after the grace period are interrupted and
        re-queued. Waiting runs stay WAITING on disk; the next start resumes
        them by replay when their wait ends. A sync task's thread cannot be
        interrupted: the process waits for it to return.
        """
        if self._loop_done.is_set():
            return
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if not self._stopping:
            self._stopping = True
            self._stop_event.set()
            self.engine.hold_starts()
            self.log.info("daemon_draining", running=self.engine.limits.running, grace_s=grace)
            self._wakeup()
        with anyio.move_on_after(grace):
            await self._drained.wait()
        if not self._drained.is_set():
            self.engine.interrupt_all(self.clock.now())
            self._wakeup()
            with anyio.move_on_after(INTERRUPT_WAIT_S):
                await self._drained.wait()
        self._exit_loop = True
        self._wakeup()
        await self._loop_done.wait()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then drain; SIGHUP reloads the config (``keyq serve``)."""
        self._watchdog_s = systemd.watchdog_interval_s()
        if self._watchdog_s is not None and isinstance(self.clock, SystemClock):
            self.clock.max_sleep_s = min(self.clock.max_sleep_s, self._watchdog_s)
        # Handlers first: a SIGHUP's default action kills the process, and a
        # reload may come as soon as "daemon_started" is logged.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with self:
                assert self._tg is not None
                self._tg.start_soon(self._handle_signals, signals, name="keyq signals")
                systemd.notify("READY=1", f"STATUS=serving {self.config.database}")
                await self._stop_requested.wait()
                systemd.notify("STOPPING=1")
        if self._failure is not None:
            raise self._failure

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                systemd.notify("RELOADING=1")
                try:
                    await self.reload_config()
                except KeyqError as exc:  # a typo must not take the service down
                    self.log.error("config_reload_failed", error=str(exc))
                systemd.notify("READY=1")
            elif not self._stop_requested.is_set():
                self.log.info("signal_received", signal=signal.Signals(signum).name)
                self._stop_requested.set()
            else:
                # A second SIGTERM/SIGINT: do not wait out the grace period.
                self.log.warning("interrupting_running_attempts")
                self.engine.interrupt_all(self.clock.now())
                self._wakeup()

    def _ping_watchdog(self, now: float) -> None:
        if self._watchdog_s is not None and now - self._last_ping >= self._watchdog_s:
            systemd.notify("WATCHDOG=1")
            self._last_ping = now

    # --- recovery ----------------------------------------------------------------------

    async def _recover(self) -> None:
        assert self._store is not None
        (await self._read_settings())(self.engine)
        now = self.clock.now()
        snapshot, recovered = await self._store.load_active(
            lambda specs: self.engine.recover(specs, now)
        )
        self._last_seq, self._last_token_seq = snapshot.last_seq, snapshot.last_token_seq
        self._journaled = snapshot.journaled
        for run_id, missing in recovered.children.items():
            self.engine.children_known(run_id, await self._final_children(missing), now)
        for token_id in recovered.tokens:
            token = await self._store.token(token_id)
            if token is None or token.status != "waiting":
                self.engine.token_done(token_id, now)

    def _policies(self) -> dict[str, TaskPolicy]:
        return {t.id: TaskPolicy(t.retry, t.max_duration_s) for t in self.registry.tasks.values()}

    async def reload_settings(self) -> None:
        """Re-read limits from code, config and the database's runtime overrides.

        For other tasks (the control socket, SIGHUP): the change is applied by
        the main loop, which owns the engine.
        """
        change = await self._read_settings()
        await self.change_limits(lambda engine, now: change(engine))

    async def _read_settings(self) -> Callable[[Engine], None]:
        """Read every limit layer now; return the change that applies them all."""
        assert self._store is not None
        stored_queues, stored_keys = await self._store.settings()
        queues = queue_settings(self.registry.queues, self.config.queues, stored_queues)
        keys: dict[tuple[str, str | None], tuple[int | None, bool]] = {
            (k.queue, k.key): (k.limit, k.paused) for k in key_settings(stored_keys)
        }
        limits = self.config.limits

        def apply(engine: Engine) -> None:
            engine.set_environment(limits.concurrency, limits.burst_factor)
            engine.configure_limits({n: (s.limit, s.paused) for n, s in queues.items()}, keys)

        return apply

    async def reload_config(self) -> None:
        """SIGHUP: re-read the config file and apply its limits (the database path stays)."""
        fresh = load_config(self.config.source) if self.config.source else self.config
        if fresh.database != self.config.database:
            self.log.warning("reload_ignored_database", database=str(fresh.database))
        self.config = fresh.with_database(self.config.database)
        old, self._producer = self._producer, self._new_producer()
        old.close()
        await self.reload_settings()
        self.log.info("config_reloaded", source=str(self.config.source))

    def _new_producer(self) -> Producer:
        return Producer(self.config, now=self.clock.now, poke=self.poke)

    # --- the main loop -------------------------------------------------------------------

    async def _main_loop(self) -> None:
        try:
            await self._loop()
        except CommitAbandoned as exc:
            if exc.requested:  # nothing of the step was acted on: the next start recovers
                self.log.warning("commit_abandoned", error=str(exc))
            else:
                self._failure = exc
                self._stop_requested.set()  # keyq serve stops (its supervisor restarts it)
        finally:
            self._drained.set()  # a stop waiting for attempts to finish waits no more
            self._loop_done.set()

    async def _loop(self) -> None:
        while not self._exit_loop:
            self._wake = anyio.Event()
            now = self.clock.now()
            self._ping_watchdog(now)
            if self._poked or now >= self._next_poll_at:
                await self._ingest_safely(now)
            await self._apply_inbox(now)
            self._evict_due(now)
            await self._execute(self.engine.tick(now), now)
            self._check_drained()
            if self._inbox or self._poked or self._exit_loop:
                continue
            self._notify_idle()
            await self.clock.wait_until(self._next_wakeup(), self._wake)

    def _while_failing(self, exc: StoreError) -> None:
        """While a commit is retried: refuse the runs handed in meanwhile at once (their
        callers store them or report the error), and tell systemd the loop is alive."""
        self._ping_watchdog(self.clock.now())
        still: list[_Command] = []
        for command in self._inbox:
            if isinstance(command, _Trigger):
                command.reply.fail(StoreError(f"the daemon cannot write the database: {exc}"))
            else:
                still.append(command)
        self._inbox = still

    def _next_wakeup(self) -> float:
        deadlines = (self.engine.next_deadline(), self._evictions.next_deadline())
        return min([d for d in deadlines if d is not None], default=self._next_poll_at)

    async def _ingest_safely(self, now: float) -> None:
        try:
            await self._ingest(now)
        except StoreError as exc:  # the runs are on disk: read them on the next pass
            self.log.error("ingest_failed", error=str(exc))

    async def _ingest(self, now: float) -> None:
        """Adopt runs that producers inserted since we last looked (by seq, never a scan)."""
        assert self._store is not None
        self._poked = False
        self._next_poll_at = now + POLL_INTERVAL_S
        overrides = False
        while True:
            specs = await self._store.load_new(self._last_seq, INGEST_BATCH)
            for spec in specs:
                if spec.state in (QUEUED, DELAYED):
                    self.engine.submit(spec)
                overrides = overrides or spec.queue_limit is not None
            if specs:
                self._last_seq = specs[-1].seq
            if len(specs) < INGEST_BATCH:
                break
        # Only while a run waits on a token: a trigger's poke pays no extra query.
        # A run that starts waiting later reads its token's state itself.
        while self.engine.waits_for_tokens and (
            completed := await self._store.completed_tokens(self._last_token_seq, INGEST_BATCH)
        ):
            for self._last_token_seq, token_id in completed:
                self.engine.token_done(token_id, now)
        if overrides:  # a trigger set a queue's limit: queue_settings holds the latest word
            (await self._read_settings())(self.engine)

    async def _apply_inbox(self, now: float) -> None:
        inbox, self._inbox = self._inbox, []
        for command in inbox:
            try:
                await self._apply(command, now)
            except Exception as exc:
                # One bad command must not take every other run down with the daemon,
                # nor leave its caller (or a client's later answers) waiting.
                self.log.exception("command_failed", command=type(command).__name__)
                if not isinstance(command, _Finished | _Waiting):
                    command.reply.fail(exc)

    async def _apply(self, command: _Command, now: float) -> None:
        if isinstance(command, _Finished):
            if self._attempts.get(command.run_id) is command.scope:
                del self._attempts[command.run_id]
                self.engine.finished(command.run_id, command.outcome, now)
        elif isinstance(command, _Waiting):
            await self._begin_wait(command, now)
        elif isinstance(command, _Record):
            self._entries.append((command.run_id, command.entry, now))
            self._journaled.add(command.run_id)
            self._replies.append((command.run_id, command.reply))
        elif isinstance(command, _Cancel):
            await self._apply_cancel(command, now)
        elif isinstance(command, _Trigger):
            await self._adopt_handed_in(command)
        else:
            self._apply_change(command, now)

    async def _begin_wait(self, command: _Waiting, now: float) -> None:
        run_id, wait, known = command.run_id, command.wait, {}
        done_token: str | None = None  # a token already completed or timed out
        if isinstance(wait, WaitChildren):
            missing = self.engine.unresolved_children(run_id, wait.child_ids)
            if missing:  # children another process triggered may not be read yet
                await self._ingest(now)
                missing = self.engine.unresolved_children(run_id, wait.child_ids)
            if missing:
                known = await self._final_children(missing)
        elif isinstance(wait, WaitForToken):
            assert self._store is not None
            token = await self._store.token(wait.token_id)
            if token is None:
                self._release(run_id, error=TokenNotFoundError(wait.token_id))
                return
            wait = WaitForToken(token.id, token.timeout_at)
            done_token = token.id if token.status != "waiting" else None
        if not self.engine.wait(run_id, wait, now, known):
            self._release(run_id)  # the attempt is being stopped: let the cancel land
            return
        # Recorded with the WAITING transition, in the same transaction.
        self._entries.append((run_id, command.entry, now))
        self._journaled.add(run_id)
        self._evictions.push(run_id, now + self.config.checkpoint_after_s)
        if done_token is not None:
            self.engine.token_done(done_token, now)

    def _release(self, run_id: RunId, error: BaseException | None = None) -> None:
        """Let a suspended coroutine go on: with ``error`` raised, or to its cancellation."""
        slot = self._suspended.get(run_id)
        if slot is None:
            return
        if error is not None:
            slot.fail(error)
        else:
            slot.set(())

    def _evict_due(self, now: float) -> None:
        """Drop the coroutines of runs waiting past the threshold: the journal has them."""
        for run_id in self._evictions.pop_due(now):
            slot = self._suspended.pop(run_id, None)
            if slot is None:  # canceled, or stopped: nothing left to drop
                continue
            scope = self._attempts.pop(run_id, None)
            if scope is not None:
                scope.cancel()  # its late _Finished is then ignored
            slot.set(())

    async def _final_children(self, missing: list[RunId]) -> dict[RunId, ChildResult]:
        """Results of children the engine does not follow: final ones, read from disk."""
        return {c.run_id: c for c in await self.child_results(missing) if c.status in FINAL}

    async def _apply_cancel(self, command: _Cancel, now: float) -> None:
        if command.run_id not in self.engine:
            await self._ingest(now)
        try:
            if command.run_id not in self.engine:
                await self._explain_not_active(command.run_id)
            self.engine.cancel(command.run_id, now)
        except KeyqError as exc:
            command.reply.fail(exc)
            return
        self._replies.append((command.run_id, command.reply))

    async def _explain_not_active(self, run_id: RunId) -> None:
        assert self._store is not None
        row = await self._store.outcome(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        raise RunStateError(f"run {run_id} is already {row.status.value}")

    async def _adopt_handed_in(self, command: _Trigger) -> None:
        """Adopt runs handed in; they are stored with this step's transitions.

        A run this daemon knows, or (for a request sent again) whose id is
        stored, is not adopted again: handing in is idempotent, so a caller
        that heard no answer may send the runs again or store them itself. Too
        close to the caller's deadline nothing is adopted (keyq/handoff.py).
        """
        if handoff.too_late(command.deadline):
            command.reply.fail(StoreError("the daemon took the runs too late: store them directly"))
            return
        runs = [r for r in command.runs if r.id not in self.engine]
        try:
            stored = await self._stored_ids(runs, command.retry)
        except KeyqError as exc:
            command.reply.fail(exc)
            return
        adopted = [r for r in runs if r.id not in stored and self.engine.submit(spec_from_new(r))]
        if adopted:
            self._hand_ins.append(HandIn(adopted, command.reply, command.deadline))
        else:
            self._replies.append((None, command.reply))
        self._answered_client = self._answered_client or command.deadline is not None

    async def _stored_ids(self, runs: list[NewRun], retry: bool) -> set[RunId]:
        """Which runs are stored already (only a request sent again can have any);
        TriggerError if a run names a parent that does not exist."""
        assert self._store is not None
        parents = {r.parent_id for r in runs if r.parent_id and r.parent_id not in self.engine}
        wanted = [r.id for r in runs] if retry else []
        if not (wanted or parents):
            return set()
        stored = await self._store.stored_ids([*wanted, *parents])
        missing = sorted(p for p in parents if p not in stored)
        if missing:
            raise TriggerError(f"parent_id: no run {missing[0]!r}")
        return stored

    def _apply_change(self, command: _Apply, now: float) -> None:
        try:
            command.change(self.engine, now)
        except KeyqError as exc:
            command.reply.fail(exc)
            return
        self._replies.append((None, command.reply))

    # --- executing a step -----------------------------------------------------------------

    async def _execute(self, step: Step, now: float) -> None:
        refused: dict[RunId, StoreError] = {}
        if step.transitions or step.cancel_requests or self._entries or self._hand_ins:
            step, refused = await self._record(step, now)
        self._answer(refused)
        answered, self._answered_client = self._answered_client, False
        for start in step.start:
            self._launch(start)
        for run_id in step.cancel:
            scope = self._attempts.get(run_id)
            if scope is not None:
                scope.cancel()
            slot = self._suspended.get(run_id)
            if slot is not None:
                slot.set(())  # leave the shielded wait; the cancellation lands next
        if step.transitions:
            if step.start:
                # Let the new attempts take their first step before the log lines
                # are written: logging is not on the trigger-to-start path.
                await anyio.lowlevel.checkpoint()
                if answered:
                    # The client's wake-up (a sync wake-up, from a socket write) put it
                    # on this CPU, behind us: let it have its answer now rather than
                    # after the log lines and the next commit (bench/latency).
                    os.sched_yield()
            log_transitions(self.log, step.transitions, self.config.log.payloads)

    def _answer(self, refused: dict[RunId, StoreError]) -> None:
        """Answer what waited for this step's commit; a refused run's callers get why."""
        replies, self._replies = self._replies, []
        for run_id, reply in replies:
            error = refused.get(run_id) if refused and run_id is not None else None
            if error is None:
                reply.set(None)
            else:
                reply.fail(error)

    async def _record(self, step: Step, now: float) -> tuple[Step, dict[RunId, StoreError]]:
        """Commit the step, shielded from cancellation (keyq/daemon/recorder.py: what a failure
        does); returns what was recorded and the runs whose changes were refused."""
        assert self._recorder is not None
        entries, self._entries = self._entries, []
        hand_ins, self._hand_ins = self._hand_ins, []
        with anyio.CancelScope(shield=True):
            recorded = await self._recorder.record(step, entries, hand_ins, now)
        self._stored(recorded.seqs)
        self._resolve_results(recorded.step.transitions)
        return recorded.step, recorded.refused

    def _stored(self, seqs: dict[RunId, int]) -> None:
        """Runs handed in are stored: the engine learns their rows, and if nobody
        else inserted in between, ingesting skips past them instead of reading them."""
        if not seqs:
            return
        self.engine.stored(seqs)
        first, last = min(seqs.values()), max(seqs.values())
        if first == self._last_seq + 1 and last == self._last_seq + len(seqs):
            self._last_seq = last

    def _launch(self, start: StartRun) -> None:
        if start.resumed:
            slot = self._suspended.pop(start.run_id, None)
            if slot is not None:
                self._evictions.cancel(start.run_id)
                slot.set(start.children)
                return
        # The scope exists before the task runs, so a cancel that arrives before
        # the attempt's first step is not lost.
        scope = self._attempts[start.run_id] = anyio.CancelScope()
        replay = start.run_id in self._journaled
        # A plain asyncio task, not TaskGroup.start_soon: a third of the cost per
        # run (bench/throughput). Each attempt still gets its own task, so its
        # context variables stay its own; _stop_attempts stands in for the group.
        task = asyncio.get_running_loop().create_task(self._attempt(start, scope, replay))
        self._attempt_tasks.add(task)
        task.add_done_callback(self._attempt_tasks.discard)

    async def _attempt(self, start: StartRun, scope: anyio.CancelScope, replay: bool) -> None:
        task = self.registry.tasks.get(start.task)
        outcome: Outcome = Cancelled()  # stays so if the scope is cancelled
        try:
            with scope:
                outcome = await self._run(task, start, replay)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the task itself is being cancelled (the loop is closing)
            outcome = Failed(ErrorInfo("CancelledError", STRAY_CANCEL))
        except Exception as exc:
            # A bug on keyq's side of the attempt. No task group takes the daemon
            # down with it now: fail the run, so its slot is freed and recorded.
            self.log.exception("attempt_crashed", run_id=start.run_id)
            outcome = Failed(error_info(exc), retryable=False)
        self._post(_Finished(start.run_id, outcome, scope))

    async def _run(self, task: Task | None, start: StartRun, replay: bool) -> Outcome:
        journal = None
        if replay:
            assert self._store is not None
            try:
                journal = Journal(await self._store.load_journal(start.run_id))
            except StoreError as exc:
                return Failed(error_info(exc))
        ctx = Context(start, self, journal)
        return await run_attempt(task, start.payload, ctx, self.config.max_payload_bytes)

    def _resolve_results(self, transitions: Sequence[Transition]) -> None:
        if self._journaled:
            for t in transitions:
                if t.to in FINAL:
                    self._journaled.discard(t.run_id)
        if not self._result_waiters:
            return
        for t in transitions:
            if t.to in FINAL and t.run_id in self._result_waiters:
                result = RunResult.from_stored(t.run_id, t.to, t.result, t.error)
                for slot in self._result_waiters.pop(t.run_id):
                    slot.set(result)

    # --- waking, idling, draining ---------------------------------------------------------

    def _post(self, command: _Command) -> None:
        self._inbox.append(command)
        self._wake.set()

    def _wakeup(self) -> None:
        self._wake.set()

    def poke(self) -> None:
        """New runs were inserted: read them now instead of at the next poll."""
        self._poked = True
        self._wake.set()

    def _executing(self) -> bool:
        return any(run_id not in self._suspended for run_id in self._attempts)

    def _check_drained(self) -> None:
        if self._stopping and self.engine.limits.running == 0 and not self._executing():
            self._drained.set()

    def _notify_idle(self) -> None:
        if not self._idle_waiters:
            return
        executing = self._executing()
        still: list[tuple[anyio.Event, bool]] = []
        for event, attempts in self._idle_waiters:
            if attempts and executing:
                still.append((event, attempts))
            else:
                event.set()
        self._idle_waiters = still

    async def until_idle(self, *, attempts: bool = True) -> None:
        """Return once every trigger has been read and nothing is due (for tests).

        With ``attempts=True`` (the default) it also waits until no attempt is
        executing; ``attempts=False`` returns as soon as the daemon itself has
        caught up, with long attempts still running (a timeout fired, say).
        """
        event = anyio.Event()
        self._idle_waiters.append((event, attempts))
        self.poke()
        await event.wait()

    # --- for attempts (AttemptHost) and producers -------------------------------------------

    @property
    def max_result_bytes(self) -> int:
        return self.config.max_payload_bytes

    def now(self) -> float:
        return self.clock.now()

    async def suspend(self, run_id: str, wait: Wait, entry: Entry) -> tuple[ChildResult, ...]:
        """Called by a running attempt: wait holding no slot; returns waited children
        when the engine still has them (else the caller reads them from the store)."""
        if run_id in self._suspended:
            raise WaitError("this run is already waiting: await its waits one at a time")
        await anyio.lowlevel.checkpoint()  # an attempt already cancelled does not wait
        slot: Slot[tuple[ChildResult, ...]] = Slot()
        self._suspended[run_id] = slot
        self._post(_Waiting(run_id, wait, entry))
        try:
            # A wait is one durable step: a timeout in the task's own code must
            # not abandon it halfway (the engine would think the run is waiting
            # while its code runs on without a slot). Only the daemon ends it.
            with anyio.CancelScope(shield=True):
                children = await slot.wait()
        finally:
            if self._suspended.get(run_id) is slot:
                del self._suspended[run_id]
        await anyio.lowlevel.checkpoint()  # a cancel (or an eviction) of the attempt lands here
        return children

    async def record(self, run_id: str, entry: Entry) -> None:
        """Called by a running attempt: make a step's result durable before it returns."""
        reply: Slot[None] = Slot()
        self._post(_Record(run_id, entry, reply))
        with anyio.CancelScope(shield=True):  # once asked, the record is made: wait for it
            await reply.wait()

    async def create_token(
        self, run_id: str, position: int, idempotency_key: str | None, timeout_s: float | None
    ) -> TokenHandle:
        assert self._store is not None
        now = self.clock.now()
        key = idempotency_key if idempotency_key is not None else f"{run_id}/{position}"
        timeout_at = None if timeout_s is None else now + timeout_s
        token = await self._store.create_token(
            new_token_id(now), run_id, position, key, now, timeout_at
        )
        self._journaled.add(run_id)
        return token

    async def child_results(self, child_ids: Sequence[str]) -> list[ChildResult]:
        """How children ended, as stored (for replays and resumes after a restart)."""
        assert self._store is not None
        results = []
        for run_id in child_ids:
            row = await self._store.outcome(run_id)
            if row is None:
                error = ErrorInfo("RunNotFound", f"child run {run_id} does not exist")
                row = ChildResult(run_id, FAILED, None, error)
            results.append(row)
        return results

    async def token_result(self, token_id: str) -> TokenResult:
        assert self._store is not None
        token = await self._store.token(token_id)
        if token is None:
            error = ErrorInfo("TokenNotFound", f"waitpoint token {token_id} does not exist")
            return TokenResult(token_id, False, None, error)
        return token.result()

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        """Store runs durably and start them as their limits allow (``Task.trigger``)."""
        runs = self._producer.build(requests, parent_id)
        if handoff.eligible(runs) and await self.hand_in(runs):
            return [RunHandle(r.id, r.task) for r in runs]
        return await self._producer.submit_runs(runs)

    async def hand_in(self, runs: list[NewRun]) -> bool:
        """Adopt validated runs and return once they are stored, each with its start
        when a slot is free (one transaction). False if the daemon is stopping or
        could not store them (the database failed, or a bug, logged as
        ``command_failed``): they are then not stored, nor kept, and the caller
        stores them itself, as a client that gets no answer does."""
        reply: Slot[None] = Slot()
        if not self.post_trigger(runs, reply, deadline=None, retry=False):
            return False
        try:
            await reply.wait()
        except Exception:
            return False
        return True

    def post_trigger(
        self, runs: list[NewRun], reply: Reply[None], *, deadline: float | None, retry: bool
    ) -> bool:
        """:meth:`hand_in` without waiting: ``reply`` is set once the runs are stored,
        or failed with the error that kept them from being stored (then they are not,
        ever, by this daemon). False (and ``reply`` never called) if the daemon is
        stopping. ``deadline`` and ``retry``: see :func:`keyq.handoff.request`."""
        if self._exit_loop or self._loop_done.is_set():
            return False
        self._post(_Trigger(runs, reply, deadline, retry))
        return True

    # --- operations ---------------------------------------------------------------------------

    async def cancel(self, run_id: RunId) -> None:
        """Cancel a run; returns once the cancel is on disk (a RUNNING run stops soon after)."""
        reply: Slot[None] = Slot()
        self._post(_Cancel(run_id, reply))
        await reply.wait()

    async def change_limits(self, change: Callable[[Engine, float], None]) -> None:
        """Apply a live limit change to the engine from inside the loop."""
        reply: Slot[None] = Slot()
        self._post(_Apply(change, reply))
        await reply.wait()

    async def result(self, run_id: RunId) -> RunResult:
        """Wait until the run is final and return how it ended."""
        assert self._store is not None
        slot: Slot[RunResult] = Slot()
        self._result_waiters.setdefault(run_id, []).append(slot)
        try:
            row = await self._store.outcome(run_id)
            if row is None:
                raise RunNotFoundError(run_id)
            if row.status in FINAL:
                return RunResult.from_stored(run_id, row.status, row.output, row.error)
            return await slot.wait()
        finally:
            waiters = self._result_waiters.get(run_id)
            if waiters and slot in waiters:
                waiters.remove(slot)
                if not waiters:
                    del self._result_waiters[run_id]

    def state_of(self, run_id: RunId) -> RunState | None:
        """The run's state if it is active in this daemon, else None."""
        return self.engine.state_of(run_id)

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()
