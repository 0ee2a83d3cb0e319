"""Input that once crashed or wedged the daemon: refused at the door, or isolated at the commit.

Each test names the failure it guards against (issue "No input crashes or wedges the
daemon"); each one failed on the code before the fix.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import ask, deadline

import keyq
from keyq.clock import host_monotonic
from keyq.config import Config
from keyq.errors import StoreError, TriggerError
from keyq.ids import new_run_id
from keyq.registry import Registry, Task
from keyq.store import db

pytestmark = pytest.mark.anyio


@pytest.fixture
def ping(registry: Registry) -> Task:
    @registry.task(id="ping", queue=registry.queue("pings"))
    async def ping(payload: Any, ctx: keyq.Context) -> str:
        return "pong"

    return registry.get("ping")


def trigger_line(**run: Any) -> bytes:
    """A hand-off request for one run of "ping", with ``run``'s fields changed."""
    item = {"id": new_run_id(1.0), "task": "ping", "at": 1.0, "parent_id": None}
    item |= {"options": {}, "payload": {}} | run
    request = {"op": "trigger", "deadline": host_monotonic() + 1, "retry": False, "runs": [item]}
    return json.dumps(request).encode() + b"\n"


async def still_dispatching(daemon: keyq.Daemon, ping: Task) -> None:
    handle = await ping.trigger({})
    async with deadline():
        assert (await daemon.result(handle.id)).output == "pong"


def stored_runs(config: Config) -> list[dict[str, Any]]:
    with keyq.Client(config) as client:
        return client.list_runs()


# --- refused at the door ------------------------------------------------------------------------

CLIENT_REFUSALS = [
    ({"max_attempts": 10**20}, "max_attempts must be from 1 to 1000"),
    ({"queue": {"name": "big", "concurrency_limit": 10**30}}, "queue.concurrency_limit"),
    ({"concurrency_key": "a\ud800"}, "concurrency_key must be valid UTF-8"),
    ({"tags": ["ok", "\udfff"]}, "tags[1] must be valid UTF-8"),
    ({"idempotency_key": "k\ud800"}, "idempotency_key must be valid UTF-8"),
    ({"concurrency_key": "\x1b[2J"}, "without control characters"),
    ({"delay": 1e308}, "delay must be a duration from 0 to 100 years"),
    ({"delay": "3000000d"}, "delay must be a duration from 0 to 100 years"),
    ({"priority": 10**30}, "priority must be from 1 to 10"),
]


@pytest.mark.parametrize(("options", "message"), CLIENT_REFUSALS)
async def test_hardening__client_refuses_out_of_bounds_values_naming_the_field(
    config: Config, registry: Registry, ping: Task, options: dict[str, Any], message: str
) -> None:
    """Failures 1, 2 and 6: an integer over 64 bits, a lone surrogate or a far-future delay
    through Client is a TriggerError naming the field, not a raw OverflowError or
    UnicodeEncodeError; nothing is stored and the daemon goes on."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        with keyq.Client(config, registry=registry) as client, pytest.raises(TriggerError) as no:
            await anyio.to_thread.run_sync(lambda: client.trigger("ping", {}, **options))
        await still_dispatching(daemon, ping)
        stored = await anyio.to_thread.run_sync(stored_runs, config)

    assert message in str(no.value)
    assert [r["payload"] for r in stored] == [{}]  # the one that ran after


SOCKET_REFUSALS = [
    ({"options": {"max_attempts": 10**20}}, "max_attempts must be from 1 to 1000"),
    ({"options": {"concurrency_key": "a\ud800"}}, "concurrency_key must be valid"),
    ({"options": {"tags": ["\ud800"]}}, "tags[0] must be valid UTF-8"),
    ({"id": "run_\ud800"}, "run id must be a run id"),
    ({"id": ""}, "run id must be a run id"),
    ({"parent_id": new_run_id(2.0)}, "parent_id: no run"),
    ({"at": -1e308}, "created_at must be a time from 1970"),
    ({"at": math.nan}, "created_at must be a time"),
    ({"at": math.inf}, "created_at must be a time"),
    ({"options": {"delay": 3e9 * 1000}}, "delay must be a duration"),
]


@pytest.mark.parametrize(("run", "message"), SOCKET_REFUSALS)
async def test_hardening__socket_refuses_a_poison_line_and_keeps_dispatching(
    config: Config, registry: Registry, ping: Task, run: dict[str, Any], message: str
) -> None:
    """Failures 1-3: a trigger line that used to kill the daemon at its commit (an int over
    64 bits, a lone surrogate) or wedge it for good (``"at": NaN``) is refused naming the
    field; nothing is stored and the next trigger runs."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        answer = await anyio.to_thread.run_sync(ask, daemon.socket_path, trigger_line(**run))
        await still_dispatching(daemon, ping)
        stored = await anyio.to_thread.run_sync(stored_runs, config)

    assert answer is not None
    assert answer["ok"] is False
    assert message in answer["error"]
    assert len(stored) == 1


