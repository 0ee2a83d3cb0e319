"""Debounce and TTL in an in-process daemon on a FakeClock: real attempts, real SQLite,
triggers from the daemon's own process, from a client over the socket, and from a
client while no daemon runs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from support import deadline

import keyq
from keyq.clock import FakeClock
from keyq.config import Config
from keyq.errors import TriggerError
from keyq.registry import Registry

pytestmark = pytest.mark.anyio

Seen = list[tuple[float, Any]]


def sync_task(registry: Registry, seen: Seen, clock: FakeClock, **queue: Any) -> keyq.Task:
    """Task "sync" noting when each attempt began and with which payload."""

    @registry.task(id="sync", queue=registry.queue("sync", **queue))
    async def sync(payload: Any, ctx: keyq.Context) -> Any:
        seen.append((clock.now(), payload))
        return payload

    return sync


def reasons(config: Config, run_id: str) -> list[str]:
    with keyq.Client(config) as client:
        return [e["reason"] for e in client.get_run(run_id)["events"]]


async def test_debounce__triggers_fold_into_one_run_with_the_last_payload(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Three triggers 2 s apart with a 5 s debounce: one run, started 5 s after the last,
    with the last payload; each later trigger got the first one's run id."""
    seen: Seen = []
    sync = sync_task(registry, seen, clock)
    t0 = clock.now()
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handles = []
        for n in range(3):
            handles.append(await sync.trigger({"n": n}, debounce="5s", debounce_key="u-1"))
            await daemon.until_idle()
            clock.advance(2)
        assert seen == []
        clock.advance(2.999)  # 4.999 s after the last trigger
        await daemon.until_idle()
        assert seen == []
        clock.advance(0.001)
        await daemon.until_idle()
        async with deadline():
            result = await daemon.result(handles[0].id)
    assert {h.id for h in handles} == {handles[0].id}
    assert [h.is_new for h in handles] == [True, False, False]
    assert seen == [(t0 + 9, {"n": 2})]
    assert result.output == {"n": 2}
    assert reasons(config, handles[0].id) == [
        "triggered", "debounced", "debounced", "delay_over", "started", "completed",
    ]  # fmt: skip


