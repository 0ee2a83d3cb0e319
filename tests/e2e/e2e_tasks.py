"""Tasks for the end-to-end tier, imported by `keyq serve --app e2e_tasks` and by the tests.

Registers into keyq.default_registry: import it once per process (the e2e conftest does).
Results carry what the task measured itself (times, pid, attempt), so a test can reason
about real overlap and about which daemon process ran an attempt.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

import keyq

FAST_RETRY = keyq.Retry(max_attempts=3, min_delay=0.05, max_delay=0.05, jitter=0)

analysis = keyq.queue("e2e-analysis", concurrency_limit=2)


@keyq.task(id="e2e-sleep", queue=analysis)
async def e2e_sleep(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    """Sleep payload["s"] seconds; report the interval as measured inside the attempt."""
    start = time.time()
    await anyio.sleep(payload["s"])
    return {"start": start, "end": time.time(), "pid": os.getpid(), "attempt": ctx.attempt}


@keyq.task(id="e2e-noop")
async def e2e_noop(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    """Do nothing; say which process ran it."""
    return {"pid": os.getpid()}


@keyq.task(id="e2e-flaky", retry=FAST_RETRY)
async def e2e_flaky(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    """Fail every attempt before payload["ok_on"], then succeed."""
    if ctx.attempt < payload["ok_on"]:
        raise RuntimeError(f"flaky attempt {ctx.attempt} of ok_on {payload['ok_on']}")
    return {"attempt": ctx.attempt}


@keyq.task(id="e2e-sync-sleep")
def e2e_sync_sleep(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    """A sync task: it runs in a thread, which a cancel cannot interrupt."""
    time.sleep(payload["s"])
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def _mark(path: str, line: str) -> int:
    """Append a line to a file; return how many lines it has (the calls so far)."""
    with open(path, "a") as f:
        f.write(line + "\n")
    with open(path) as f:
        return len(f.readlines())


@keyq.task(id="e2e-durable")
async def e2e_durable(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    """A step that counts its calls in a file, then a wait (or a plain sleep), then done."""
    calls = await ctx.step("count", _mark, payload["marks"], "step")
    _mark(payload["marks"] + ".after", "after")  # the step is durable once this is written
    if payload.get("sleep_s") and ctx.attempt == 1:
        await anyio.sleep(payload["sleep_s"])  # holding its slot: a crash here interrupts it
    await ctx.wait.for_(payload.get("wait_s", 0))
    return {"calls": calls, "pid": os.getpid(), "attempt": ctx.attempt}


@keyq.task(id="e2e-child")
async def e2e_child(payload: int, ctx: keyq.Context) -> int:
    await ctx.wait.for_(1.0)
    return payload * 2


@keyq.task(id="e2e-parent")
async def e2e_parent(payload: list[int], ctx: keyq.Context) -> list[Any]:
    results = await e2e_child.batch_trigger_and_wait([{"payload": n} for n in payload])
    return [r.output for r in results]


@keyq.task(id="e2e-approval")
async def e2e_approval(payload: Any, ctx: keyq.Context) -> Any:
    token = await ctx.wait.create_token(timeout="1h")
    result = await ctx.wait.for_token(token)
    return {"ok": result.ok, "output": result.output, "pid": os.getpid()}
