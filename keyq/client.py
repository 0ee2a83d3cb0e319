"""Triggering and operating from another process: a web app, a script, the CLI.

``keyq.Client`` is synchronous (Django, Flask, scripts); ``keyq.AsyncClient``
has the same methods as coroutines (FastAPI, aiohttp). When the daemon is up,
a trigger is handed to it over its socket, and it stores the run together with
its start (:mod:`keyq.handoff`); when it is not, the client writes to the
database directly, and the daemon reads the run when it starts. Task ids
resolve against the registry: import your task modules first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from keyq import channel
from keyq.clock import Clock, SystemClock
from keyq.config import Config, load_config
from keyq.core import bounds
from keyq.core.bounds import check_limit, check_name
from keyq.core.durations import parse_duration
from keyq.core.ratelimit import parse_rate
from keyq.errors import InvalidArgumentError, KeyqError, RunNotFoundError, TriggerError
from keyq.ids import new_token_id
from keyq.producer import Producer
from keyq.registry import (
    Registry,
    Task,
    TriggerRequest,
    default_registry,
    split_item,
    use_default_producer,
)
from keyq.results import RunHandle, RunResult, WaitToken
from keyq.store import admin
from keyq.store.instance import daemon_running, socket_path
from keyq.store.local import LocalStore
from keyq.store.reads import Inspector
from keyq.triggers import check_idempotency_key, encode_payload


class Client:
    """Trigger, inspect and operate on runs from any process (blocking calls)."""

    def __init__(
        self,
        config: Config | str | Path | None = None,
        *,
        registry: Registry | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: where "now" comes from (tests give the daemon's FakeClock)."""
        self.config = config if isinstance(config, Config) else load_config(config)
        self.registry = registry if registry is not None else default_registry
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._socket = socket_path(self.config.database)
        self._channel = channel.Channel(self._socket)
        self._store = LocalStore(self.config)
        self._producer = Producer(
            self.config,
            now=self._clock.now,
            poke=self._channel.poke,
            hand_off=self._channel.hand_off,
            send_debounce=self._channel.debounce,
            store=self._store,
        )
        self._inspector: Inspector | None = None

    def close(self) -> None:
        self._producer.close()
        self._channel.close()
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- triggering -------------------------------------------------------------------------

    def trigger(self, task: str | Task, payload: Any = None, **options: Any) -> RunHandle:
        """Create one run; returns once it is durable on disk. Options as ``Task.trigger``."""
        (handle,) = self._producer.trigger_sync([(self._task(task), payload, options)])
        return handle

    def batch_trigger(
        self, task: str | Task, items: Iterable[Mapping[str, Any]]
    ) -> list[RunHandle]:
        """Create several runs in one transaction; each item is ``{"payload": ..., **options}``."""
        return self._producer.trigger_sync(self._requests(task, items))

    def _task(self, task: str | Task) -> Task:
        return task if isinstance(task, Task) else self.registry.get(task)

    def _requests(
        self, task: str | Task, items: Iterable[Mapping[str, Any]]
    ) -> list[TriggerRequest]:
        t = self._task(task)
        return [(t, *split_item(item)) for item in items]

    # --- reading -----------------------------------------------------------------------------

    @property
    def inspector(self) -> Inspector:
        if self._inspector is None:
            self._inspector = Inspector(self.config)
        return self._inspector

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as JSON (SPEC §9), with ``events``."""
        return self.inspector.get_run(run_id)

    def list_runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Runs newest first; filters: status, queue, key, task, tag, limit."""
        if "limit" in filters:
            filters["limit"] = _limit(filters["limit"])
        return self.inspector.list_runs(**filters)

    def stats(self) -> dict[str, Any]:
        return self.inspector.stats(self.config.limits.burst)

    def queues(self) -> list[dict[str, Any]]:
        """Known queues with effective limits, pause state and active counts."""
        return self.inspector.queues(self.registry.queues, self.config, self._clock.now())

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule the daemon was given (gone ones too): next fire, last tick."""
        return self.inspector.schedules(self._clock.now())

    def pause_schedule(self, schedule_id: str, *, paused: bool = True) -> None:
        """Pause (or with ``paused=False`` resume) a schedule; stored, applied live.
        Ticks that fall while it is paused never fire, not even on resume."""
        if not self._store.set_schedule_paused(schedule_id, paused, self._clock.now()):
            raise KeyqError(
                f"no schedule {schedule_id!r} is stored (the daemon stores its schedules "
                "when it starts; `keyq schedules list` shows them)"
            )
        self._settings_changed()

    def keys(self, queue: str) -> list[dict[str, Any]]:
        """The active keys of a queue, busiest backlog first, and which are at their limit."""
        setting = {q["queue"]: q for q in self.queues()}.get(queue)
        limit = setting["concurrency_limit"] if setting else None
        rate = parse_rate(setting["rate_limit"], field="rate_limit") if setting else None
        return self.inspector.keys(queue, limit, rate, self._clock.now())

    def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        """Block until the run is final; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else self._clock.now() + timeout
        delay = 0.01
        while (result := self.inspector.result(run_id)) is None:
            if deadline is not None and self._clock.now() >= deadline:
                raise TimeoutError(f"run {run_id} is not final after {timeout} s")
            time.sleep(delay)  # a CLI wait: polling the file is simple and survives restarts
            delay = min(delay * 1.5, 0.5)
        return result

    # --- operating ------------------------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        """Cancel a run, through the daemon if it runs, else directly in the database."""
        if not self.config.database.exists():
            raise RunNotFoundError(run_id)
        if not self._store.cancel_offline(run_id, self._clock.now()):
            self._ask({"op": "cancel", "run_id": run_id})

    def set_queue_limit(
        self,
        queue: str,
        concurrency_limit: int | None = admin.UNSET,
        total_limit: int | None = admin.UNSET,
    ) -> None:
        """Set (None: clear) a queue's runtime limits; stored durably, applied live."""
        for name, value in (("concurrency_limit", concurrency_limit), ("total_limit", total_limit)):
            if value is not admin.UNSET:
                check_limit(name, value)
        self._store.update_queue_settings(
            check_name("queue name", queue),
            self._clock.now(),
            concurrency_limit=concurrency_limit,
            total_limit=total_limit,
        )
        self._settings_changed()

    def set_key_limit(self, queue: str, key: str, limit: int | None) -> None:
        """Set (None: clear) one concurrency key's limit in a queue; stored, applied live."""
        queue, key = check_name("queue name", queue), _key(key)
        self._store.update_key_settings(
            queue, key, self._clock.now(), concurrency_limit=check_limit("limit", limit)
        )
        self._settings_changed()

    def set_queue_rate(self, queue: str, rate: str | None, total: str | None = admin.UNSET) -> None:
        """Set a queue's runtime rate limit, per key (``"100/1m"``; ``"none"`` lifts the
        rate code or config set; None drops the override), and optionally ``total``
        over all keys; stored durably, applied live."""
        fields = {"rate_limit": _rate("rate", rate)}
        if total is not admin.UNSET:
            fields["rate_limit_total"] = _rate("total", total)
        self._store.update_queue_settings(
            check_name("queue name", queue), self._clock.now(), **fields
        )
        self._settings_changed()

    def set_key_rate(self, queue: str, key: str, rate: str | None) -> None:
        """Give one concurrency key its own rate in a queue (``"10/1m"``; ``"none"``: no
        rate for it; None: the queue's rate again); stored, applied live."""
        queue, key = check_name("queue name", queue), _key(key)
        rate_text = _rate("rate", rate)
        self._store.update_key_settings(queue, key, self._clock.now(), rate_limit=rate_text)
        self._settings_changed()

    def pause(self, queue: str, key: str | None = None, *, paused: bool = True) -> None:
        """Pause (or with ``paused=False`` resume) a queue, or one key of it."""
        queue, key = check_name("queue name", queue), None if key is None else _key(key)
        now = self._clock.now()
        if key is None:
            self._store.update_queue_settings(queue, now, paused=paused)
        else:
            self._store.update_key_settings(queue, key, now, paused=paused)
        self._settings_changed()

    # --- waitpoint tokens ---------------------------------------------------------------------

    def create_token(
        self, *, timeout: float | str | None = None, idempotency_key: str | None = None
    ) -> WaitToken:
        """A new waitpoint token (or the one with this idempotency key) for runs to wait on."""
        now = self._clock.now()
        try:
            timeout_s = None if timeout is None else parse_duration(timeout, field="timeout")
            timeout_at = None if timeout_s is None else bounds.later("timeout", now, timeout_s)
        except ValueError as exc:
            raise TriggerError(str(exc)) from None
        key = check_idempotency_key(idempotency_key)
        return self._store.create_token(new_token_id(now), key, now, timeout_at).handle()

    def complete_token(self, token: WaitToken | str, output: Any = None) -> None:
        """Complete a waiting token with ``output`` (JSON): the runs waiting on it resume.

        Works while the daemon is stopped (they resume when it starts). Raises
        TokenNotFoundError, or TokenStateError if it was already completed or timed out.
        """
        token_id = token.id if isinstance(token, WaitToken) else token
        text = encode_payload(output, self.config.max_payload_bytes, "output")
        self._store.complete_token(token_id, text, self._clock.now())
        self._channel.poke()

    def get_token(self, token_id: str) -> dict[str, Any]:
        """The token as JSON: status, output, timeout and the run that created it."""
        return self._store.token(token_id).as_json()

    def list_tokens(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Tokens, newest first; ``status``: waiting, completed or timed_out."""
        rows = self._store.tokens(status, _limit(limit))
        return [row.as_json() for row in rows]

    def daemon_running(self) -> bool:
        return daemon_running(self.config.database)

    def _settings_changed(self) -> None:
        if self.daemon_running():
            self._ask({"op": "settings"})

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        answer = channel.request(self._socket, message)
        if not answer.get("ok"):
            raise KeyqError(answer.get("error", "the daemon refused the request"))
        return answer


def _key(key: object) -> str:
    try:
        return bounds.text("concurrency key", key, bounds.MAX_KEY_LENGTH)
    except bounds.BoundError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _rate(field: str, rate: object) -> str | None:
    """A rate as stored: its canonical text, "none", or None (no override)."""
    if rate is None:
        return None
    try:
        parsed = parse_rate(rate, field=field)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return str(parsed) if parsed is not None else "none"


def _limit(limit: object) -> int:
    try:
        return bounds.integer("limit", limit, 0, bounds.MAX_INT64)
    except bounds.BoundError as exc:
        raise InvalidArgumentError(str(exc)) from None


class AsyncClient:
    """:class:`Client` for async code: the same methods, as coroutines."""

    def __init__(
        self, config: Config | str | Path | None = None, *, registry: Registry | None = None
    ) -> None:
        self.sync = Client(config, registry=registry)
        self.config = self.sync.config

    async def trigger(self, task: str | Task, payload: Any = None, **options: Any) -> RunHandle:
        """Create one run; returns once it is durable on disk."""
        (handle,) = await self.submit_triggers([(self.sync._task(task), payload, options)])
        return handle

    async def batch_trigger(
        self, task: str | Task, items: Iterable[Mapping[str, Any]]
    ) -> list[RunHandle]:
        """Create several runs in one transaction."""
        return await self.submit_triggers(self.sync._requests(task, items))

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        """The producer interface ``Task.trigger`` uses."""
        return await anyio.to_thread.run_sync(self.sync._producer.trigger_sync, requests, parent_id)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.sync.get_run, run_id)

    async def list_runs(self, **filters: Any) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(lambda: self.sync.list_runs(**filters))

    async def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        return await anyio.to_thread.run_sync(self.sync.wait, run_id, timeout)

    async def cancel(self, run_id: str) -> None:
        await anyio.to_thread.run_sync(self.sync.cancel, run_id)

    async def create_token(
        self, *, timeout: float | str | None = None, idempotency_key: str | None = None
    ) -> WaitToken:
        return await anyio.to_thread.run_sync(
            lambda: self.sync.create_token(timeout=timeout, idempotency_key=idempotency_key)
        )

    async def complete_token(self, token: WaitToken | str, output: Any = None) -> None:
        await anyio.to_thread.run_sync(self.sync.complete_token, token, output)

    async def list_tokens(
        self, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self.sync.list_tokens, status, limit)

    async def close(self) -> None:
        self.sync.close()


# Task.trigger outside a daemon stores through a client of the configuration.
use_default_producer(AsyncClient)
