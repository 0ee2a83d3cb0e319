"""Rate limits: the cost of choosing stays flat with a rated backlog of 100,000 runs.

The engine alone (no database, no attempts: the figure is the dispatch policy's),
on explicit time. A queue with ``rate_limit = "1/1s"`` per key holds a backlog of
10 runs per key: 100,000 runs over 10,000 keys, and 1,000 runs over 100 keys.
Every simulated second each key may start one run: the engine is ticked, every
run it started is finished at once, and the clock moves on until all have run.

Two figures per backlog. *Limit checks per start* counts the questions the
dispatcher asks the limits (key, queue) for each run it starts: the cost of
choosing, which must not grow with the backlog (the target: the small
backlog's count over the big one's, 1.0 when flat). *Time per start* is the
wall time of the ticks and finishes over the starts they made, best of 5
repetitions with the sizes alternating; it grows somewhat with the backlog even
so, as 100,000 runs no longer fit the CPU's caches (the same backlogs without a
rate show the same growth). The rows without a rate give the rate's own cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from bench.common import Options, Result, Row, Target
from keyq.core.engine import Engine
from keyq.core.limits import Key, Limits, QueueLimit
from keyq.core.model import Completed, RunSpec
from keyq.core.ratelimit import Rate
from keyq.core.states import QUEUED

T0 = 1_700_000_000.0
RATIO_TARGET = Target(">=", 0.80, "ratio")  # small-backlog checks / big-backlog checks
DONE = Completed("null")
RATES: tuple[tuple[str, Rate | None], ...] = (("1/1s per key", Rate(1, 1.0)), ("no rate", None))


class CountingLimits(Limits):
    """Limits that count the dispatcher's questions (for the checks per start)."""

    checks = 0

    def bucket_has_room(self, queue: str, key: Key) -> bool:
        self.checks += 1
        return super().bucket_has_room(queue, key)

    def queue_has_room(self, queue: str) -> bool:
        self.checks += 1
        return super().queue_has_room(queue)


def build(keys: int, per_key: int, rate: Rate | None, kind: type[Limits]) -> Engine:
    limits = kind(concurrency=10_000_000, burst_factor=1.0)
    limits.set_queue("sms", QueueLimit(rate=rate))
    engine = Engine(limits, rng=random.Random(0))
    for seq in range(1, keys * per_key + 1):
        spec = RunSpec(
            id=f"r{seq}",
            seq=seq,
            task="t",
            queue="sms",
            concurrency_key=f"k{seq % keys}",
            priority=5,
            payload="{}",
            max_attempts=1,
            state=QUEUED,
            available_at=T0,
            created_at=T0,
        )
        engine.submit(spec)
    return engine


def drain(engine: Engine, step_s: float) -> tuple[float, int]:
    """Seconds of engine work and starts, ticking every ``step_s`` until nothing is left."""
    now, spent, starts = T0, 0.0, 0
    while len(engine):
        began = time.perf_counter()
        step = engine.tick(now)
        for start in step.start:
            engine.finished(start.run_id, DONE, now)
        engine.tick(now)
        spent += time.perf_counter() - began
        starts += len(step.start)
        now += step_s
    return spent, starts


def time_per_start_us(keys: int, per_key: int, rate: Rate | None) -> float:
    spent, starts = drain(build(keys, per_key, rate, Limits), 1.0)
    assert starts == keys * per_key
    return spent / starts * 1e6


def checks_per_start(keys: int, per_key: int, rate: Rate | None) -> float:
    engine = build(keys, per_key, rate, CountingLimits)
    _, starts = drain(engine, 1.0)
    assert isinstance(engine.limits, CountingLimits)
    return engine.limits.checks / starts


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    big_keys = 1_000 if options.quick else 10_000
    small_keys, per_key, repeats = 100, 10, 2 if options.quick else 5
    big_name = f"{big_keys * per_key:,} queued over {big_keys:,} keys"
    small_name = f"{small_keys * per_key:,} queued over {small_keys} keys"
    result = Result("ratelimit", f"Rate limits: the cost per start, {big_name} vs {small_name}")
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for name, rate in RATES:
            for keys in (big_keys, small_keys):
                times.setdefault((name, keys), []).append(time_per_start_us(keys, per_key, rate))
    checks: dict[str, tuple[float, float]] = {}
    for name, rate in RATES:
        big, small = (checks_per_start(k, per_key, rate) for k in (big_keys, small_keys))
        checks[name] = (big, small)
        result.rows += [
            Row(name, f"limit checks per start, {big_name}", big, "count"),
            Row(name, f"limit checks per start, {small_name}", small, "count"),
            Row(name, "checks: small ÷ big (1.0: flat)", small / big, "ratio", (RATIO_TARGET,)),
            Row(name, f"time per start, {big_name}", min(times[(name, big_keys)]), "µs"),
            Row(name, f"time per start, {small_name}", min(times[(name, small_keys)]), "µs"),
        ]
    result.details = {
        "time_per_start_us": {f"{r}, {k} keys": v for (r, k), v in times.items()},
        "checks_per_start": checks,
    }
    result.notes.append(
        f"Engine alone: tick, start, finish on explicit time; times are the best of {repeats}."
    )
    return result
