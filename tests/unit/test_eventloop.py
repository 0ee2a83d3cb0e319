"""The event loop `keyq serve` runs on: its timers are not rounded up to milliseconds."""

from __future__ import annotations

import asyncio
import select
import selectors
import socket
import time

import pytest

from keyq import eventloop
from keyq.eventloop import PreciseEpollSelector, new_event_loop

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux-only")


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeouts select(2) is asked to wait, in the order asked."""
    asked: list[float] = []
    real = select.select

    def spy(r: list[int], w: list[int], x: list[int], timeout: float | None = None) -> object:
        assert timeout is not None
        asked.append(timeout)
        return real(r, w, x, timeout)

    monkeypatch.setattr(select, "select", spy)
    return asked


def test_a_timeout_is_waited_to_the_microsecond_not_rounded_up(waits: list[float]) -> None:
    with PreciseEpollSelector() as selector:
        started = time.monotonic()
        assert selector.select(0.0015) == []
        assert time.monotonic() - started >= 0.0015
    # epoll_wait would have been asked for 2 ms
    assert waits == [0.0015]


def test_a_ready_descriptor_is_reported_without_waiting_out_the_timeout(waits: list[float]) -> None:
    a, b = socket.socketpair()
    with a, b, PreciseEpollSelector() as selector:
        selector.register(a, selectors.EVENT_READ, "data")
        b.send(b"x")
        started = time.monotonic()
        ready = selector.select(30.0)
        assert time.monotonic() - started < 10
    assert [(key.data, events) for key, events in ready] == [("data", selectors.EVENT_READ)]


def test_no_timeout_and_zero_timeout_go_straight_to_epoll(waits: list[float]) -> None:
    a, b = socket.socketpair()
    with a, b, PreciseEpollSelector() as selector:
        selector.register(a, selectors.EVENT_READ)
        assert selector.select(0) == []
        b.send(b"x")
        assert len(selector.select(None)) == 1
    assert waits == []


def test_an_epoll_descriptor_select_cannot_watch_falls_back_to_epoll(
    waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventloop, "FD_SETSIZE", 0)
    with PreciseEpollSelector() as selector:
        started = time.monotonic()
        assert selector.select(0.001) == []
        assert time.monotonic() - started >= 0.001
    assert waits == []


def test_the_loop_runs_timers_and_sockets() -> None:
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.0105)
        slept = loop.time() - started
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.send(b"ping")
            return await loop.sock_recv(a, 4), slept

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert isinstance(runner.get_loop()._selector, PreciseEpollSelector)  # type: ignore[attr-defined]
        data, slept = runner.run(main())
    assert data == b"ping"
    assert slept >= 0.0105
