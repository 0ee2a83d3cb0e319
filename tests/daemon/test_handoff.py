"""Triggers handed to the running daemon: stored with their start, once, whatever is resent."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import RefusingStore, deadline

import keyq
from keyq import handoff
from keyq.clock import host_monotonic
from keyq.config import Config
from keyq.ids import new_run_id
from keyq.registry import Registry
from keyq.store.protocol import RunsHandedIn

pytestmark = pytest.mark.anyio


def send(path: Path | None, line: bytes) -> dict[str, Any]:
    """One request on a fresh connection, as a client would send it; the answer."""
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(4096)
    answer: dict[str, Any] = json.loads(data)
    return answer


class Gate:
    """Lets a task's attempts through one at a time, and counts how many started."""

    def __init__(self) -> None:
        self.started = 0
        self.open = anyio.Event()


async def test_handoff__a_trigger_returns_with_its_run_stored_and_started(
    config: Config, registry: Registry
) -> None:
    """With the daemon up and a slot free, the run is RUNNING on disk when trigger returns:
    the daemon answers only after the commit that stored it together with its start."""
    gate = Gate()

    @registry.task(id="held")
    async def held(payload: Any, ctx: keyq.Context) -> str:
        gate.started += 1
        await gate.open.wait()
        return "done"

    async with keyq.Daemon(config, registry=registry) as daemon:
        with keyq.Client(config, registry=registry) as client:
            handle = await anyio.to_thread.run_sync(client.trigger, "held", {"n": 1})
            stored = await anyio.to_thread.run_sync(client.get_run, handle.id)
            gate.open.set()
            async with deadline():
                result = await daemon.result(handle.id)

    assert stored["status"] == "running"
    assert [e["reason"] for e in stored["events"]] == ["triggered", "started"]
    assert result.output == "done"
    assert gate.started == 1


@pytest.fixture
def gate(registry: Registry) -> Gate:
    """A task "counted" that counts its attempts in the returned Gate."""
    gate = Gate()

    @registry.task(id="counted")
    async def counted(payload: Any, ctx: keyq.Context) -> None:
        gate.started += 1

    return gate


async def test_handoff__runs_sent_again_are_stored_and_run_once(
    config: Config, registry: Registry, gate: Gate
) -> None:
    """A client that heard no answer may send the same runs again: one row, one attempt."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        with keyq.Client(config, registry=registry) as client:
            runs = client._producer.build([(registry.get("counted"), {"n": 1}, {})])
            encoded = handoff.encode(runs)
            assert encoded is not None
            first = await anyio.to_thread.run_sync(
                send, daemon.socket_path, handoff.request(encoded, False)
            )
            async with deadline():
                await daemon.result(runs[0].id)
            again = await anyio.to_thread.run_sync(
                send, daemon.socket_path, handoff.request(encoded, True)
            )
            await daemon.until_idle()
            listed = await anyio.to_thread.run_sync(lambda: client.list_runs(task="counted"))

    assert first == {"ok": True}
    assert again == {"ok": True}
    assert [r["id"] for r in listed] == [runs[0].id]
    assert gate.started == 1


async def test_handoff__runs_the_client_stored_itself_are_not_run_twice(
    config: Config, registry: Registry, gate: Gate
) -> None:
    """No answer in time, so the client stored the runs directly; the daemon, reading the
    late request afterwards, finds them stored and leaves them to the copy it ingested."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        with keyq.Client(config, registry=registry) as client:
            runs = client._producer.build([(registry.get("counted"), {"n": 1}, {})] * 3)
            encoded = handoff.encode(runs)
            assert encoded is not None
            await anyio.to_thread.run_sync(client._producer.store_and_poke, runs)
            for run in runs:
                async with deadline():
                    await daemon.result(run.id)
            late = await anyio.to_thread.run_sync(
                send, daemon.socket_path, handoff.request(encoded, True)
            )
            await daemon.until_idle()
            listed = await anyio.to_thread.run_sync(lambda: client.list_runs(task="counted"))

    assert late == {"ok": True}
    assert sorted(r["id"] for r in listed) == sorted(r.id for r in runs)
    assert {r["status"] for r in listed} == {"completed"}
    assert gate.started == 3


