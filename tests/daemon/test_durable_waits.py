"""Durable waits in an in-process daemon: replay, steps, tokens, children, restarts.

Most tests run twice: with the suspended coroutine kept in memory
(``checkpoint_after`` of an hour) and with every wait checkpointed at once
(``checkpoint_after = 0``), so the run resumes by replay. A user must not be
able to tell the two apart, except that code outside steps runs again.
Restarts here are in-process (a second Daemon on the same file); the e2e tier
does them with real processes and signals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import anyio
import pytest
from support import Overlap, deadline

import keyq
from keyq.clock import FakeClock
from keyq.config import Config
from keyq.core.states import RunState
from keyq.registry import Registry

pytestmark = pytest.mark.anyio

MODES = {"in-memory": 3600.0, "replay": 0.0}


@pytest.fixture(params=list(MODES))
def mode_config(request: pytest.FixtureRequest, config: Config) -> Config:
    return replace(config, checkpoint_after_s=MODES[request.param])


def timeline(config: Config, run_id: str) -> list[tuple[str, str]]:
    with keyq.Client(config) as client:
        return [(e["to"], e["reason"]) for e in client.get_run(run_id)["events"]]


async def test_wait__step_runs_once_and_the_run_resumes_where_it_waited(
    mode_config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A step's function runs once; after the wait the run continues with its result,
    and its timeline shows one WAITING span."""
    calls: Counter[str] = Counter()

    def charge(amount: int) -> dict[str, int]:
        calls["charge"] += 1
        return {"charged": amount}

    @registry.task(id="order")
    async def order(payload: int, ctx: keyq.Context) -> list[Any]:
        receipt = await ctx.step("charge", charge, payload)
        await ctx.wait.for_(hours=1)
        shipped = await ctx.step("ship", lambda: "shipped")
        return [receipt, shipped]

    async with keyq.Daemon(mode_config, registry=registry, clock=clock) as daemon:
        handle = await order.trigger(42)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING
        clock.advance(3600)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == [{"charged": 42}, "shipped"]
    assert calls == {"charge": 1}
    assert timeline(mode_config, handle.id) == [
        ("queued", "triggered"),
        ("running", "started"),
        ("waiting", "wait"),
        ("queued", "wait_done"),
        ("running", "resumed"),
        ("completed", "completed"),
    ]


