"""Task code that misbehaves, or races the daemon, must not break limits or the daemon."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from support import Overlap, deadline, insert

import keyq
from keyq.clock import FakeClock
from keyq.config import Config
from keyq.core.engine import Engine
from keyq.core.model import Failed, RunSpec
from keyq.core.states import RunState
from keyq.daemon.attempts import Attempts
from keyq.producer import Producer
from keyq.registry import Registry
from keyq.store.protocol import AttemptEnded
from keyq.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_trigger_inside_a_task__reaches_this_daemon(
    config: Config, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task.trigger from inside a task uses the daemon's database, whatever the cwd holds."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("KEYQ_CONFIG", raising=False)

    @registry.task(id="follow-up")
    async def follow_up(payload: Any, ctx: keyq.Context) -> str:
        return "followed"

    @registry.task(id="first")
    async def first(payload: Any, ctx: keyq.Context) -> str:
        return (await follow_up.trigger({})).id

    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await first.trigger({})
        async with deadline():
            child_id = (await daemon.result(handle.id)).output
            assert (await daemon.result(child_id)).output == "followed"

    assert not (elsewhere / "keyq.db").exists()


async def test_wait__a_timeout_in_task_code_does_not_abandon_the_wait(
    config: Config, registry: Registry, clock: FakeClock, overlap: Overlap
) -> None:
    """A wait wrapped in the task's own timeout stays one durable wait: no slot, no overlap."""
    q = registry.queue("single", concurrency_limit=1)

    @registry.task(id="impatient", queue=q)
    async def impatient(payload: Any, ctx: keyq.Context) -> str:
        with overlap.running():
            pass
        with anyio.move_on_after(0.01):  # real seconds: fires long before the fake minute
            await ctx.wait.for_(minutes=1)
        with overlap.running():
            return "after"

    @registry.task(id="neighbour", queue=q)
    async def neighbour(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running():
            await anyio.sleep(0.05)

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        waiting = await impatient.trigger({})
        await daemon.until_idle()
        assert daemon.state_of(waiting.id) is RunState.WAITING
        other = await neighbour.trigger({})
        async with deadline():
            await daemon.result(other.id)
        assert daemon.state_of(waiting.id) is RunState.WAITING
        clock.advance(60)
        async with deadline():
            assert (await daemon.result(waiting.id)).output == "after"

    assert overlap.peak["*"] == 1


async def test_wait__two_waits_at_once_fail_the_run_not_the_daemon(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Gathering two waits is refused in the task; the run fails and others carry on."""

    @registry.task(id="greedy", retry=keyq.Retry(max_attempts=1))
    async def greedy(payload: Any, ctx: keyq.Context) -> None:
        await asyncio.gather(ctx.wait.for_(10), ctx.wait.for_(20))

    @registry.task(id="bystander")
    async def bystander(payload: Any, ctx: keyq.Context) -> str:
        return "fine"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        bad = await greedy.trigger({})
        async with deadline():
            result = await daemon.result(bad.id)
            good = await bystander.trigger({})
            assert (await daemon.result(good.id)).output == "fine"

    assert result.status is RunState.FAILED
    assert result.error is not None
    assert result.error.type == "WaitError"


async def test_task__stray_cancelled_error_fails_the_run_not_the_daemon(
    config: Config, registry: Registry
) -> None:
    """A task that lets a CancelledError escape fails; the daemon keeps running others."""

    @registry.task(id="self-cancel", retry=keyq.Retry(max_attempts=1))
    async def self_cancel(payload: Any, ctx: keyq.Context) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner

    @registry.task(id="after")
    async def after(payload: Any, ctx: keyq.Context) -> str:
        return "still serving"

    async with keyq.Daemon(config, registry=registry) as daemon:
        bad = await self_cancel.trigger({})
        async with deadline():
            result = await daemon.result(bad.id)
            good = await after.trigger({})
            assert (await daemon.result(good.id)).output == "still serving"

    assert result.error is not None
    assert result.error.type == "CancelledError"


async def test_attempt__a_crash_on_keyqs_side_fails_the_run_once_and_frees_its_slot(
    config: Config, registry: Registry
) -> None:
    """If keyq's side of an attempt raises (a bug: here the runner itself), the host
    reports the attempt as failed without retry, with the error; the engine then fails
    the run at once, its slot given back."""

    @registry.task(id="victim", retry=keyq.Retry(max_attempts=3))
    async def victim(payload: Any, ctx: keyq.Context) -> None:
        return None

    async def broken_runner(task: Any, payload: str, ctx: Any, max_result_bytes: int) -> Any:
        raise RuntimeError("bug in the runner")

    posted: list[Any] = []
    ended = anyio.Event()

    def post(event: Any) -> None:
        posted.append(event)
        ended.set()

    async def no_submit(requests: Any, parent_id: Any) -> Any:
        raise AssertionError("not called")

    store = SqliteStore(config, registry)
    attempts = Attempts(
        registry,
        store,
        structlog.get_logger(),
        post=post,
        now=lambda: 1.0,
        submit=no_submit,
        checkpoint_after_s=5.0,
        max_result_bytes=1024,
        run=broken_runner,
    )
    engine = Engine(rng=random.Random(0))
    engine.submit(RunSpec("run_victim", 1, "victim", "victim", None, 5, "{}", 3))
    (start,) = engine.tick(1.0).start
    attempts.launch(start)
    async with deadline():
        await ended.wait()
    (event,) = posted
    engine.finished(event.run_id, event.outcome, 2.0, event.claim)
    (failed,) = engine.tick(2.0).transitions

    assert isinstance(event, AttemptEnded)
    assert event.outcome == Failed(event.outcome.error, retryable=False)
    assert (event.outcome.error.type, event.outcome.error.message) == (
        "RuntimeError",
        "bug in the runner",
    )
    assert (failed.to, failed.reason, failed.attempt) == (RunState.FAILED, "failed", 1)
    assert engine.limits.running == 0
    assert not attempts.executing()


async def test_task__result_too_large_or_unstorable_fails_without_retry(
    config: Config, registry: Registry
) -> None:
    """Results over max_payload_bytes, or with text SQLite cannot store, fail the run cleanly."""
    from dataclasses import replace

    config = replace(config, max_payload_bytes=1000)

    @registry.task(id="huge")
    async def huge(payload: Any, ctx: keyq.Context) -> str:
        return "x" * 5000

    @registry.task(id="surrogate")
    async def surrogate(payload: Any, ctx: keyq.Context) -> str:
        return "file-\udcff.txt"  # what os.listdir gives for a non-UTF-8 file name

    @registry.task(id="surrogate-error", retry=keyq.Retry(max_attempts=1))
    async def surrogate_error(payload: Any, ctx: keyq.Context) -> None:
        raise OSError("cannot open file-\udcff.txt")

    async with keyq.Daemon(config, registry=registry) as daemon:
        handles = [await t.trigger({}) for t in (huge, surrogate, surrogate_error)]
        async with deadline():
            results = [await daemon.result(h.id) for h in handles]

    assert [r.error and r.error.type for r in results] == [
        "ResultTooLarge",
        "ResultNotJSON",
        "OSError",
    ]
    assert [r.status for r in results] == [RunState.FAILED] * 3
    assert results[2].error is not None
    assert "file-\\udcff.txt" in results[2].error.message


async def test_children__one_idempotency_key_twice_in_a_batch(
    config: Config, registry: Registry
) -> None:
    """Two batch items sharing an idempotency key are one run, reported for both items."""

    @registry.task(id="child-once")
    async def child_once(payload: Any, ctx: keyq.Context) -> str:
        return ctx.run_id

    @registry.task(id="parent-twice")
    async def parent_twice(payload: Any, ctx: keyq.Context) -> list[Any]:
        results = await child_once.batch_trigger_and_wait(
            [{"payload": 1, "idempotency_key": "same"}, {"payload": 2, "idempotency_key": "same"}]
        )
        return [r.output for r in results]

    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await parent_twice.trigger({})
        async with deadline():
            outputs = (await daemon.result(handle.id)).output

    assert len(outputs) == 2
    assert outputs[0] == outputs[1]


async def test_children__waiting_on_a_run_another_process_just_inserted(
    config: Config, registry: Registry
) -> None:
    """trigger_and_wait matching an unread run (by idempotency key) still resumes."""

    @registry.task(id="report")
    async def report(payload: Any, ctx: keyq.Context) -> str:
        return "report-done"

    @registry.task(id="needs-report")
    async def needs_report(payload: Any, ctx: keyq.Context) -> Any:
        result = await report.trigger_and_wait({}, idempotency_key="weekly")
        return result.unwrap()

    async with keyq.Daemon(config, registry=registry) as daemon:
        # Another process stores the report run, and its poke never arrives.
        silent = Producer(config, now=daemon.clock.now, poke=lambda: None)
        (existing,) = insert(silent, [(report, {}, {"idempotency_key": "weekly"})])
        silent.close()
        handle = await needs_report.trigger({})
        async with deadline():
            assert (await daemon.result(handle.id)).output == "report-done"
            assert (await daemon.result(existing.id)).ok


async def test_max_duration__a_sync_task_past_its_budget_fails_as_timeout(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A thread cannot be interrupted; when it returns past its budget, the run timed out."""
    started, release = threading.Event(), threading.Event()

    @registry.task(id="slow-sync", max_duration=10, retry=keyq.Retry(max_attempts=1))
    def slow_sync(payload: Any, ctx: keyq.Context) -> str:
        started.set()
        release.wait(timeout=10)
        return "too late"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await slow_sync.trigger({})
        async with deadline():
            await anyio.to_thread.run_sync(started.wait, 10)
        clock.advance(11)
        await daemon.until_idle(attempts=False)  # the timeout has fired
        release.set()
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.status is RunState.FAILED
    assert result.error is not None
    assert result.error.type == "Timeout"


async def test_limits__operator_limit_beats_a_stale_trigger_override_after_restart(
    config: Config, registry: Registry, overlap: Overlap
) -> None:
    """`keyq queues set-limit` after triggers that carried a limit wins, across a restart."""

    @registry.task(id="gen")
    async def gen(payload: Any, ctx: keyq.Context) -> None:
        with overlap.running():
            await anyio.sleep(0.01)

    paid = {"name": "paid", "concurrency_limit": 10}
    with keyq.Client(config, registry=registry) as client:
        handles = client.batch_trigger(
            gen, [{"payload": i, "concurrency_key": "u1", "queue": paid} for i in range(8)]
        )
        client.set_queue_limit("paid", 2)

    async with keyq.Daemon(config, registry=registry) as daemon, deadline():
        for h in handles:
            await daemon.result(h.id)

    assert overlap.peak["*"] == 2
