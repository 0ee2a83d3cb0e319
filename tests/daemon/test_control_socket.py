"""The control socket: whatever a local client sends, the daemon answers or ignores it."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import pytest
from support import deadline

import keyq
from keyq import control
from keyq.config import Config
from keyq.registry import Registry

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


async def test_control__bad_requests_get_an_answer_and_the_daemon_stays_up(
    config: Config, registry: Registry
) -> None:
    """Malformed lines, missing fields and clients that hang up never stop the daemon."""

    @registry.task(id="ping")
    async def ping(payload: Any, ctx: keyq.Context) -> str:
        return "pong"

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
        stats = await anyio.to_thread.run_sync(control.request, path, {"op": "stats"})
        handle = await ping.trigger({})
        async with deadline():
            assert (await daemon.result(handle.id)).output == "pong"

    assert [a and a["ok"] for a in answers[:4]] == [False, False, False, False]
    assert "bad request" in answers[1]["error"]  # type: ignore[index]
    assert stats["ok"] is True
