"""No-op end-to-end throughput: bulk-trigger N runs, then time the daemon draining them.

    python -m bench.throughput [--runs 20000] [--keys 0] [--durability full|normal]

Runs are triggered with the daemon stopped (so the trigger rate and the drain
rate are measured apart), then an in-process daemon starts and the rate is
taken from the first start to the last completion, as recorded in the
database. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

import keyq
from keyq.config import Config, LimitsConfig, LogConfig
from keyq.logs import configure_logging


def build(registry: keyq.Registry) -> keyq.Task:
    @registry.task(id="noop", queue=registry.queue("bench", concurrency_limit=None))
    async def noop(payload: Any, ctx: keyq.Context) -> None:
        return None

    return noop


def trigger(config: Config, task: keyq.Task, runs: int, keys: int) -> float:
    """Insert ``runs`` runs in batches of 1000; returns runs per second."""
    started = time.perf_counter()
    with keyq.Client(config, registry=task_registry(task)) as client:
        for first in range(0, runs, 1000):
            batch = range(first, min(first + 1000, runs))
            items = [
                {"payload": i, "concurrency_key": f"k{i % keys}" if keys else None} for i in batch
            ]
            client.batch_trigger(task, items)
    return runs / (time.perf_counter() - started)


def task_registry(task: keyq.Task) -> keyq.Registry:
    registry = keyq.Registry()
    registry.tasks[task.id] = task
    registry.queues[task.queue.name] = task.queue
    return registry


async def drain(config: Config, registry: keyq.Registry, runs: int) -> None:
    async with keyq.Daemon(config, registry=registry, control_socket=False) as daemon:
        while daemon.engine.statistics().queued or daemon.engine.limits.running:
            await daemon.until_idle()


def end_to_end_rate(database: Path, runs: int) -> float:
    with sqlite3.connect(database) as conn:
        first, last, done = conn.execute(
            "SELECT MIN(started_at), MAX(finished_at), COUNT(*) FROM runs WHERE status='completed'"
        ).fetchone()
    assert done == runs, f"only {done} of {runs} runs completed"
    return float(runs / (last - first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=0, help="concurrency keys (0: none)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    args = parser.parse_args()

    configure_logging(LogConfig(format="json", level="warning"))
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "bench.db"
        config = replace(
            Config(database=database),
            durability=args.durability,
            limits=LimitsConfig(concurrency=200, burst_factor=2.0),
        )
        registry = keyq.Registry()
        task = build(registry)
        trigger_rate = trigger(config, task, args.runs, args.keys)
        wall = time.perf_counter()
        anyio.run(drain, config, registry, args.runs)
        wall = time.perf_counter() - wall
        rate = end_to_end_rate(database, args.runs)

    print("| runs | keys | durability | trigger runs/s | end-to-end runs/s | drain wall s |")
    print("|---:|---:|---|---:|---:|---:|")
    print(
        f"| {args.runs} | {args.keys} | {args.durability} | {trigger_rate:,.0f} "
        f"| {rate:,.0f} | {wall:.2f} |"
    )


if __name__ == "__main__":
    main()
