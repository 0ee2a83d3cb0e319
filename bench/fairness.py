"""Fairness: a heavy key's backlog must not starve light keys that arrive later.

A ``keyq serve`` subprocess runs with an environment limit of 4
(``concurrency = 4``, ``burst_factor = 1``) and a task that sleeps 2 ms on a
queue without a per-key limit. One ``batch_trigger`` queues 10,000 runs of key
"heavy"; once the heavy key has started 200 runs, a second one queues 100 light
keys × 10 runs. Queue time is start (``time.monotonic_ns()`` inside the attempt)
minus trigger (``time.monotonic_ns()`` here, just before the ``batch_trigger``).

Even exact round-robin cannot make the light keys' p99 tiny relative to the
heavy key's: while all 101 keys are backlogged the light keys get 100/101 of the
slots, so their last runs start about 101 × 10 runs after they arrive. The
table therefore also shows the ratio an exact round-robin would give with the
same arrival (equal run times, simulated), next to the 5% target.

Jain's index is taken over slot share (slot-seconds inside the window, from
each attempt's own start and finish) among the 101 keys, over the window from
the first light start to the earliest last start of a light key, in which every
one of them has runs queued. 1.0 means equal shares.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyq
from bench import tasks
from bench.common import (
    Options,
    Result,
    Row,
    ServedDaemon,
    Target,
    database_of,
    percentile,
    query,
    wait_for,
    workspace,
    write_config,
)

SLOTS, RUN_MS = 4, 2
RATIO_TARGET = Target("<=", 0.05, "ratio")
Interval = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Sizes:
    heavy: int
    light_keys: int
    light_runs: int  # per light key
    head_start: int  # heavy runs started before the light keys arrive


def sizes(options: Options) -> Sizes:
    return Sizes(1_000, 20, 10, 50) if options.quick else Sizes(10_000, 100, 10, 200)


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    s = sizes(options)
    with workspace() as tmp:
        config = write_config(tmp, concurrency=SLOTS, burst_factor=1.0)
        database = database_of(config)
        with ServedDaemon(config) as daemon, keyq.Client(config) as client:
            daemon.start()
            heavy_at, light_at = _trigger(client, database, s)
            total = s.heavy + s.light_keys * s.light_runs
            wait_for(
                lambda: _completed(database) >= total,
                total * RUN_MS / SLOTS / 100 + 60,
                "every fairness run completed",
                poll_s=0.1,
            )
            daemon.stop()
        runs = _intervals(database)
    return _result(s, runs, heavy_at, light_at)


def _trigger(client: keyq.Client, database: Path, s: Sizes) -> tuple[int, int]:
    """Queue the heavy key, then the light keys once it has a head start; the trigger times."""
    heavy = [{"payload": {"ms": RUN_MS}, "concurrency_key": "heavy"}] * s.heavy
    heavy_at = time.monotonic_ns()
    client.batch_trigger(tasks.FAIR, heavy)
    sql = "SELECT COUNT(*) FROM runs WHERE started_at IS NOT NULL"
    wait_for(lambda: query(database, sql)[0][0] >= s.head_start, 60, "the heavy key started")
    light = [
        {"payload": {"ms": RUN_MS}, "concurrency_key": f"light-{k}"}
        for k in range(s.light_keys)
        for _ in range(s.light_runs)
    ]
    light_at = time.monotonic_ns()
    client.batch_trigger(tasks.FAIR, light)
    return heavy_at, light_at


def _completed(database: Path) -> int:
    return int(query(database, "SELECT COUNT(*) FROM runs WHERE status = 'completed'")[0][0])


def _intervals(database: Path) -> dict[str, list[Interval]]:
    """Each key's runs as (start_ns, end_ns), in start order."""
    by_key: dict[str, list[Interval]] = {}
    for key, result in query(database, "SELECT concurrency_key, result FROM runs"):
        times: dict[str, Any] = json.loads(result)
        by_key.setdefault(key, []).append((times["start_ns"], times["end_ns"]))
    return {key: sorted(intervals) for key, intervals in by_key.items()}


