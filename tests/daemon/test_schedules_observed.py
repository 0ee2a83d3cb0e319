"""Schedules in an in-process daemon on a FakeClock: runs observed from real attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

import keyq
from keyq.clock import FakeClock
from keyq.config import Config
from keyq.registry import Registry
from keyq.store.codec import iso

pytestmark = pytest.mark.anyio

Fired = list[tuple[str, float, float | None]]
MINUTE = 2_000_000_040.0  # a multiple of 60, after FakeClock's start
TEN_MINUTES = 2_000_000_400.0  # a multiple of 600
HOUR = 2_000_001_600.0  # a multiple of 3600


def scheduled(registry: Registry, fired: Fired, **schedule: Any) -> None:
    @registry.task(id="tick", **schedule)
    async def tick(payload: Any, ctx: keyq.Context) -> Any:
        assert ctx.schedule is not None
        previous = ctx.schedule.previous.timestamp() if ctx.schedule.previous else None
        fired.append((ctx.schedule.id, ctx.schedule.tick.timestamp(), previous))
        return payload


def at(clock: FakeClock, t: float) -> FakeClock:
    clock.advance(t - clock.now())
    return clock


async def test_every__one_run_per_tick_carrying_its_tick(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    fired: Fired = []
    scheduled(registry, fired, every="10s")
    at(clock, 2_000_000_005.0)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        for _ in range(3):
            clock.advance(10)
            await daemon.until_idle()
    t = 2_000_000_010.0
    assert fired == [("tick", t, None), ("tick", t + 10, t), ("tick", t + 20, t + 10)]
    with keyq.Client(config) as client:
        runs = client.list_runs(task="tick")
    assert sorted(r["schedule"]["tick"] for r in runs) == [iso(t + i) for i in (0, 10, 20)]
    assert {r["schedule"]["id"] for r in runs} == {"tick"}


async def test_restart__a_claimed_tick_never_fires_again(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    fired: Fired = []
    scheduled(registry, fired, every="1m")
    at(clock, MINUTE - 20)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        clock.advance(20)  # the tick at MINUTE
        await daemon.until_idle()
    for _ in range(3):  # restarted again and again within the same minute
        async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
            await daemon.until_idle()
    assert [tick for _, tick, _ in fired] == [MINUTE]


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("latest", [3000.0]),
        ("all", [600.0, 1200.0, 1800.0, 2400.0, 3000.0]),
        ("skip", []),
    ],
)
async def test_misfire__ticks_missed_while_down(
    config: Config, registry: Registry, clock: FakeClock, misfire: str, expected: list[float]
) -> None:
    """Every 10 min; down from just after the tick at 0 until 90 s after the one at
    50 min: five ticks were missed."""
    fired: Fired = []
    schedule = keyq.Schedule("ten", every="10m", misfire=misfire)
    scheduled(registry, fired, schedules=[schedule])
    base = TEN_MINUTES
    at(clock, base - 1)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        clock.advance(1)
        await daemon.until_idle()
    assert [tick - base for _, tick, _ in fired] == [0.0]
    at(clock, base + 3000 + 90)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await daemon.until_idle()
        assert [tick - base for _, tick, _ in fired[1:]] == expected
        clock.advance(510)  # the next tick, on time, fires whatever the policy
        await daemon.until_idle()
    assert fired[-1][1] - base == 3600.0
    assert fired[-1][2] == (base + expected[-1] if expected else base)  # its previous


@pytest.mark.parametrize(
    ("day", "wall_fire"),
    [
        ((2026, 3, 29), (3, 0, 0)),  # 02:30 does not exist: fires at 03:00, once
        ((2026, 10, 25), (2, 30, 0)),  # 02:30 happens twice: fires at the first, once
    ],
)
async def test_dst__a_wall_time_fires_once(
    config: Config,
    registry: Registry,
    clock: FakeClock,
    day: tuple[int, int, int],
    wall_fire: tuple[int, int, int],
) -> None:
    paris = ZoneInfo("Europe/Paris")
    fired: Fired = []
    scheduled(registry, fired, cron="30 2 * * *", tz="Europe/Paris")
    at(clock, datetime(*day, 0, 0, tzinfo=paris).timestamp())
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        for _ in range(4 * 6):  # 00:00 to 06:00, in quarter hours
            clock.advance(15 * 60)
            await daemon.until_idle()
    expected = datetime(*day, *wall_fire, tzinfo=paris, fold=0).timestamp()
    assert [tick for _, tick, _ in fired] == [expected]


async def test_pause__a_paused_schedule_fires_nothing_and_resumes_without_replay(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    fired: Fired = []
    scheduled(registry, fired, every="1m")
    at(clock, MINUTE - 50)
    with keyq.Client(config, clock=clock) as client:
        async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
            await daemon.until_idle()
            await anyio.to_thread.run_sync(client.pause_schedule, "tick")
            await daemon.until_idle()
            clock.advance(5 * 60)
            await daemon.until_idle()
            assert fired == []
            (row,) = client.schedules()
            assert (row["paused"], row["next_fire_at"]) == (True, None)
        async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
            await daemon.until_idle()
            assert fired == []  # still paused after a restart
            await anyio.to_thread.run_sync(lambda: client.pause_schedule("tick", paused=False))
            await daemon.until_idle()
            assert fired == []  # the paused ticks are not replayed
            clock.advance(60)
            await daemon.until_idle()
    assert len(fired) == 1


async def test_gone__a_removed_schedule_stops_and_keeps_its_history(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    fired: Fired = []
    scheduled(registry, fired, every="1m")
    at(clock, MINUTE - 50)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        clock.advance(50)
        await daemon.until_idle()
    assert len(fired) == 1
    registry.schedules.clear()  # the next version of the code has no schedule
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        clock.advance(5 * 60)
        await daemon.until_idle()
    assert len(fired) == 1
    with keyq.Client(config, clock=clock) as client:
        (row,) = client.schedules()
    assert (row["gone"], row["next_fire_at"], row["last_run_status"]) == (True, None, "completed")


async def test_config__schedules_from_config_fire_with_payload_and_key(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    seen: list[tuple[Any, str | None]] = []

    @registry.task(id="report")
    async def report(payload: Any, ctx: keyq.Context) -> None:
        seen.append((payload, ctx.concurrency_key))

    table = {"id": "nightly", "task": "report", "every": "1h", "payload": {"kind": "daily"},
             "concurrency_key": "team-1"}  # fmt: skip
    from dataclasses import replace

    from keyq.schedules import from_table

    configured = replace(config, schedules=(from_table(0, table),))
    at(clock, HOUR - 1)
    async with keyq.Daemon(configured, registry=registry, clock=clock) as daemon:
        clock.advance(1)
        await daemon.until_idle()
    assert seen == [({"kind": "daily"}, "team-1")]


async def test_config__a_schedule_naming_an_unknown_task_stops_start_up(
    config: Config, registry: Registry
) -> None:
    from dataclasses import replace

    configured = replace(config, schedules=(keyq.Schedule("x", every="1m", task="nope"),))
    with pytest.raises(keyq.ConfigError, match=r"schedules\[0\]\.task: no task 'nope'"):
        async with keyq.Daemon(configured, registry=registry):
            pass


async def test_refused_payload__the_tick_is_logged_and_the_daemon_goes_on(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A schedule's payload over max_payload_bytes fires nothing; other schedules go on."""
    from dataclasses import replace

    fired: Fired = []
    big = keyq.Schedule("big", every="1m", payload={"x": "a" * 200})
    scheduled(registry, fired, schedules=[big, keyq.Schedule("small", every="1m")])
    at(clock, MINUTE - 1)
    async with keyq.Daemon(replace(config, max_payload_bytes=100), registry=registry,
                           clock=clock) as daemon:  # fmt: skip
        clock.advance(1)
        await daemon.until_idle()
        clock.advance(60)
        await daemon.until_idle()
    assert [(s, tick - MINUTE) for s, tick, _ in fired] == [("small", 0.0), ("small", 60.0)]