async def test_debounce__the_start_is_capped_at_debounce_max_after_the_first(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Triggers every 4 s with a 5 s debounce would never start: debounce_max 12 s
    starts the run 12 s after the first trigger; the next trigger makes a new run."""
    seen: Seen = []
    sync = sync_task(registry, seen, clock)
    t0 = clock.now()
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        ids = []
        for n, at in enumerate([0, 4, 8, 11]):
            clock.advance(t0 + at - clock.now())
            handle = await sync.trigger(n, debounce=5, debounce_key="k", debounce_max="12s")
            ids.append(handle.id)
            await daemon.until_idle()
        assert seen == []
        clock.advance(t0 + 12 - clock.now())
        await daemon.until_idle()
        assert seen == [(t0 + 12, 3)]
        clock.advance(1)
        after = await sync.trigger(4, debounce=5, debounce_key="k")
        clock.advance(5)
        await daemon.until_idle()
    assert len(set(ids)) == 1
    assert after.id != ids[0]
    assert seen == [(t0 + 12, 3), (t0 + 18, 4)]


async def test_debounce__keys_are_per_task_and_per_key(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Two keys of one task make two runs; the same key on another task makes its own."""
    seen: Seen = []
    sync = sync_task(registry, seen, clock)

    @registry.task(id="other")
    async def other(payload: Any, ctx: keyq.Context) -> None:
        seen.append((clock.now(), ("other", payload)))

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        a = await sync.trigger("a", debounce="1s", debounce_key="u-1")
        b = await sync.trigger("b", debounce="1s", debounce_key="u-2")
        c = await other.trigger("c", debounce="1s", debounce_key="u-1")
        clock.advance(1)
        await daemon.until_idle()
    assert len({a.id, b.id, c.id}) == 3
    assert sorted(str(p) for _, p in seen) == ["('other', 'c')", "a", "b"]


async def test_debounce__a_client_over_the_socket_folds_into_the_daemons_run(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A client in another thread (the socket path) gets the run the daemon holds."""
    seen: Seen = []
    sync = sync_task(registry, seen, clock)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        first = await sync.trigger("first", debounce="5s", debounce_key="u-1")
        with keyq.Client(config, registry=registry, clock=clock) as client:
            clock.advance(1)
            later = await anyio.to_thread.run_sync(
                lambda: client.trigger("sync", "later", debounce="5s", debounce_key="u-1")
            )
            stored = await anyio.to_thread.run_sync(client.get_run, first.id)
        clock.advance(5)
        await daemon.until_idle()
    assert (later.id, later.is_new) == (first.id, False)
    assert stored["payload"] == "later"
    assert stored["status"] == "delayed"
    assert stored["debounce"]["key"] == "u-1"
    assert seen == [(first_time(stored) + 6, "later")]


def first_time(run: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(run["created_at"].replace("Z", "+00:00")).timestamp()


async def test_debounce__with_no_daemon_the_client_folds_and_the_daemon_starts_it(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Triggered twice while no daemon runs, then once more after a restart: one run, the
    last payload, started 5 s after the last trigger."""
    seen: Seen = []
    sync_task(registry, seen, clock)
    t0 = clock.now()
    with keyq.Client(config, registry=registry, clock=clock) as client:
        first = client.trigger("sync", 1, debounce="5s", debounce_key="k")
        clock.advance(3)
        second = client.trigger("sync", 2, debounce="5s", debounce_key="k")
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await daemon.until_idle()
        clock.advance(3)
        third = await registry.get("sync").trigger(3, debounce="5s", debounce_key="k")
        clock.advance(4.9)
        await daemon.until_idle()
        assert seen == []
        clock.advance(0.1)
        await daemon.until_idle()
    assert first.id == second.id == third.id
    assert seen == [(t0 + 11, 3)]


async def test_debounce__bad_options_are_refused_naming_the_field(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    seen: Seen = []
    sync = sync_task(registry, seen, clock)
    cases = [
        ({"debounce": "5s"}, "debounce_key: required"),
        ({"debounce_key": "k"}, "debounce_key: given without debounce"),
        ({"debounce": "5s", "debounce_key": "k", "delay": "1m"}, "delay: cannot be combined"),
        ({"debounce": "0s", "debounce_key": "k"}, "debounce: must be a duration > 0"),
        ({"debounce": "5s", "debounce_key": "k", "debounce_max": "2s"}, "debounce_max: must be"),
        ({"debounce": "5s", "debounce_key": "k", "idempotency_key": "i"}, "idempotency_key"),
        ({"ttl": "soon"}, "ttl: 'soon' is not a duration"),
        ({"ttl": 0}, "ttl: must be a duration > 0"),
    ]
    async with keyq.Daemon(config, registry=registry, clock=clock):
        for options, message in cases:
            with pytest.raises(TriggerError, match=message):
                await sync.trigger("x", **options)
    with keyq.Client(config) as client:
        assert client.list_runs() == []


# --- ttl -------------------------------------------------------------------------------


async def test_ttl__a_run_not_started_in_time_is_canceled_and_never_runs(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Limit 1: the blocker holds the slot past the second run's TTL, which ends
    CANCELED with reason ttl_expired; when the slot frees, nothing else starts."""
    seen: Seen = []
    release = anyio.Event()

    @registry.task(id="block", queue=registry.queue("one", concurrency_limit=1))
    async def block(payload: Any, ctx: keyq.Context) -> None:
        seen.append((clock.now(), payload))
        if payload == "blocker":
            await release.wait()

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        blocker = await block.trigger("blocker")
        waiting = await block.trigger("late", ttl="10m")
        await daemon.until_idle(attempts=False)
        clock.advance(599)
        await daemon.until_idle(attempts=False)
        assert daemon.state_of(waiting.id) is keyq.RunState.QUEUED
        clock.advance(1)
        async with deadline():
            result = await daemon.result(waiting.id)
        release.set()
        async with deadline():
            await daemon.result(blocker.id)
        await daemon.until_idle()
    assert result.status is keyq.RunState.CANCELED
    assert [p for _, p in seen] == ["blocker"]
    assert reasons(config, waiting.id) == ["triggered", "ttl_expired"]
    with keyq.Client(config) as client:
        run = client.get_run(waiting.id)
    assert run["status"] == "canceled"
    assert run["expires_at"] is not None


async def test_ttl__expired_while_the_daemon_was_down_is_canceled_at_start(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Triggered with no daemon running, the TTL passes before it starts: at start-up the
    run is canceled, not run; a run triggered beside it without a TTL runs."""
    seen: Seen = []
    sync_task(registry, seen, clock)
    with keyq.Client(config, registry=registry, clock=clock) as client:
        expiring = client.trigger("sync", "expiring", ttl="1m")
        kept = client.trigger("sync", "kept")
    clock.advance(61)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await daemon.until_idle()
        async with deadline():
            assert (await daemon.result(expiring.id)).status is keyq.RunState.CANCELED
            assert (await daemon.result(kept.id)).ok
    assert [p for _, p in seen] == ["kept"]


async def test_ttl__a_started_run_outlives_its_ttl(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """The TTL is about starting: a run that started in time may run past it."""
    release = anyio.Event()

    @registry.task(id="long")
    async def long(payload: Any, ctx: keyq.Context) -> str:
        await release.wait()
        return "done"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await long.trigger(None, ttl="1s")
        await daemon.until_idle(attempts=False)
        clock.advance(3600)
        await daemon.until_idle(attempts=False)
        release.set()
        async with deadline():
            assert (await daemon.result(handle.id)).output == "done"
