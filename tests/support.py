"""Helpers shared by the daemon and end-to-end tiers."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

from keyq.config import Config
from keyq.producer import Producer
from keyq.registry import Registry, TriggerRequest
from keyq.results import RunHandle
from keyq.store.instance import InstanceLock
from keyq.store.protocol import Event, Tick
from keyq.store.sqlite import SqliteStore


class Overlap:
    """Counts attempts running at once, per key and overall, from inside the task."""

    def __init__(self) -> None:
        self.now: Counter[object] = Counter()
        self.peak: Counter[object] = Counter()
        self.order: list[object] = []

    @contextmanager
    def running(self, *groups: object) -> Iterator[None]:
        self.order.append(groups[0] if groups else None)
        for g in (*groups, "*"):
            self.now[g] += 1
            self.peak[g] = max(self.peak[g], self.now[g])
        try:
            yield
        finally:
            for g in (*groups, "*"):
                self.now[g] -= 1


async def work() -> None:
    """A few milliseconds of pretend work, so that started attempts overlap."""
    await anyio.sleep(0.005)


@asynccontextmanager
async def deadline(seconds: float = 10.0) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


def ask(path: Path | None, line: bytes, *, read: bool = True) -> dict[str, Any] | None:
    """Send one request line to a daemon's control socket on a fresh connection, as a
    client would; its answer (None with ``read=False``)."""
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line)
        if not read:
            return None
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            assert chunk, f"the daemon closed the connection after {data!r}"
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; the file, to delete to free it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def insert(
    producer: Producer, requests: Sequence[TriggerRequest], parent_id: str | None = None
) -> list[RunHandle]:
    """Validate and store runs directly, as a client does with no daemon up."""
    return producer.store(producer.build(requests, parent_id))


def acquire(lock: InstanceLock) -> None:
    """Take a daemon's instance lock from sync test code."""
    anyio.run(lock.acquire_for_daemon)


class RefusingStore(SqliteStore):
    """A real SQLite store whose admission fails the events ``refuses`` picks, as a bug in
    it would: their callers are answered with the error, the rest goes on as usual."""

    def __init__(self, config: Config, registry: Registry, refuses: Callable[[Event], bool]):
        super().__init__(config, registry)
        self._refuses = refuses

    async def tick(self, events: Sequence[Event], now: float) -> Tick:
        kept = []
        for event in events:
            reply = getattr(event, "reply", None)
            if self._refuses(event) and reply is not None:
                reply.fail(RuntimeError("adoption bug"))
            else:
                kept.append(event)
        return await super().tick(kept, now)
