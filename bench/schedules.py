"""Schedules: 10,000 of them cost nothing between their ticks.

The timetable alone (no database: the figure is the policy's), on explicit
time. N cron schedules, each firing once a day at its own second
(``S M H * * *`` in Europe/Paris), for N = 10,000 and N = 100. Two figures per
size: the cost of a wake-up at which no schedule is due (what the daemon pays
on every tick for all its schedules; it must not grow with N: the target is
the small size's cost over the big one's, about 1.0 when flat), and the cost
of one fired tick (choosing it by the misfire rule and computing the next one
with croniter), over a simulated day in which every schedule fires once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from bench.common import Options, Result, Row, Target
from keyq.cadence import Cron
from keyq.core.timetable import Entry, Timetable

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RATIO_TARGET = Target(">=", 0.50, "ratio")  # sub-µs figures: noise, not growth
WAKE_UPS = 20_000


def build(n: int) -> Timetable:
    table = Timetable()
    entries = []
    for i in range(n):
        second = (i * 86_400 // n) + 1
        cron = Cron(f"{second % 60} {second // 60 % 60} {second // 3600} * * *", "Europe/Paris")
        entries.append(Entry(f"s{i}", cron.next_after, cron.at_or_before, since=T0))
    table.configure(entries)
    return table


def idle_wake_up_us(table: Timetable) -> float:
    """A wake-up before the next tick: due() pops nothing."""
    now = (table.next_deadline() or T0) - 0.5
    began = time.perf_counter()
    for _ in range(WAKE_UPS):
        table.due(now)
        table.next_deadline()
    return (time.perf_counter() - began) / WAKE_UPS * 1e6


def fired_tick_us(table: Timetable, n: int) -> float:
    """Every tick of one day, each fired at its own deadline."""
    fired, spent = 0, 0.0
    while fired < n:
        now = table.next_deadline()
        assert now is not None
        began = time.perf_counter()
        fired += len(table.due(now))
        spent += time.perf_counter() - began
    return spent / fired * 1e6


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    big = 1_000 if options.quick else 10_000
    small = 100
    result = Result("schedules", f"Schedules: {big:,} vs {small} cron schedules, daily each")
    idle: dict[int, float] = {}
    per_tick: dict[int, float] = {}
    for n in (big, small):
        began = time.perf_counter()
        table = build(n)
        build_s = time.perf_counter() - began
        idle[n] = idle_wake_up_us(table)
        per_tick[n] = fired_tick_us(table, n)
        result.rows.append(Row(f"{n:,} schedules", "arming them all (start-up)", build_s, "s"))
    for n in (big, small):
        result.rows += [
            Row(f"{n:,} schedules", "a wake-up with none due", idle[n], "µs"),
            Row(f"{n:,} schedules", "one tick fired (misfire rule, next tick)", per_tick[n], "µs"),
        ]
    ratio = idle[small] / idle[big]
    result.rows.append(
        Row("both", "idle wake-up: small ÷ big (1.0: flat)", ratio, "ratio", (RATIO_TARGET,))
    )
    result.notes.append("Timetable alone, explicit time; cron in Europe/Paris via croniter.")
    return result