async def test_handoff__a_trigger_the_daemon_fails_to_adopt_is_stored_directly(
    config: Config, registry: Registry, gate: Gate
) -> None:
    """Inside the daemon, Task.trigger falls back to storing the run itself when adopting
    it fails (a bug, logged): the trigger returns, and the run is stored and runs once."""
    store = RefusingStore(config, registry, lambda event: isinstance(event, RunsHandedIn))
    async with keyq.Daemon(config, registry=registry, store=store) as daemon:
        handle = await registry.get("counted").trigger({"n": 1})
        async with deadline():
            result = await daemon.result(handle.id)
        listed = await anyio.to_thread.run_sync(_list_runs, config)

    assert result.ok
    assert [r["id"] for r in listed] == [handle.id]
    assert gate.started == 1


async def test_handoff__a_task_only_the_client_knows_is_stored_directly(
    config: Config, registry: Registry
) -> None:
    """The daemon refuses runs of a task it does not define; the client then stores them
    itself, as it does with no daemon: the trigger succeeds and the run is on disk."""

    @registry.task(id="known")
    async def known(payload: Any, ctx: keyq.Context) -> None:
        return None

    client_registry = Registry()

    @client_registry.task(id="newer")
    async def newer(payload: Any, ctx: keyq.Context) -> None:
        return None

    async with keyq.Daemon(config, registry=registry):
        with keyq.Client(config, registry=client_registry) as client:
            handle = await anyio.to_thread.run_sync(client.trigger, "newer", None)
            stored = await anyio.to_thread.run_sync(client.get_run, handle.id)

    assert stored["task"] == "newer"


async def test_handoff__bad_trigger_requests_are_refused_and_nothing_is_stored(
    config: Config, registry: Registry
) -> None:
    """Malformed or invalid runs get an error naming the problem; nothing of them is stored,
    and the daemon goes on serving."""

    @registry.task(id="ping")
    async def ping(payload: Any, ctx: keyq.Context) -> str:
        return "pong"

    def run(**changes: Any) -> dict[str, Any]:
        item = {"id": new_run_id(1.0), "task": "ping", "at": 1.0, "parent_id": None, "options": {}}
        item["payload"] = None
        return {**item, **changes}

    def line(runs: Any, **fields: Any) -> bytes:
        request = {"op": "trigger", "deadline": host_monotonic() + 1, "retry": False, "runs": runs}
        return json.dumps({**request, **fields}).encode() + b"\n"

    refused = {
        "runs must be a non-empty list": line({"not": "a list"}),
        "unknown task 'nope'": line([run(task="nope")]),
        "priority must be from 1 to 10": line([run(options={"priority": 99})]),
        "idempotency key": line([run(), run(options={"idempotency_key": "k"})]),
        "runs[0]: run id must be a run id": line([run(id=7)]),
        "deadline must be a number": line([run()], deadline="soon"),
        "deadline must be a finite number": line([run()], deadline=1e308),
        "retry must be true or false": line([run()], retry="maybe"),
        "runs[0]: run id": line([run(id="")]),
        "runs[1]: missing field 'at'": line([run(), {"id": new_run_id(1.0), "task": "ping"}]),
        "created_at must be a time from 1970": line([run(at=-1e308)]),
        "tags[0] must be valid UTF-8": line([run(options={"tags": ["a\ud800"]})]),
        "concurrency_key must be valid UTF-8": line([run(options={"concurrency_key": "\udfff"})]),
        "max_attempts must be from 1 to 1000": line([run(options={"max_attempts": 10**20})]),
        "delay must be a duration from 0 to 100 years": line([run(options={"delay": 1e11})]),
        "parent_id: no run": line([run(parent_id=new_run_id(1.0))]),
    }
    nan_at = line([run()]).replace(b'"at": 1.0', b'"at": NaN')
    infinite_at = line([run()]).replace(b'"at": 1.0', b'"at": Infinity')
    refused["created_at must be a time from 1970 to the end of 9999"] = nan_at
    refused["created_at must be a time from 1970 to the end of 9999 "] = infinite_at

    async with keyq.Daemon(config, registry=registry) as daemon:
        path = daemon.socket_path
        answers = {
            what: await anyio.to_thread.run_sync(send, path, request)
            for what, request in refused.items()
        }
        handle = await ping.trigger({})
        async with deadline():
            assert (await daemon.result(handle.id)).output == "pong"
        stored = [r["id"] for r in await anyio.to_thread.run_sync(_list_runs, config)]

    for what, answer in answers.items():
        assert answer["ok"] is False, what
        assert what.strip() in answer["error"], (what, answer)
    assert stored == [handle.id]


def _list_runs(config: Config) -> list[dict[str, Any]]:
    with keyq.Client(config) as client:
        return client.list_runs()
