"""``keyq serve``: the daemon as a service, under signals and systemd.

SIGTERM and SIGINT drain (a second one interrupts running attempts at once),
SIGHUP reloads the config; systemd hears READY, RELOADING, STOPPING and the
watchdog, which the main loop pings, so a wedged loop is restarted.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import anyio

from keyq.clock import Clock, SystemClock
from keyq.config import Config
from keyq.daemon import systemd
from keyq.errors import KeyqError
from keyq.store.protocol import CommitAbandoned


class Service(AbstractAsyncContextManager[Any], Protocol):
    """What serving needs of the daemon (:class:`keyq.daemon.Daemon`)."""

    config: Config
    clock: Clock
    log: Any
    stop_requested: anyio.Event
    ping_watchdog: Callable[[float], None]

    @property
    def failure(self) -> CommitAbandoned | None: ...
    async def reload_config(self) -> None: ...
    def interrupt_running(self) -> None: ...


async def serve(daemon: Service) -> None:
    """Run until SIGTERM or SIGINT, then drain; raise if the daemon stopped by itself."""
    watchdog_s = systemd.watchdog_interval_s()
    if watchdog_s is not None:
        if isinstance(daemon.clock, SystemClock):
            daemon.clock.max_sleep_s = min(daemon.clock.max_sleep_s, watchdog_s)
        daemon.ping_watchdog = _Watchdog(watchdog_s).ping
    # Handlers first: a SIGHUP's default action kills the process, and a reload
    # may come as soon as "daemon_started" is logged.
    # They stay on through the drain: a second SIGTERM interrupts it.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_handle_signals, daemon, signals, name="keyq signals")
            async with daemon:
                systemd.notify("READY=1", f"STATUS=serving {daemon.config.database}")
                await daemon.stop_requested.wait()
                systemd.notify("STOPPING=1")
            tg.cancel_scope.cancel()
    if daemon.failure is not None:
        raise daemon.failure


async def _handle_signals(daemon: Service, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            systemd.notify("RELOADING=1")
            try:
                await daemon.reload_config()
            except KeyqError as exc:  # a typo must not take the service down
                daemon.log.error("config_reload_failed", error=str(exc))
            systemd.notify("READY=1")
        elif not daemon.stop_requested.is_set():
            daemon.log.info("signal_received", signal=signal.Signals(signum).name)
            daemon.stop_requested.set()
        else:
            # A second SIGTERM/SIGINT: do not wait out the grace period.
            daemon.log.warning("interrupting_running_attempts")
            daemon.interrupt_running()


class _Watchdog:
    """systemd's watchdog, pinged from the main loop at most once per interval."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last = 0.0

    def ping(self, now: float) -> None:
        if now - self._last >= self._interval_s:
            systemd.notify("WATCHDOG=1")
            self._last = now
