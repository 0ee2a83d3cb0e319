"""The control socket: whatever a local client sends, the daemon answers or ignores it."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import pytest
from support import RefusingStore, deadline

import keyq
from keyq import channel, handoff
from keyq.config import Config
from keyq.registry import Registry, Task
from keyq.store.protocol import RunsHandedIn

pytestmark = pytest.mark.anyio


def ask(path: Any, raw: bytes, *, read: bool = True) -> dict[str, Any] | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(raw)
        if not read:
            return None
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(4096)
        answer: dict[str, Any] = json.loads(data)
        return answer


def read_lines(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def exchange(path: Any, requests: list[bytes], *, half_close: bool = False) -> list[dict[str, Any]]:
    """Send the requests back to back on one connection; read every answer until EOF
    (after a half-close) or until there is one per request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"".join(requests))
        if not half_close:
            return read_lines(sock, len(requests))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def ping(registry: Registry) -> Task:
    @registry.task(id="ping")
    async def ping(payload: Any, ctx: keyq.Context) -> str:
        return "pong"

    return registry.get("ping")


def trigger_request(config: Config, registry: Registry, task: Task) -> tuple[str, bytes]:
    """A hand-off request for one new run of ``task``, as a client sends it: (run id, line)."""
    with keyq.Client(config, registry=registry) as client:
        (run,) = client._producer.build([(task, {}, {})])
    encoded = handoff.encode([run])
    assert encoded is not None
    return run.id, handoff.request(encoded, False)


async def test_control__bad_requests_get_an_answer_and_the_daemon_stays_up(
    config: Config, registry: Registry, ping: Task
) -> None:
    """Malformed lines, missing fields and clients that hang up never stop the daemon."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        path = daemon.socket_path

        def abuse() -> list[dict[str, Any] | None]:
            return [
                ask(path, b"not json\n"),
                ask(path, b'{"op": "cancel"}\n'),
                ask(path, b'{"op": "cancel", "run_id": 7}\n'),
                ask(path, b'{"op": "nope"}\n'),
                ask(path, b'{"op": "cancel", "run_id": "run_missing"}\n', read=False),
            ]

        answers = await anyio.to_thread.run_sync(abuse)
        stats = await anyio.to_thread.run_sync(channel.request, path, {"op": "stats"})
        handle = await ping.trigger({})
        async with deadline():
            assert (await daemon.result(handle.id)).output == "pong"

    assert [a and a["ok"] for a in answers[:4]] == [False, False, False, False]
    assert "bad request" in answers[1]["error"]  # type: ignore[index]
    assert stats["ok"] is True


async def test_control__answers_come_in_the_order_asked(
    config: Config, registry: Registry, ping: Task
) -> None:
    """Requests sent back to back on one connection are answered in order, though some are
    answered at once (a bad line) and others only after the daemon's loop (a cancel, a
    trigger): a client pairs each answer with its request by position."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        run_id, trigger = trigger_request(config, registry, ping)
        requests = [
            b'{"op": "cancel", "run_id": "run_missing"}\n',
            b"not json\n",
            trigger,
            b'{"op": "nope"}\n',
            b'{"op": "stats"}\n',
        ]
        answers = await anyio.to_thread.run_sync(exchange, daemon.socket_path, requests)
        async with deadline():
            assert (await daemon.result(run_id)).output == "pong"

    assert [a["ok"] for a in answers] == [False, False, True, False, True]
    assert answers[0]["type"] == "RunNotFoundError"
    assert "bad request" in answers[1]["error"]
    assert "unknown op" in answers[3]["error"]
    assert "stats" in answers[4]


async def test_control__an_endless_line_closes_that_connection_only(
    config: Config, registry: Registry
) -> None:
    """A client that sends more than a request can be without a newline is cut off;
    the daemon and its other clients go on."""
    async with keyq.Daemon(config, registry=registry) as daemon:

        def flood() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(daemon.socket_path))
                try:
                    sock.sendall(b"x" * (channel.MAX_LINE + 4096))
                except (BrokenPipeError, ConnectionResetError):
                    return b""
                return sock.recv(4096)

        assert await anyio.to_thread.run_sync(flood) == b""
        stats = await anyio.to_thread.run_sync(channel.request, daemon.socket_path, {"op": "stats"})
    assert stats["ok"] is True


async def test_control__a_daemon_that_stops_closes_its_connections(
    config: Config, registry: Registry
) -> None:
    """A kept-open client connection ends when the daemon stops (the client then stores
    its runs directly, keyq/handoff.py), and the socket file is gone."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        path = daemon.socket_path
        assert path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        await anyio.to_thread.run_sync(sock.connect, str(path))
        sock.sendall(b'{"op": "stats"}\n')
        assert (await anyio.to_thread.run_sync(read_lines, sock, 1))[0]["ok"] is True
    with sock:
        assert await anyio.to_thread.run_sync(sock.recv, 4096) == b""
    assert not path.exists()


async def test_control__a_client_that_shuts_its_side_still_gets_every_answer(
    config: Config, registry: Registry, ping: Task
) -> None:
    """`printf '...' | nc -U -N keyq.db.sock`: the requests, then EOF. The answers
    the daemon owes, even those it gives only after a commit, still arrive."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        run_id, trigger = trigger_request(config, registry, ping)
        requests = [trigger, b'{"op": "cancel", "run_id": "run_missing"}\n', b'{"op": "stats"}\n']
        answers = await anyio.to_thread.run_sync(
            lambda: exchange(daemon.socket_path, requests, half_close=True)
        )
        async with deadline():
            assert (await daemon.result(run_id)).output == "pong"

    assert [a["ok"] for a in answers] == [True, False, True]


async def test_control__a_line_nested_too_deep_is_refused_and_the_connection_goes_on(
    config: Config, registry: Registry
) -> None:
    """JSON nested deeper than the parser's recursion limit is a bad request like any other."""
    async with keyq.Daemon(config, registry=registry) as daemon:
        requests = [b"[" * 20_000 + b"\n", b'{"op": "stats"}\n']
        answers = await anyio.to_thread.run_sync(exchange, daemon.socket_path, requests)
    assert [a["ok"] for a in answers] == [False, True]
    assert "bad request" in answers[0]["error"]


async def test_control__a_trigger_the_daemon_fails_on_is_answered_and_the_rest_goes_on(
    config: Config, registry: Registry, ping: Task
) -> None:
    """A bug in adopting a trigger fails that request (the client then stores the runs
    itself); it must not hold back the connection's later answers."""
    store = RefusingStore(config, registry, lambda event: isinstance(event, RunsHandedIn))
    async with keyq.Daemon(config, registry=registry, store=store) as daemon:
        _, trigger = trigger_request(config, registry, ping)
        requests = [trigger, b'{"op": "stats"}\n']
        answers = await anyio.to_thread.run_sync(exchange, daemon.socket_path, requests)

    assert [a["ok"] for a in answers] == [False, True]
    assert "adoption bug" in answers[0]["error"]
