"""Rate limits in an in-process daemon on a FakeClock: starts observed from real attempts,
windows that survive a restart, rates set live from the code, the config and the client."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
import pytest
from support import deadline

import keyq
from keyq.clock import FakeClock
from keyq.config import Config, QueueConfig
from keyq.errors import DefinitionError, InvalidArgumentError
from keyq.registry import Registry
from keyq.store.codec import iso

pytestmark = pytest.mark.anyio


def sms_task(registry: Registry, starts: list[tuple[float, str | None]], clock: FakeClock,
             **queue: Any) -> keyq.Task:  # fmt: skip
    """A task on queue "sms" that notes when each attempt began, and for which key."""

    @registry.task(id="send-sms", queue=registry.queue("sms", **queue))
    async def send(payload: Any, ctx: keyq.Context) -> None:
        starts.append((clock.now(), ctx.concurrency_key))

    return send


async def test_rate__at_most_n_starts_per_window_per_key(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """2 per minute per user: each user gets 2 now and 2 a minute later, side by side."""
    starts: list[tuple[float, str | None]] = []
    send = sms_task(registry, starts, clock, concurrency_limit=50, rate_limit="2/1m")
    t0 = clock.now()
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        items = [{"payload": i, "concurrency_key": f"u{i % 2}"} for i in range(8)]
        handles = await send.batch_trigger(items)
        await daemon.until_idle()
        assert sorted(starts) == [(t0, "u0"), (t0, "u0"), (t0, "u1"), (t0, "u1")]
        clock.advance(59.9)
        await daemon.until_idle()
        assert len(starts) == 4  # free slots, but the window is not over
        clock.advance(0.1)
        await daemon.until_idle()
        assert len(starts) == 8
        async with deadline():
            assert all([(await daemon.result(h.id)).ok for h in handles])
    assert [at - t0 for at, _ in starts[4:]] == [60.0] * 4


async def test_rate__a_restart_grants_no_fresh_burst(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """The window is rebuilt from the recorded starts: a daemon restarted 10 s after its
    starts waits out the rest of the minute."""
    starts: list[tuple[float, str | None]] = []
    send = sms_task(registry, starts, clock, rate_limit="3/1m")
    t0 = clock.now()
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await send.batch_trigger([{"payload": i} for i in range(6)])
        await daemon.until_idle()
    assert len(starts) == 3
    clock.advance(10)
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await daemon.until_idle()
        assert len(starts) == 3
        clock.advance(50)
        await daemon.until_idle()
        assert [at - t0 for at, _ in starts[3:]] == [60.0] * 3


async def test_rate__total_rate_over_every_key(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    starts: list[tuple[float, str | None]] = []
    send = sms_task(registry, starts, clock, rate_limit_total="5/10s")
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await send.batch_trigger([{"payload": i, "concurrency_key": f"u{i}"} for i in range(8)])
        await daemon.until_idle()
        assert len(starts) == 5
        clock.advance(10)
        await daemon.until_idle()
        assert len(starts) == 8


async def test_rate__config_lifts_and_the_client_sets_rates_live(
    config: Config, registry: Registry, clock: FakeClock
) -> None:
    """`rate_limit = "none"` in config lifts the code's rate; set_queue_rate brings one back
    while the daemon runs, and a key's own rate wins over the queue's."""
    starts: list[tuple[float, str | None]] = []
    send = sms_task(registry, starts, clock, rate_limit="1/1h")
    config = replace(config, queues={"sms": QueueConfig(rate_limit="none")})
    async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
        await send.batch_trigger([{"payload": i} for i in range(3)])
        await daemon.until_idle()
        assert len(starts) == 3  # no rate

        def operate() -> dict[str, Any]:  # an operator's process: blocking calls
            with keyq.Client(config, registry=registry, clock=clock) as client:
                client.set_queue_rate("sms", "1/1m")
                client.set_key_rate("sms", "vip", "none")
                return next(q for q in client.queues() if q["queue"] == "sms")

        queue = await anyio.to_thread.run_sync(operate)  # returns once the daemon applied it
        assert queue["rate_limit"] == "1/1m"
        items = [{"payload": i, "concurrency_key": k} for i, k in enumerate(["a", "a", "vip"] * 2)]
        await send.batch_trigger(items)
        await daemon.until_idle()
        assert sorted(k for _, k in starts[3:]) == ["a", "vip", "vip"]
        with keyq.Client(config, registry=registry, clock=clock) as client:
            keys = {k["concurrency_key"]: k for k in client.keys("sms")}
        assert (keys["a"]["rate_limit"], keys["a"]["rate_starts"]) == ("1/1m", 1)
        assert keys["a"]["next_start_at"] == iso(clock.now() + 60)  # "a" waits
        assert (keys["a"]["queued"], list(keys)) == (3, ["a"])  # vip's runs are all done


async def test_rate__bad_rates_are_refused_naming_the_field(
    config: Config, registry: Registry
) -> None:
    with pytest.raises(DefinitionError, match="queue 'sms': rate_limit: expected a rate"):
        registry.queue("sms", rate_limit="fast")
    with (
        keyq.Client(config, registry=registry) as client,
        pytest.raises(InvalidArgumentError, match="total: the count must be 1 to"),
    ):
        client.set_queue_rate("sms", "1/1m", total="0/1m")