async def test_hardening__an_infinite_deadline_cannot_make_the_daemon_skip_its_lookup(
    config: Config, registry: Registry, ping: Task
) -> None:
    """A deadline far in the future would let a resent request be adopted as new: the
    daemon refuses it instead of running a stored run a second time."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        line = json.loads(trigger_line())
        line["deadline"] = host_monotonic() + 3600
        answer = await anyio.to_thread.run_sync(
            ask, daemon.socket_path, json.dumps(line).encode() + b"\n"
        )
        await still_dispatching(daemon, ping)

    assert answer is not None
    assert answer["ok"] is False
    assert "deadline must be a finite number" in answer["error"]


async def test_hardening__a_far_future_wait_fails_the_attempt_naming_the_bound(
    config: Config, registry: Registry
) -> None:
    """Failure 6: ``wait.for_(seconds=1e308)`` fails its attempt with a WaitError that says
    what is allowed, not an OverflowError; the run's JSON stays readable."""

    @registry.task(id="sleeper", retry=keyq.Retry(max_attempts=1))
    async def sleeper(payload: Any, ctx: keyq.Context) -> None:
        await ctx.wait.for_(seconds=payload["s"])

    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await sleeper.trigger({"s": 1e308})
        async with deadline():
            result = await daemon.result(handle.id)
        with keyq.Client(config, registry=registry) as client:
            shown = await anyio.to_thread.run_sync(client.get_run, handle.id)

    assert result.error is not None
    assert (result.error.type, shown["status"]) == ("WaitError", "failed")
    assert "wait.for_ seconds must be a finite number from" in result.error.message


async def test_hardening__a_time_out_of_range_in_an_old_row_does_not_break_listing(
    config: Config, registry: Registry, ping: Task
) -> None:
    """Failure 6: a row written before times were bounded (available_at in the year 33658)
    is listed and shown, at the end of the range, instead of failing every listing."""
    with keyq.Client(config, registry=registry) as client:
        handle = await anyio.to_thread.run_sync(lambda: client.trigger("ping", {}, delay="1h"))
    with sqlite3.connect(config.database) as conn:
        conn.execute("UPDATE runs SET available_at = 1e12 WHERE id = ?", (handle.id,))
    conn.close()
    with keyq.Client(config, registry=registry) as client:
        listed = client.list_runs()
        shown = client.get_run(handle.id)

    assert [r["available_at"] for r in listed] == ["9999-12-31T23:59:59.999Z"]
    assert shown["available_at"] == "9999-12-31T23:59:59.999Z"


# --- refused at the commit: poison pills ----------------------------------------------------------


@pytest.fixture
def poison(config: Config) -> Path:
    """The database with a real SQLite trigger that refuses to record the start of any run
    whose concurrency key is "poison": a permanent failure no bound at the door can catch,
    as a constraint or a bug would be."""
    conn = db.connect(config.database)
    conn.execute(
        "CREATE TRIGGER poison BEFORE UPDATE OF status ON runs "
        "WHEN NEW.status = 'running' AND NEW.concurrency_key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END"
    )
    conn.close()
    return config.database


async def test_hardening__a_run_the_database_refuses_fails_alone_and_the_rest_runs(
    config: Config, registry: Registry, poison: Path
) -> None:
    """No poison pill: a commit that fails for a reason retrying cannot fix fails only the
    runs that caused it (FAILED, reason unrecordable, never executed); every other run of the
    same step starts and completes, and the daemon goes on."""
    executed: list[str] = []

    @registry.task(id="work", queue=registry.queue("work", concurrency_limit=5))
    async def work(payload: Any, ctx: keyq.Context) -> str:
        executed.append(ctx.run_id)
        return "done"

    keys = ["poison" if i % 3 == 0 else f"k{i}" for i in range(9)]
    with keyq.Client(config, registry=registry) as client:  # stored while no daemon runs
        handles = client.batch_trigger("work", [{"concurrency_key": k} for k in keys])
    async with keyq.Daemon(config, registry=registry) as daemon:
        async with deadline():
            results = [await daemon.result(h.id) for h in handles]
            late = await work.trigger({}, concurrency_key="k-late")
            assert (await daemon.result(late.id)).output == "done"
        with keyq.Client(config, registry=registry) as client:
            shown = [client.get_run(h.id) for h in handles]

    poisoned = {h.id for h, k in zip(handles, keys, strict=True) if k == "poison"}
    assert {r.id for r in results if r.status.value == "failed"} == poisoned
    assert {r.id for r in results if r.ok} == {h.id for h in handles} - poisoned
    assert set(executed) == ({h.id for h in handles} - poisoned) | {late.id}
    for run in shown:
        if run["id"] in poisoned:
            assert run["events"][-1]["reason"] == "unrecordable"
            assert "poisoned by the test" in run["error"]["message"]


async def test_hardening__a_hand_in_the_database_refuses_is_answered_and_never_stored(
    config: Config, registry: Registry, ping: Task, poison: Path
) -> None:
    """Refused means never run: runs handed in whose commit fails are dropped from the
    daemon's memory before it answers; the caller's own attempt is refused too, nothing
    of them is stored or run, and later triggers run."""
    conn = db.connect(config.database)
    conn.execute(
        "CREATE TRIGGER poison_in BEFORE INSERT ON runs WHEN NEW.concurrency_key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned insert'); END"
    )
    conn.close()
    async with keyq.Daemon(config, registry=registry) as daemon:
        with keyq.Client(config, registry=registry) as client, pytest.raises(StoreError) as refused:
            await anyio.to_thread.run_sync(
                lambda: client.trigger("ping", {}, concurrency_key="poison")
            )
        await still_dispatching(daemon, ping)
        await daemon.until_idle()
        stats = daemon.statistics()
        stored = await anyio.to_thread.run_sync(stored_runs, config)

    assert "poisoned insert" in str(refused.value)
    assert [r["concurrency_key"] for r in stored] == [None]
    assert (stats.queued, stats.running) == (0, 0)
