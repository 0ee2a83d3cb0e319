"""Burst: 10 keys × 50 runs of 20 ms, at most 2 per key and 20 overall, must take ≈ 0.50 s.

Ideal: each key runs 50 / 2 = 25 rounds of 20 ms, all keys in parallel
(20 slots = 10 keys × 2), so 0.50 s from the first start to the last finish.
The 500 runs are triggered in one ``batch_trigger`` (key by key) on a
``keyq serve`` subprocess with ``concurrency = 20``, ``burst_factor = 1``. Each
attempt records its start and finish with ``time.monotonic_ns()``; from these
intervals the benchmark checks how many runs of one key (and overall) really
overlapped. Repeated on the same daemon; the median and the worst are reported.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import keyq
from bench import tasks
from bench.common import (
    Options,
    Result,
    Row,
    ServedDaemon,
    Target,
    database_of,
    query,
    wait_for,
    workspace,
    write_config,
)

KEYS, PER_KEY, RUN_MS, OVERALL = 10, 50, 20, 20
IDEAL_S = PER_KEY / tasks.BURST_KEY_LIMIT * RUN_MS / 1000
MAKESPAN_TARGET = Target("<=", IDEAL_S * 1.10, "s")
Interval = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Burst:
    makespan_s: float  # first start -> last finish, inside the attempts
    trigger_to_done_s: float  # just before batch_trigger -> last finish
    per_key_peak: int  # the most runs of one key that overlapped
    overall_peak: int
    failed: int


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    repeats = 2 if options.quick else 5
    with workspace() as tmp:
        config = write_config(tmp, concurrency=OVERALL, burst_factor=1.0)
        with ServedDaemon(config) as daemon, keyq.Client(config) as client:
            daemon.start()
            bursts = [one_burst(client, database_of(config)) for _ in range(repeats)]
            daemon.stop()
    return _result(bursts)


def one_burst(client: keyq.Client, database: Path) -> Burst:
    items = [
        {"payload": {"ms": RUN_MS}, "concurrency_key": f"k{k}"}
        for k in range(KEYS)
        for _ in range(PER_KEY)
    ]
    before = time.monotonic_ns()
    ids = {h.id for h in client.batch_trigger(tasks.BURST, items)}
    runs = _wait_final(database, ids)
    by_key: dict[str, list[Interval]] = {}
    for key, result in runs:
        by_key.setdefault(key, []).append((result["start_ns"], result["end_ns"]))
    every = [i for intervals in by_key.values() for i in intervals]
    return Burst(
        makespan_s=(max(e for _, e in every) - min(s for s, _ in every)) / 1e9,
        trigger_to_done_s=(max(e for _, e in every) - before) / 1e9,
        per_key_peak=max(max_overlap(intervals) for intervals in by_key.values()),
        overall_peak=max_overlap(every),
        failed=len(ids) - len(every),
    )


def _wait_final(database: Path, ids: set[str]) -> list[tuple[str, dict[str, int]]]:
    """(key, result) of every completed run in ``ids``, once all of them are final."""
    sql = "SELECT id, concurrency_key, status, result FROM runs WHERE task = ?"
    rows: list[tuple[str, str, str, str | None]] = []

    def final() -> bool:
        nonlocal rows
        rows = [r for r in query(database, sql, (tasks.BURST,)) if r[0] in ids]
        return all(status in ("completed", "failed", "canceled") for _, _, status, _ in rows)

    wait_for(final, 60, "every burst run final")
    return [(key, json.loads(res)) for _, key, status, res in rows if res and status == "completed"]


def max_overlap(intervals: list[Interval]) -> int:
    """The most [start, end) intervals covering one instant (an end sorts before a start)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    return peak


def _result(bursts: list[Burst]) -> Result:
    makespans = [b.makespan_s for b in bursts]
    case = f"{KEYS} keys × {PER_KEY} runs of {RUN_MS} ms"
    rows = [
        Row(
            case,
            "first start → last finish, median",
            statistics.median(makespans),
            "s",
            (MAKESPAN_TARGET,),
        ),
        Row(case, "first start → last finish, worst", max(makespans), "s", (MAKESPAN_TARGET,)),
        Row(
            case,
            "trigger → last finish, median",
            statistics.median(b.trigger_to_done_s for b in bursts),
            "s",
        ),
        Row(
            case,
            "most runs of one key at once",
            max(b.per_key_peak for b in bursts),
            "count",
            (Target("<=", tasks.BURST_KEY_LIMIT, "count"),),
        ),
        Row(
            case,
            "most runs at once overall",
            max(b.overall_peak for b in bursts),
            "count",
            (Target("<=", OVERALL, "count"),),
        ),
        Row(
            case,
            "runs not completed",
            sum(b.failed for b in bursts),
            "count",
            (Target("<=", 0, "count"),),
        ),
    ]
    notes = [
        f"Ideal {IDEAL_S:.2f} s; target within 10% ({MAKESPAN_TARGET}). {len(bursts)} bursts.",
        "Overlap is computed from start/finish times measured inside each attempt.",
    ]
    return Result(
        "burst",
        "Burst: limits under a burst (2 per key, 20 overall)",
        rows,
        notes,
        {"bursts": [asdict(b) for b in bursts], "ideal_s": IDEAL_S},
    )