async def test_wait__survives_a_daemon_restart(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A run WAITING when its daemon stops is still WAITING after the next start (not
    re-run, no new attempt) and resumes when its time comes, its steps not run again."""
    calls: Counter[str] = Counter()

    def once() -> int:
        calls["step"] += 1
        return 7

    @registry.task(id="patient")
    async def patient(payload: Any, ctx: keyq.Context) -> int:
        value: int = await ctx.step("once", once)
        await ctx.wait.for_(minutes=10)
        return value * 6

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await patient.trigger()
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING
        clock.advance(600)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == 42
    assert calls == {"step": 1}
    assert [to for to, _ in timeline(config, handle.id)].count("waiting") == 1
    with keyq.Client(config) as client:
        assert client.get_run(handle.id)["attempt"] == 1


async def test_waits__a_thousand_waiting_runs_hold_no_slot_and_all_resume(
    config: Config, registry: Registry, clock: FakeClock, overlap: Overlap
) -> None:
    """1,000 runs waiting at once on a limit-2 queue: other runs of the queue start
    meanwhile, and when the wait ends all 1,000 resume, never more than 2 at once."""
    q = registry.queue("pair", concurrency_limit=2)

    @registry.task(id="sleeper", queue=q)
    async def sleeper(payload: int, ctx: keyq.Context) -> int:
        await ctx.wait.for_(seconds=30)
        with overlap.running("pair"):
            await anyio.sleep(0.001)  # long enough for resumed runs to overlap if they could
        return payload

    @registry.task(id="other", queue=q)
    async def other(payload: Any, ctx: keyq.Context) -> str:
        return "ran"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handles = await sleeper.batch_trigger([{"payload": i} for i in range(1000)])
        async with deadline(60):
            while daemon.statistics().waiting < 1000:
                await daemon.until_idle()
        assert daemon.statistics().running == 0
        others = await other.batch_trigger([{"payload": i} for i in range(3)])
        async with deadline():
            assert all([(await daemon.result(h.id)).ok for h in others])
        clock.advance(30)
        async with deadline(60):
            results = [await daemon.result(h.id) for h in handles]

    assert [r.output for r in results] == list(range(1000))
    assert overlap.peak["pair"] == 2  # the limit, reached and never passed


async def test_replay__changed_code_at_a_recorded_position_fails_the_run(
    mode_config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A deploy that changes the call at a recorded position fails the run, without
    retry, with an error that names the position and both calls."""
    version = ["v1"]

    @registry.task(id="evolving", retry=keyq.Retry(max_attempts=3))
    async def evolving(payload: Any, ctx: keyq.Context) -> str:
        if version[0] == "v1":
            await ctx.step("fetch", lambda: 1)
        else:
            await ctx.wait.for_(seconds=1)
        await ctx.wait.for_(minutes=5)
        return "done"

    async with keyq.Daemon(mode_config, registry=registry, clock=clock) as daemon:
        handle = await evolving.trigger()
        await daemon.until_idle()
        version[0] = "v2"
        clock.advance(300)
        async with deadline():
            result = await daemon.result(handle.id)

    if mode_config.checkpoint_after_s:  # the coroutine kept its place: nothing replayed
        assert result.ok
        return
    assert result.status is RunState.FAILED
    assert result.error is not None
    assert result.error.type == "ReplayMismatchError"
    assert "at position 0 the run made ctx.step('fetch')" in result.error.message
    assert "now makes ctx.wait.for_/until" in result.error.message
    assert timeline(mode_config, handle.id)[-1] == ("failed", "failed")


async def test_replay__code_that_returns_before_its_recorded_waits_fails(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Replaying code that no longer reaches its recorded waits is a mismatch too."""
    config = replace(config, checkpoint_after_s=0)
    skip = [False]

    @registry.task(id="shrinking")
    async def shrinking(payload: Any, ctx: keyq.Context) -> str:
        if not skip[0]:
            await ctx.wait.for_(seconds=10)
        return "done"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await shrinking.trigger()
        await daemon.until_idle()
        skip[0] = True
        clock.advance(10)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.error is not None
    assert result.error.type == "ReplayMismatchError"


async def test_step__failure_records_nothing_and_the_retry_runs_it_again(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A step that raises is not recorded: the retry replays earlier steps and runs
    the failed one again; a value that is not JSON fails the attempt with a clear error."""
    calls: Counter[str] = Counter()

    async def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("network down")
        return "ok"

    def first() -> int:
        calls["first"] += 1
        return 1

    @registry.task(id="stepper", retry=keyq.Retry(max_attempts=2, min_delay=1, jitter=0))
    async def stepper(payload: Any, ctx: keyq.Context) -> list[Any]:
        return [await ctx.step("first", first), await ctx.step("flaky", flaky)]

    @registry.task(id="bad-step", retry=keyq.Retry(max_attempts=1))
    async def bad_step(payload: Any, ctx: keyq.Context) -> Any:
        return await ctx.step("set", lambda: {1, 2})

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await stepper.trigger()
        bad = await bad_step.trigger()
        await daemon.until_idle()
        clock.advance(1)
        async with deadline():
            result = await daemon.result(handle.id)
            bad_result = await daemon.result(bad.id)

    assert result.output == [1, "ok"]
    assert calls == {"first": 1, "flaky": 2}
    assert bad_result.error is not None
    assert "step 'set' returned a value that is not JSON" in bad_result.error.message


async def test_token__completed_from_a_client_resumes_the_run_with_its_output(
    mode_config: Config, registry: Registry, clock: FakeClock
) -> None:
    """create_token + for_token: the run waits holding no slot until a client completes
    the token, then gets ok and the output; the token lists as completed."""
    created: list[keyq.WaitToken] = []

    @registry.task(id="approval")
    async def approval(payload: Any, ctx: keyq.Context) -> Any:
        # No timeout: the client completing it below reads the wall clock, not the FakeClock.
        token = await ctx.wait.create_token()
        await ctx.step("send", created.append, None)  # stands for emailing the link
        created.append(token)
        result = await ctx.wait.for_token(token)
        return {"ok": result.ok, "output": result.output}

    async with keyq.Daemon(mode_config, registry=registry, clock=clock) as daemon:
        handle = await approval.trigger()
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING
        token = created[-1]
        clock.advance(60)
        with keyq.Client(mode_config) as client:
            (listed,) = client.list_tokens(status="waiting")
            assert listed["id"] == token.id
            assert listed["run_id"] == handle.id
            client.complete_token(token.id, {"approved": True})
            with pytest.raises(keyq.TokenStateError, match="already completed"):
                client.complete_token(token.id, {"approved": False})
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == {"ok": True, "output": {"approved": True}}
    assert {str(t) for t in created if t is not None} == {token.id}  # replay: the same token
    assert timeline(mode_config, handle.id)[3] == ("queued", "token_completed")


async def test_token__timeout_resumes_with_a_result_the_task_can_test(
    mode_config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A token not completed in time resumes its run with ok False and timed_out True;
    completing it afterwards is refused."""

    @registry.task(id="expiring")
    async def expiring(payload: Any, ctx: keyq.Context) -> Any:
        token = await ctx.wait.create_token(timeout=30)
        result = await ctx.wait.for_token(token)
        assert result.error is not None
        with pytest.raises(keyq.TokenTimeoutError):
            result.unwrap()
        return [token.id, result.ok, result.timed_out, result.error.type]

    async with keyq.Daemon(mode_config, registry=registry, clock=clock) as daemon:
        handle = await expiring.trigger()
        await daemon.until_idle()
        clock.advance(30)
        async with deadline():
            result = await daemon.result(handle.id)

    token_id, ok, timed_out, error_type = result.output
    assert (ok, timed_out, error_type) == (False, True, "TokenTimeout")
    with keyq.Client(mode_config) as client:
        assert client.get_token(token_id)["status"] == "timed_out"
        with pytest.raises(keyq.TokenStateError, match="timed out"):
            client.complete_token(token_id, 1)


async def test_token__completed_while_the_daemon_is_stopped(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A client token created outside any run, completed while no daemon runs: the
    waiting run resumes when the daemon starts."""
    with keyq.Client(config) as client:
        token = client.create_token(idempotency_key="invoice-7")
        assert client.create_token(idempotency_key="invoice-7") == token

    @registry.task(id="gate")
    async def gate(payload: str, ctx: keyq.Context) -> Any:
        return (await ctx.wait.for_token(payload)).unwrap()

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await gate.trigger(token.id)
        await daemon.until_idle()
        assert daemon.state_of(handle.id) is RunState.WAITING

    with keyq.Client(config) as client:
        client.complete_token(token, "paid")

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon, deadline():
        result = await daemon.result(handle.id)
    assert result.output == "paid"


async def test_token__waiting_for_an_unknown_token_raises_in_the_task(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    @registry.task(id="lost", retry=keyq.Retry(max_attempts=1))
    async def lost(payload: Any, ctx: keyq.Context) -> Any:
        return await ctx.wait.for_token("tok_nope")

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await lost.trigger()
        async with deadline():
            result = await daemon.result(handle.id)
    assert result.error is not None
    assert result.error.type == "TokenNotFoundError"


async def test_children__results_and_records_across_a_restart(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """A parent waiting on children across a restart gets each child's result (a failed
    child as ok False, not an exception); the records link parent and children."""
    q = registry.queue("serial", concurrency_limit=1)

    @registry.task(id="kid", queue=q, retry=keyq.Retry(max_attempts=1))
    async def kid(payload: int, ctx: keyq.Context) -> int:
        await ctx.wait.for_(seconds=10)
        if payload < 0:
            raise ValueError("negative")
        return payload * 10

    @registry.task(id="mom", queue=q)
    async def mom(payload: Any, ctx: keyq.Context) -> list[Any]:
        results = await kid.batch_trigger_and_wait([{"payload": 1}, {"payload": -1}])
        return [r.output if r.ok else r.error and r.error.type for r in results]

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await mom.trigger()
        async with deadline():
            while daemon.statistics().waiting < 3:
                await daemon.until_idle()

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        clock.advance(10)
        async with deadline():
            result = await daemon.result(handle.id)

    assert result.output == [10, "ValueError"]
    with keyq.Client(config) as client:
        record = client.get_run(handle.id)
        children = record["children"]
        assert [c["status"] for c in children] == ["completed", "failed"]
        assert {client.get_run(c["id"])["parent_id"] for c in children} == {handle.id}
    assert timeline(config, handle.id).count(("waiting", "wait")) == 1


async def test_children__cancelling_a_parent_cancels_its_waiting_children(
    mode_config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Cancel a parent waiting on a child that itself waits: both end CANCELED."""

    @registry.task(id="slow-child")
    async def slow_child(payload: Any, ctx: keyq.Context) -> str:
        await ctx.wait.for_(hours=1)
        return "late"

    @registry.task(id="parent")
    async def parent(payload: Any, ctx: keyq.Context) -> Any:
        return (await slow_child.trigger_and_wait()).output

    async with keyq.Daemon(mode_config, registry=registry, clock=clock) as daemon:
        handle = await parent.trigger()
        async with deadline():
            while daemon.statistics().waiting < 2:
                await daemon.until_idle()
        await daemon.cancel(handle.id)
        async with deadline():
            result = await daemon.result(handle.id)
        with keyq.Client(mode_config) as client:
            (child,) = client.get_run(handle.id)["children"]
        child_result = await daemon.result(child["id"])

    assert result.status is RunState.CANCELED
    assert child_result.status is RunState.CANCELED


async def test_wait__in_memory_waits_do_not_run_code_again(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """Below checkpoint_after the coroutine is kept: code before the wait runs once;
    past it, the run replays (code outside steps runs again, ctx.is_replaying tells)."""
    seen: list[tuple[str, bool]] = []

    @registry.task(id="twice")
    async def twice(payload: float, ctx: keyq.Context) -> str:
        seen.append(("before", ctx.is_replaying))
        await ctx.wait.for_(payload)
        seen.append(("after", ctx.is_replaying))
        return "ok"

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        short = await twice.trigger(2.0)
        await daemon.until_idle()
        clock.advance(2)
        async with deadline():
            await daemon.result(short.id)
        assert seen == [("before", False), ("after", False)]
        seen.clear()
        long = await twice.trigger(60.0)
        await daemon.until_idle()
        clock.advance(60)
        async with deadline():
            await daemon.result(long.id)

    assert seen == [("before", False), ("before", True), ("after", False)]


async def test_token__completed_before_the_run_waits_on_it(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """for_token on a token already completed returns its output at once."""
    with keyq.Client(config) as client:
        token = client.create_token()
        client.complete_token(token, {"early": True})

    @registry.task(id="late-waiter")
    async def late_waiter(payload: str, ctx: keyq.Context) -> Any:
        return (await ctx.wait.for_token(payload)).unwrap()

    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        handle = await late_waiter.trigger(token.id)
        async with deadline():
            result = await daemon.result(handle.id)
    assert result.output == {"early": True}
