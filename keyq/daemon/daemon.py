"""The daemon: attempts, a control socket and a store, around one main loop.

``async with keyq.Daemon(config) as daemon:`` starts it in the current event
loop (SPEC §10); ``keyq serve`` runs the same object under signals
(:mod:`keyq.daemon.service`). The main loop is the table of contents::

    while running:
        events = what attempts, operators and clients posted
        tick = await store.tick(events, now)      # decide and record, one commit
        start, resume and stop attempts as the tick says
        sleep until the tick's next due time, or until something is posted

Admission lives behind the store (:mod:`keyq.store.protocol`): which runs
start, every limit and timer, and the write-ahead rule (nothing acts before
its transition is on disk). The daemon runs attempts (:mod:`keyq.daemon.attempts`)
and answers who waits on them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextvars import Token
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from keyq.clock import Clock, SystemClock
from keyq.config import Config, load_config
from keyq.core.model import EngineStatistics, RunId
from keyq.core.states import FINAL, RunState
from keyq.daemon import service
from keyq.daemon.attempts import Attempts
from keyq.daemon.control import serve_control
from keyq.daemon.inbox import Inbox
from keyq.daemon.intake import Intake
from keyq.daemon.waiters import Waiters
from keyq.errors import RunNotFoundError, StoreError
from keyq.logs import configure_logging, get_logger, log_transitions
from keyq.registry import (
    Registry,
    Submitter,
    default_registry,
    reset_producer,
    set_producer,
)
from keyq.replies import Pending
from keyq.results import RunResult
from keyq.store.instance import socket_path
from keyq.store.permissions import FileAccess
from keyq.store.protocol import (
    CommitAbandoned,
    Event,
    SettingsChanged,
    Store,
    Tick,
)
from keyq.store.sqlite import SqliteStore

INTERRUPT_WAIT_S = 5.0  # after the grace period: how long interrupted attempts get to stop


def _no_watchdog(now: float) -> None:
    """No systemd watchdog outside ``keyq serve`` under systemd."""


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
        store: Store | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.registry = registry if registry is not None else default_registry
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.socket_path = socket_path(self.config.database) if control_socket else None
        self.log = get_logger()
        self.store: Store = (
            store if store is not None else SqliteStore(self.config, self.registry, rng)
        )
        self.store.on_failing = self._while_failing
        self._inbox = Inbox()
        self.intake = Intake(
            self.config, post=self._post, is_open=self._open, now=self.clock.now, poke=self.poke
        )
        self.attempts = self._new_attempts()
        self._waiters = Waiters()
        self._stopping = False
        self._exit_loop = False
        self._failure: CommitAbandoned | None = None
        self._drained = anyio.Event()
        self._loop_done = anyio.Event()
        self.stop_requested = anyio.Event()  # keyq serve waits for it (keyq.daemon.service)
        self.ping_watchdog: Callable[[float], None] = _no_watchdog  # keyq serve sets it
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()
        self.access = FileAccess()  # the control socket's mode and group: set at start
        self._token: Token[Submitter | None] | None = None  # set_producer's, to reset

    @property
    def failure(self) -> CommitAbandoned | None:
        """Why the daemon stopped by itself, if it did (its commits kept failing)."""
        return self._failure

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        if not structlog.is_configured():
            configure_logging(self.config.log)
        # Before any task starts: attempts inherit it, so Task.trigger inside a
        # task reaches this daemon's database, not whatever ./keyq.toml says.
        self._token = set_producer(self.intake)
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        return self

    async def _start(self) -> None:
        self.access = FileAccess.for_group(self.config.security.group)
        await self.store.open(self.clock.now())
        self._stack.push_async_callback(self.store.close)
        self._stack.callback(lambda: self.intake.producer.close())
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self.attempts.stop_all)  # before the group exits
        if self.socket_path is not None:
            await self._tg.start(serve_control, self, self.socket_path)
        self._tg.start_soon(self._main_loop, name="keyq main loop")
        stats = self.store.statistics()
        self.log.info(
            "daemon_started",
            database=str(self.config.database),
            tasks=len(self.registry.tasks),
            recovered=stats.queued + stats.delayed + stats.running + stats.waiting,
            concurrency=self.config.limits.concurrency,
            burst=stats.burst_limit,
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
            self._inbox.refuse_all(StoreError("the daemon stopped before recording it"))
            if self._failure is not None:
                self.log.error("daemon_failed", error=str(self._failure))
            try:
                await self._close()
            finally:
                self.log.info("daemon_stopped")

    async def _close(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            if self._token is not None:
                reset_producer(self._token)

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
            self.store.stopping()
            running = self.store.statistics().running
            self.log.info("daemon_draining", running=running, grace_s=grace)
            self._inbox.ring()
        with anyio.move_on_after(grace):
            await self._drained.wait()
        if not self._drained.is_set():
            self.interrupt_running()
            with anyio.move_on_after(INTERRUPT_WAIT_S):
                await self._drained.wait()
        self._exit_loop = True
        self._inbox.ring()
        await self._loop_done.wait()

    def interrupt_running(self) -> None:
        """Stop every running attempt now; each runs again later (a second SIGTERM)."""
        self.store.interrupt_all(self.clock.now())
        self._inbox.ring()

    async def reload_config(self) -> None:
        """SIGHUP: re-read the config file and apply its limits (the database path stays)."""
        fresh = load_config(self.config.source) if self.config.source else self.config
        if fresh.database != self.config.database:
            self.log.warning("reload_ignored_database", database=str(fresh.database))
        self.config = fresh.with_database(self.config.database)
        self.store.reconfigure(self.config)
        self.intake.reconfigure(self.config)
        await self.reload_settings()
        self.log.info("config_reloaded", source=str(self.config.source))

    async def reload_settings(self) -> None:
        """Re-read every limit layer (code, config, the database's runtime overrides);
        returns once the store has applied them."""
        reply: Pending[None] = Pending()
        self._post(SettingsChanged(reply))
        await reply.wait()

    def _new_attempts(self) -> Attempts:
        return Attempts(
            self.registry,
            self.store,
            self.log,
            post=self._post,
            now=self.clock.now,
            submit=self.intake.submit_triggers,
            checkpoint_after_s=self.config.checkpoint_after_s,
            max_result_bytes=self.config.max_payload_bytes,
        )

    def _open(self) -> bool:
        """True while the loop takes triggers: not stopping, not failed."""
        return not (self._exit_loop or self._loop_done.is_set())

    # --- the main loop -------------------------------------------------------------------

    async def _main_loop(self) -> None:
        try:
            await self._loop()
        except CommitAbandoned as exc:
            if exc.requested:  # nothing of the step was acted on: the next start recovers
                self.log.warning("commit_abandoned", error=str(exc))
            else:
                self._failure = exc
                self.stop_requested.set()  # keyq serve stops (its supervisor restarts it)
        finally:
            self._drained.set()  # a stop waiting for attempts to finish waits no more
            self._loop_done.set()

    async def _loop(self) -> None:
        while not self._exit_loop:
            now = self.clock.now()
            self.ping_watchdog(now)
            events = self._inbox.take()
            self.attempts.evict_due(now)
            with anyio.CancelScope(shield=True):  # a commit in flight is never cut short
                tick = await self.store.tick(events, now)
            await self._act(tick, now)
            self._check_drained()
            if self._inbox or tick.again or self._exit_loop:
                continue
            self._waiters.caught_up(self.attempts.executing())
            due = [d for d in (tick.next_due_at, self.attempts.next_eviction()) if d is not None]
            await self.clock.wait_until(min(due, default=None), self._inbox.wake)

    async def _act(self, tick: Tick, now: float) -> None:
        """Do what the store decided (all of it durable already)."""
        for run_id, error in tick.refused_waits:
            self.attempts.refused_wait(run_id, error)
        for run_id in tick.waiting:
            self.attempts.began_waiting(run_id, now)
        for start in tick.started:
            self.attempts.launch(start)
        for run_id in tick.stop:
            self.attempts.stop(run_id)
        if not tick.transitions:
            return
        if tick.started:
            # Let the new attempts take their first step before the log lines are
            # written: logging is not on the trigger-to-start path.
            await anyio.lowlevel.checkpoint()
            if tick.answered_client:
                # The client's wake-up (a sync wake-up, from a socket write) put it on
                # this CPU, behind us: let it have its answer now rather than after
                # the log lines and the next commit (bench/latency).
                os.sched_yield()
        log_transitions(self.log, tick.transitions, self.config.log.payloads)
        self._waiters.ended(tick.transitions)

    def _while_failing(self, exc: StoreError) -> None:
        """While the store retries a commit: refuse the runs handed in meanwhile at once
        (their callers store them or report the error); the loop is alive (watchdog)."""
        self.ping_watchdog(self.clock.now())
        self._inbox.refuse_hand_ins(StoreError(f"the daemon cannot write the database: {exc}"))

    # --- waking, idling, draining ---------------------------------------------------------

    def _post(self, event: Event) -> None:
        self._inbox.post(event)

    def poke(self) -> None:
        """New runs were inserted: read them now instead of at the next poll."""
        self.store.poke()
        self._inbox.ring()

    def _check_drained(self) -> None:
        idle = self.store.statistics().running == 0 and not self.attempts.executing()
        if self._stopping and idle:
            self._drained.set()

    async def until_idle(self, *, attempts: bool = True) -> None:
        """Return once every trigger has been read and nothing is due (for tests).

        With ``attempts=True`` (the default) it also waits until no attempt is
        executing; ``attempts=False`` returns as soon as the daemon itself has
        caught up, with long attempts still running (a timeout fired, say).
        """
        event = self._waiters.idle(attempts=attempts)
        self.poke()
        await event.wait()

    # --- for callers in this process ----------------------------------------------------------

    async def cancel(self, run_id: RunId) -> None:
        """Cancel a run; returns once the cancel is on disk (a RUNNING run stops soon after)."""
        await self.intake.cancel(run_id)

    async def result(self, run_id: RunId) -> RunResult:
        """Wait until the run is final and return how it ended."""
        with self._waiters.result_of(run_id) as pending:  # before the read: no gap
            row = await self.store.outcome(run_id)
            if row is None:
                raise RunNotFoundError(run_id)
            if row.status in FINAL:
                return RunResult.from_stored(run_id, row.status, row.output, row.error)
            return await pending.wait()

    def state_of(self, run_id: RunId) -> RunState | None:
        """The run's state if it is active in this daemon, else None."""
        return self.store.state_of(run_id)

    def statistics(self) -> EngineStatistics:
        return self.store.statistics()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then drain; SIGHUP reloads the config (``keyq serve``)."""
        await service.serve(self)
