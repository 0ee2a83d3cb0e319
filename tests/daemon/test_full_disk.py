"""A full disk under a running daemon: refused triggers are never run later, nothing is lost.

The database lives on a small tmpfs the test mounts (the `small_disk` fixture: root is
needed; elsewhere the test is skipped, and says so in the summary). The disk is really full:
SQLite's own writes fail with "database or disk is full".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from support import deadline, fill

import keyq
from keyq.config import Config
from keyq.errors import StoreError
from keyq.registry import Registry

pytestmark = pytest.mark.anyio


async def test_full_disk__refused_triggers_never_run_and_the_daemon_recovers(
    small_disk: Path, registry: Registry, config: Config
) -> None:
    """Triggers answered "database or disk is full" are not stored by anyone, then or when
    space comes back, however often a producer retries one; a run that finished while the
    disk was full is recorded once space returns; the daemon serves on."""
    config = config.with_database(small_disk / "keyq.db")
    executed: list[Any] = []
    release = anyio.Event()

    @registry.task(id="count")
    async def count(payload: Any, ctx: keyq.Context) -> None:
        executed.append(payload)

    @registry.task(id="slow")
    async def slow(payload: Any, ctx: keyq.Context) -> str:
        await release.wait()
        return "finished"

    def trigger(payload: Any) -> str:
        with keyq.Client(config, registry=registry) as client:
            return client.trigger("count", payload).id

    async def refused(payload: Any) -> str:
        with pytest.raises(StoreError) as error:
            await anyio.to_thread.run_sync(trigger, payload)
        return str(error.value)

    async with keyq.Daemon(config, registry=registry) as daemon:
        running = await slow.trigger({})
        await daemon.until_idle(attempts=False)
        filler = fill(small_disk)

        errors = [await refused({"n": n}) for n in range(23)]
        errors += [await refused({"same": True}) for _ in range(20)]  # a producer retrying
        release.set()  # its completion cannot be written: retried while the disk is full
        errors += [await refused({"while": "retrying"}) for _ in range(3)]
        filler.unlink()

        async with deadline(20):
            assert (await daemon.result(running.id)).output == "finished"
            after = await anyio.to_thread.run_sync(trigger, {"after": True})
            await daemon.result(after)
        await daemon.until_idle()
        with keyq.Client(config, registry=registry) as client:
            stored = await anyio.to_thread.run_sync(client.list_runs)
            timeline = await anyio.to_thread.run_sync(client.get_run, running.id)

    assert all("database or disk is full" in e for e in errors), errors
    assert executed == [{"after": True}]
    assert sorted(r["task"] for r in stored) == ["count", "slow"]
    assert [e["to"] for e in timeline["events"]].count("completed") == 1
