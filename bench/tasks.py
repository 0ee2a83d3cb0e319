"""The benchmark app: ``keyq serve --app bench.tasks`` (run from the repository root).

Importing it registers the tasks into ``keyq.default_registry``, in the daemon
and in the benchmark process alike. Tasks that measure time report
``time.monotonic_ns()`` read inside the attempt: CLOCK_MONOTONIC is one clock
for every process on Linux, so the benchmark compares it with its own reading
taken just before it triggered.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import keyq

NOOP = "bench-noop"
STAMP = "bench-stamp"
BURST = "bench-burst"
FAIR = "bench-fair"

BURST_KEY_LIMIT = 2  # the burst benchmark: at most 2 runs per concurrency key


@keyq.task(id=NOOP, queue=keyq.queue("bench-noop"))
async def noop(payload: Any, ctx: keyq.Context) -> None:
    """Do nothing: throughput and dispatch cost."""
    return None


@keyq.task(id=STAMP, queue=keyq.queue("bench-stamp"))
async def stamp(payload: Any, ctx: keyq.Context) -> dict[str, int]:
    """Return when the attempt started (trigger -> start latency)."""
    return {"start_ns": time.monotonic_ns()}


async def _sleep_ms(payload: dict[str, Any]) -> dict[str, int]:
    start_ns = time.monotonic_ns()
    await anyio.sleep(payload["ms"] / 1000)
    return {"start_ns": start_ns, "end_ns": time.monotonic_ns()}


@keyq.task(id=BURST, queue=keyq.queue("bench-burst", concurrency_limit=BURST_KEY_LIMIT))
async def burst(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, int]:
    """Sleep ``payload["ms"]``; report the interval measured inside the attempt."""
    return await _sleep_ms(payload)


@keyq.task(id=FAIR, queue=keyq.queue("bench-fair"))
async def fair(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, int]:
    """Sleep ``payload["ms"]`` on an unlimited queue: only the environment limit holds it."""
    return await _sleep_ms(payload)


WAIT = "bench-wait"


@keyq.task(id=WAIT, queue=keyq.queue("bench-wait"))
async def wait(payload: str, ctx: keyq.Context) -> bool:
    """Wait for the token ``payload`` (holding no slot), then report whether it was completed."""
    return (await ctx.wait.for_token(payload)).ok