def jain(shares: list[float]) -> float:
    """Jain's fairness index: 1.0 when all shares are equal, 1/n when one key has it all."""
    return sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))


def slot_shares(runs: dict[str, list[Interval]], window: Interval) -> list[float]:
    """Each key's slot-time inside ``window``."""
    low, high = window
    return [
        float(sum(max(0, min(end, high) - max(start, low)) for start, end in intervals))
        for intervals in runs.values()
    ]


def round_robin_ratio(s: Sizes, head_start: int) -> float:
    """p99 light / p99 heavy queue time under exact round-robin, equal run times."""
    order = ["heavy"] * head_start
    left = {f"light-{k}": s.light_runs for k in range(s.light_keys)}
    heavy_left = s.heavy - head_start
    while left:
        for key in list(left):
            order.append(key)
            left[key] -= 1
            if not left[key]:
                del left[key]
        if heavy_left:
            order.append("heavy")
            heavy_left -= 1
    order += ["heavy"] * heavy_left
    wave = [i // SLOTS for i in range(len(order))]  # runs start SLOTS at a time
    arrival = wave[head_start]
    light = [w - arrival for w, key in zip(wave, order, strict=True) if key != "heavy"]
    heavy = [w for w, key in zip(wave, order, strict=True) if key == "heavy"]
    return percentile(light, 99) / percentile(heavy, 99)


def _result(s: Sizes, runs: dict[str, list[Interval]], heavy_at: int, light_at: int) -> Result:
    heavy = runs["heavy"]
    light = {key: intervals for key, intervals in runs.items() if key != "heavy"}
    heavy_q = [(start - heavy_at) / 1e6 for start, _ in heavy]
    light_q = [(start - light_at) / 1e6 for intervals in light.values() for start, _ in intervals]
    head_start = sum(1 for start, _ in heavy if start < light_at)
    window = (
        min(intervals[0][0] for intervals in light.values()),
        min(intervals[-1][0] for intervals in light.values()),
    )
    figures = {
        "ratio": percentile(light_q, 99) / percentile(heavy_q, 99),
        "round_robin_ratio": round_robin_ratio(s, head_start),
        "jain": jain(slot_shares(runs, window)),
        "window_ms": (window[1] - window[0]) / 1e6,
        "head_start": head_start,
    }
    return _table(s, heavy_q, light_q, figures)


def _table(
    s: Sizes, heavy_q: list[float], light_q: list[float], figures: dict[str, float]
) -> Result:
    light_case = f"light keys ({s.light_keys} × {s.light_runs})"
    heavy_case = f"heavy key ({s.heavy:,} runs)"
    both = f"{s.light_keys + 1} keys, {SLOTS} slots"
    rows = [
        Row(light_case, "queue time p50", percentile(light_q, 50), "ms"),
        Row(light_case, "queue time p99", percentile(light_q, 99), "ms"),
        Row(heavy_case, "queue time p50", percentile(heavy_q, 50), "ms"),
        Row(heavy_case, "queue time p99", percentile(heavy_q, 99), "ms"),
        Row(both, "light p99 / heavy p99", figures["ratio"], "ratio", (RATIO_TARGET,)),
        Row(both, "same, exact round-robin (simulated)", figures["round_robin_ratio"], "ratio"),
        Row(both, "Jain's index of slot share, all backlogged", figures["jain"], "index"),
    ]
    notes = [
        f"Runs sleep {RUN_MS} ms; the light keys arrived after {figures['head_start']:,.0f} "
        f"heavy starts; the Jain window lasted {figures['window_ms']:,.0f} ms.",
        "Exact round-robin is the best a fair scheduler can do here: compare the measured "
        "ratio with it, not only with the 5% target.",
    ]
    details = {
        **figures,
        "heavy_queue_ms": {q: percentile(heavy_q, q) for q in (50, 95, 99)},
        "light_queue_ms": {q: percentile(light_q, q) for q in (50, 95, 99)},
    }
    return Result(
        "fairness", "Fairness: one heavy key against later light keys", rows, notes, details
    )
