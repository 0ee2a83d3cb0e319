"""Concurrency limits, observed from real attempts running in an in-process daemon."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
import pytest
from support import Overlap, deadline, work

import keyq
from keyq.config import Config, LimitsConfig
from keyq.registry import Registry

pytestmark = pytest.mark.anyio


async def run_all(daemon: keyq.Daemon, handles: list[keyq.RunHandle]) -> list[keyq.RunResult]:
    async with deadline():
        return [await daemon.result(h.id) for h in handles]


async def test_limits__per_key_limit_is_reached_never_exceeded(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """With limit 2 per user, each user runs exactly 2 at once while users run side by side."""
    q = registry.queue("analysis", concurrency_limit=2)

    @registry.task(id="analyze", queue=q)
    async def analyze(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running(ctx.concurrency_key):
            await work()

    async with keyq.Daemon(config, registry=registry) as daemon:
        items = [{"payload": i, "concurrency_key": f"user-{i % 3}"} for i in range(18)]
        results = await run_all(daemon, await analyze.batch_trigger(items))

    assert all(r.ok for r in results)
    assert {k: overlap.peak[k] for k in ("user-0", "user-1", "user-2")} == dict.fromkeys(
        ("user-0", "user-1", "user-2"), 2
    )
    assert overlap.peak["*"] == 6  # the three users' runs overlapped


async def test_limits__queue_total_limit_caps_the_sum_over_keys(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """total_limit caps the queue over all keys while each key keeps its own limit."""
    q = registry.queue("reports", concurrency_limit=2, total_limit=3)

    @registry.task(id="report", queue=q)
    async def report(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running(ctx.concurrency_key):
            await work()

    async with keyq.Daemon(config, registry=registry) as daemon:
        items = [{"payload": i, "concurrency_key": f"k{i % 4}"} for i in range(16)]
        await run_all(daemon, await report.batch_trigger(items))

    assert overlap.peak["*"] == 3
    assert max(overlap.peak[f"k{i}"] for i in range(4)) <= 2


async def test_limits__environment_burst_and_queue_base(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """A queue runs at most the base limit; all queues together at most base x burst_factor."""
    config = replace(config, limits=LimitsConfig(concurrency=4, burst_factor=1.5))

    def make(queue_name: str) -> keyq.Task:
        @registry.task(id=f"job-{queue_name}", queue=registry.queue(queue_name))
        async def job(payload: Any, ctx: keyq.Context) -> None:
            with overlap.running(ctx.queue):
                await work()

        return job

    first, second = make("first"), make("second")
    # Queued before the daemon starts, so the first dispatch sees both backlogs.
    with keyq.Client(config, registry=registry) as client:
        alone = client.batch_trigger(first, [{"payload": i} for i in range(12)])
    async with keyq.Daemon(config, registry=registry) as daemon:
        await run_all(daemon, alone)
    assert overlap.peak["first"] == 4  # a queue runs at most the base limit

    overlap.peak.clear()
    with keyq.Client(config, registry=registry) as client:
        both = client.batch_trigger(first, [{"payload": i} for i in range(12)])
        both += client.batch_trigger(second, [{"payload": i} for i in range(12)])
    async with keyq.Daemon(config, registry=registry) as daemon:
        await run_all(daemon, both)
    assert overlap.peak["*"] == 6  # environment <= floor(4 * 1.5)
    assert overlap.peak["first"] <= 4
    assert overlap.peak["second"] <= 4


async def test_limits__runs_without_a_key_share_the_queue_limit(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """Without a concurrency key the queue's concurrency_limit applies to the queue as a whole."""

    @registry.task(id="mail", queue=registry.queue("mail", concurrency_limit=2))
    async def mail(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running():
            await work()

    async with keyq.Daemon(config, registry=registry) as daemon:
        await run_all(daemon, await mail.batch_trigger([{"payload": i} for i in range(8)]))

    assert overlap.peak["*"] == 2


async def test_limits__trigger_time_queue_override_free_and_paid(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """The free-users/paid-users pattern: the same task on two queues with their own limits."""

    @registry.task(id="generate")
    async def generate(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running(ctx.queue):
            await work()

    free = {"name": "free-users", "concurrency_limit": 1}
    paid = {"name": "paid-users", "concurrency_limit": 3}
    async with keyq.Daemon(config, registry=registry) as daemon:
        handles = await generate.batch_trigger(
            [{"payload": i, "concurrency_key": "u-free", "queue": free} for i in range(6)]
            + [{"payload": i, "concurrency_key": "u-paid", "queue": paid} for i in range(6)]
        )
        results = await run_all(daemon, handles)

    assert all(r.ok for r in results)
    assert overlap.peak["free-users"] == 1
    assert overlap.peak["paid-users"] == 3


async def test_limits__raised_at_runtime_starts_more_at_once(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """keyq queues set-limit while runs wait: the new limit applies without a restart."""
    release = anyio.Event()
    one_running, two_running = anyio.Event(), anyio.Event()

    @registry.task(id="slow", queue=registry.queue("slow", concurrency_limit=1))
    async def slow(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running():
            (one_running if overlap.now["*"] == 1 else two_running).set()
            await release.wait()

    async with keyq.Daemon(config, registry=registry) as daemon:
        handles = await slow.batch_trigger([{"payload": i} for i in range(4)])
        with keyq.Client(config, registry=registry) as client:
            async with deadline():
                await one_running.wait()
            stats = daemon.statistics()
            assert (stats.running, stats.queued) == (1, 3)  # held back by limit 1
            await anyio.to_thread.run_sync(client.set_queue_limit, "slow", 2)
            async with deadline():
                await two_running.wait()
            release.set()
            await run_all(daemon, handles)

    assert overlap.peak["*"] == 2


async def test_limits__lowered_limit_does_not_preempt(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """Lowering a limit lets running runs finish and holds new starts until under it."""
    release = anyio.Event()
    three_running = anyio.Event()

    @registry.task(id="busy", queue=registry.queue("busy", concurrency_limit=3))
    async def busy(payload: int, ctx: keyq.Context) -> None:
        with overlap.running("late" if payload >= 3 else "early"):
            if overlap.now["*"] == 3:
                three_running.set()
            await release.wait()
            await work()

    async with keyq.Daemon(config, registry=registry) as daemon:
        handles = await busy.batch_trigger([{"payload": i} for i in range(5)])
        async with deadline():
            await three_running.wait()
        with keyq.Client(config, registry=registry) as client:  # as `keyq queues set-limit`
            await anyio.to_thread.run_sync(client.set_queue_limit, "busy", 1)
        assert overlap.now["*"] == 3  # nobody was stopped
        release.set()
        results = await run_all(daemon, handles)

    assert all(r.ok for r in results)
    assert overlap.peak["early"] == 3
    assert overlap.peak["late"] == 1  # the two held back ran one at a time
