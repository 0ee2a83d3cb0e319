"""Store-tier fixtures: tasks in a private registry, producers on a temporary database, and a
plain sqlite3 view of what is on disk."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from keyq.clock import FakeClock
from keyq.config import Config
from keyq.producer import Producer
from keyq.registry import Registry, Task


@pytest.fixture
def tasks(registry: Registry) -> dict[str, Task]:
    """Two tasks on a keyed queue and one on its own queue."""
    analysis = registry.queue("user-analysis", concurrency_limit=2)

    @registry.task(id="analyze", queue=analysis)
    async def analyze(payload: Any, ctx: Any) -> None:
        return None

    @registry.task(id="summarize", queue=analysis)
    async def summarize(payload: Any, ctx: Any) -> None:
        return None

    @registry.task(id="email")
    async def email(payload: Any, ctx: Any) -> None:
        return None

    return {"analyze": analyze, "summarize": summarize, "email": email}


class Pokes:
    """Counts the pokes a producer sends to the (absent) daemon."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def pokes() -> Pokes:
    return Pokes()


MakeProducer = Callable[..., Producer]


@pytest.fixture
def make_producer(config: Config, clock: FakeClock, pokes: Pokes) -> Iterator[MakeProducer]:
    """Producers on the test database (config fields may be overridden); closed at the end."""
    made: list[Producer] = []

    def make(**overrides: Any) -> Producer:
        producer = Producer(replace(config, **overrides), now=clock.now, poke=pokes)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close()


@pytest.fixture
def producer(make_producer: MakeProducer) -> Producer:
    return make_producer()


Rows = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def rows(database: Path) -> Rows:
    """Rows of the runs table as a fresh, independent sqlite3 connection sees them."""

    def read(where: str = "1", *params: Any) -> list[dict[str, Any]]:
        if not database.exists():
            return []
        conn = sqlite3.connect(database)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY seq", params)
            return [dict(r) for r in found.fetchall()]
        finally:
            conn.close()

    return read


Events = Callable[[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture
def events() -> Events:
    """The stored timeline of a run row, one dict per transition."""

    def parse(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [json.loads(line) for line in row["events"].splitlines()]

    return parse
