"""Delays, retries, timeouts, waits and cancels in an in-process daemon driven by a FakeClock."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from support import deadline

import keyq
from keyq.clock import FakeClock
from keyq.config import Config
from keyq.core.states import RunState
from keyq.registry import Registry

pytestmark = pytest.mark.anyio


def timeline(config: Config, run_id: str) -> list[tuple[str, str, int]]:
    """The run's events as (to, reason, attempt), read back from the database."""
    with keyq.Client(config) as client:
        return [(e["to"], e["reason"], e["attempt"]) for e in client.get_run(run_id)["events"]]


async def test_delay__run_starts_when_its_delay_is_over(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A delayed run holds no slot and starts once the clock passes its delay, not before."""

    @registry.task(id="later")
    async def later(payload: Any, ctx: keyq.Context) -> str:
        return "done"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await later.trigger(None, delay="1m")
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.DELAYED
        clock.advance(59.9)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.DELAYED
        clock.advance(0.1)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == "done"
    assert [t[:2] for t in timeline(config, handle.id)] == [
        ("delayed", "triggered"),
        ("queued", "delay_over"),
        ("running", "started"),
        ("completed", "completed"),
    ]


async def test_retry__backoff_then_success(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A failing attempt waits out an exponential backoff as DELAYED, then the run retries."""
    retry = keyq.Retry(max_attempts=3, min_delay=10, factor=2, jitter=0)

    @registry.task(id="flaky", retry=retry)
    async def flaky(payload: Any, ctx: keyq.Context) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await flaky.trigger({})
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.DELAYED  # after attempt 1
        clock.advance(9.9)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.DELAYED  # 10 s backoff not over
        clock.advance(0.1)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.DELAYED  # attempt 2 failed: 20 s
        clock.advance(20)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.ok
    assert result.output == 3
    retries = [t for t in timeline(config, handle.id) if t[1] == "retry"]
    assert retries == [("delayed", "retry", 1), ("delayed", "retry", 2)]


async def test_retry__final_failure_keeps_the_error(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """With no attempts left the run is FAILED with the last error's type and message."""

    @registry.task(id="broken", retry=keyq.Retry(max_attempts=2, min_delay=1, jitter=0))
    async def broken(payload: Any, ctx: keyq.Context) -> None:
        raise ValueError(f"bad input on attempt {ctx.attempt}")

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await broken.trigger({})
        await daemon.until_idle()
        clock.advance(1)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.status is RunState.FAILED
    assert result.error is not None
    assert (result.error.type, result.error.message) == ("ValueError", "bad input on attempt 2")
    with pytest.raises(keyq.RunFailedError, match="ValueError: bad input on attempt 2"):
        result.unwrap()


async def test_max_duration__attempt_is_cancelled_and_counts_as_failed(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Past max_duration the attempt is cancelled and the run fails with a timeout."""
    started = anyio.Event()

    @registry.task(id="stuck", max_duration=30, retry=keyq.Retry(max_attempts=1))
    async def stuck(payload: Any, ctx: keyq.Context) -> None:
        started.set()
        await anyio.Event().wait()  # never set: only the timeout ends this attempt

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await stuck.trigger({})
        async with deadline():
            await started.wait()
        clock.advance(29)
        await anyio.lowlevel.checkpoint()
        assert daemon.state_of(handle.id) is RunState.RUNNING
        clock.advance(1)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.status is RunState.FAILED
    assert result.error is not None
    assert result.error.type == "Timeout"
    assert timeline(config, handle.id)[-1] == ("failed", "timeout", 1)


async def test_wait_for__gives_the_slot_back_while_waiting(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A waiting run holds no slot: another run of its limit-1 queue runs meanwhile."""
    q = registry.queue("one-at-a-time", concurrency_limit=1)
    order: list[str] = []

    @registry.task(id="patient", queue=q)
    async def patient(payload: Any, ctx: keyq.Context) -> str:
        # A step: the wait outlives checkpoint_after, so the run resumes by replay.
        await ctx.step("before", order.append, "patient:before")
        await ctx.wait.for_(minutes=1)
        order.append("patient:after")
        return "waited"

    @registry.task(id="quick", queue=q)
    async def quick(payload: Any, ctx: keyq.Context) -> None:
        order.append("quick")

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        waiting = await patient.trigger({})
        await daemon.until_idle()
        assert daemon.state_of(waiting.id) is RunState.WAITING
        other = await quick.trigger({})
        async with deadline():
            assert (await daemon.result(other.id)).ok
        clock.advance(60)
        async with deadline():
            result = await daemon.result(waiting.id)

    assert result.output == "waited"
    assert order == ["patient:before", "quick", "patient:after"]
    assert [t[:2] for t in timeline(config, waiting.id)][1:] == [
        ("running", "started"),
        ("waiting", "wait"),
        ("queued", "wait_done"),
        ("running", "resumed"),
        ("completed", "completed"),
    ]


async def test_wait_until__resumes_at_the_instant(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """ctx.wait.until resumes the run when the clock reaches the given instant."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(clock.now() + 3600, tz=UTC)

    @registry.task(id="alarm")
    async def alarm(payload: Any, ctx: keyq.Context) -> None:
        await ctx.wait.until(when)

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await alarm.trigger({})
        await daemon.until_idle()
        clock.advance(3599)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING
        clock.advance(1)
        async with deadline():
            assert (await daemon.result(handle.id)).ok


async def test_children__parent_and_child_on_a_limit_1_queue_do_not_deadlock(
    config: Config, registry: Registry
) -> None:
    """trigger_and_wait releases the parent's slot, so its child can run in the same queue."""
    q = registry.queue("serial", concurrency_limit=1)

    @registry.task(id="child", queue=q)
    async def child(payload: int, ctx: keyq.Context) -> int:
        if payload < 0:
            raise ValueError("negative")
        return payload * 10

    @registry.task(id="parent", queue=q)
    async def parent(payload: Any, ctx: keyq.Context) -> dict[str, Any]:
        one = await child.trigger_and_wait(1)
        many = await child.batch_trigger_and_wait(
            [{"payload": 2}, {"payload": -1, "max_attempts": 1}]
        )
        return {
            "one": one.unwrap(),
            "many": [r.output if r.ok else r.error and r.error.type for r in many],
        }

    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await parent.trigger({})
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == {"one": 10, "many": [20, "ValueError"]}


async def test_cancel__queued_running_and_waiting_runs(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Cancel works in every active state; a running attempt is stopped, not left running."""
    started = anyio.Event()
    stopped = anyio.Event()

    @registry.task(id="long", queue=registry.queue("long", concurrency_limit=1))
    async def long(payload: Any, ctx: keyq.Context) -> None:
        if payload == "wait":
            await ctx.wait.for_(hours=1)
            return
        started.set()
        try:
            await anyio.Event().wait()
        finally:
            stopped.set()

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        waiting = await long.trigger("wait")
        await daemon.until_idle()
        running, queued = await long.batch_trigger([{"payload": "run"}, {"payload": "run"}])
        async with deadline():
            await started.wait()
        for run in (queued, waiting, running):
            await daemon.cancel(run.id)
        async with deadline():
            results = [await daemon.result(h.id) for h in (queued, waiting, running)]
            await stopped.wait()
        with pytest.raises(keyq.RunStateError, match="already canceled"):
            await daemon.cancel(queued.id)

    assert [r.status for r in results] == [RunState.CANCELED] * 3


async def test_idempotency_key__second_trigger_returns_the_first_run(
    config: Config, registry: Registry
) -> None:
    """Triggering twice with one idempotency key creates one run."""

    @registry.task(id="charge")
    async def charge(payload: Any, ctx: keyq.Context) -> None:
        return None

    async with keyq.Daemon(config, registry=registry) as daemon:
        first = await charge.trigger({"amount": 5}, idempotency_key="order-42")
        second = await charge.trigger({"amount": 5}, idempotency_key="order-42")
        async with deadline():
            await daemon.result(first.id)

    assert (second.id, second.is_new, first.is_new) == (first.id, False, True)
    with keyq.Client(config) as client:
        assert len(client.list_runs(task="charge")) == 1


async def test_sync_task__runs_in_a_thread_without_blocking_the_loop(
    config: Config, registry: Registry
) -> None:
    """A sync task runs in a worker thread; async runs keep going while it blocks."""
    import threading

    gate = threading.Event()

    @registry.task(id="blocking", queue=registry.queue("threads"))
    def blocking(payload: Any, ctx: keyq.Context) -> str:
        assert gate.wait(timeout=10)
        return ctx.run_id

    @registry.task(id="async-one", queue=registry.queue("loop"))
    async def async_one(payload: Any, ctx: keyq.Context) -> str:
        return "fine"

    async with keyq.Daemon(config, registry=registry) as daemon:
        sync_run = await blocking.trigger({})
        async_run = await async_one.trigger({})
        async with deadline():
            assert (await daemon.result(async_run.id)).output == "fine"
        assert daemon.state_of(sync_run.id) is RunState.RUNNING
        gate.set()
        async with deadline():
            assert (await daemon.result(sync_run.id)).output == sync_run.id


async def test_dispatch__priority_then_fair_round_robin_then_fifo(
    config: Config, registry: Registry
) -> None:
    """One slot: lower priority number first; a key with a backlog does not starve later keys."""
    from dataclasses import replace

    from keyq.config import LimitsConfig

    config = replace(config, limits=LimitsConfig(concurrency=1, burst_factor=1.0))
    order: list[str] = []

    @registry.task(id="ordered")
    async def ordered(payload: str, ctx: keyq.Context) -> None:
        order.append(payload)

    # Triggered while no daemon runs, so all are waiting when it starts.
    with keyq.Client(config, registry=registry) as client:
        client.batch_trigger(
            ordered, [{"payload": f"heavy-{i}", "concurrency_key": "heavy"} for i in range(50)]
        )
        client.batch_trigger(
            ordered, [{"payload": f"light-{k}", "concurrency_key": f"light-{k}"} for k in range(5)]
        )
        client.trigger(ordered, "urgent", concurrency_key="heavy", priority=1)
        client.trigger(ordered, "lazy", concurrency_key="light-0", priority=9)

    async with keyq.Daemon(config, registry=registry) as daemon, deadline():
        while len(order) < 57:
            await daemon.until_idle()

    assert order[0] == "urgent"
    first_round = order[1:7]
    assert sorted(first_round) == ["heavy-0", *(f"light-{k}" for k in range(5))]
    heavy = [p for p in order if p.startswith("heavy-")]
    assert heavy == [f"heavy-{i}" for i in range(50)]  # FIFO within a key
    assert order[-1] == "lazy"


async def test_daemon__second_daemon_on_the_same_database_is_refused(
    config: Config, registry: Registry
) -> None:
    """Two daemons on one database would break the limits: the second is refused."""
    async with keyq.Daemon(config, registry=registry):
        with pytest.raises(keyq.DaemonAlreadyRunningError, match="already runs"):
            async with keyq.Daemon(config, registry=registry):
                pass


async def test_daemon__stop_past_grace_requeues_and_next_daemon_finishes(
    config: Config, registry: Registry
) -> None:
    """Attempts still running after the grace period are re-queued and run again next start."""
    started = anyio.Event()

    @registry.task(id="slowpoke")
    async def slowpoke(payload: Any, ctx: keyq.Context) -> int:
        if ctx.attempt == 1:
            started.set()
            await anyio.Event().wait()
        return ctx.attempt

    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await slowpoke.trigger({})
        async with deadline():
            await started.wait()
        await daemon.stop(grace_s=0)

    async with keyq.Daemon(config, registry=registry) as daemon, deadline():
        result = await daemon.result(handle.id)

    assert result.output == 2
    reasons = [t[:2] for t in timeline(config, handle.id)]
    assert ("queued", "interrupted") in reasons
