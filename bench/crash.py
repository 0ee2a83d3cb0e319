"""The crash campaign: ``kill -9`` the daemon again and again under producers, then check
every promise from the database.

Four producer processes trigger short runs one at a time (5 concurrency keys, 2 at once
per key) while ``keyq serve`` is started, left to work for a moment and killed with
SIGKILL, cycle after cycle; between cycles the producers store their runs directly. Then
one last daemon drains everything, and the campaign checks, from what the producers were
told and from the runs' recorded timelines:

* no acknowledged run is lost, none completed twice, no refused trigger stored, no run
  appears that nobody was told of;
* no key ever had more than its limit RUNNING at once (intervals from the timelines,
  which overstate a killed attempt's, so the check is conservative);
* no slot leaked: after the drain nothing is running, and every key still reaches its
  limit with a fresh batch.

``python -m bench crash`` runs 30 cycles (``--cycles N`` for hundreds), ``--quick`` 3.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keyq
from bench import tasks
from bench.common import (
    REPO_ROOT,
    Options,
    Result,
    Row,
    ServedDaemon,
    Target,
    query,
    subprocess_env,
    wait_for,
    workspace,
    write_config,
)

KEYS, PRODUCERS = 5, 4
FINAL = ("completed", "failed", "canceled")


def run(options: Options, results: Mapping[str, Result]) -> Result:
    cycles = options.cycles or (3 if options.quick else 30)
    rng = random.Random(options.seed)
    with workspace() as ws:
        config = write_config(ws)
        acked, refused = _campaign(config, cycles, rng)
        found = _drain_and_check(config, acked)
    return _result(cycles, acked, refused, found)


def _campaign(config: Path, cycles: int, rng: random.Random) -> tuple[dict[str, Any], set[Any]]:
    """Kill -9 the daemon ``cycles`` times under the producers; what they were told."""
    stop = config.parent / "stop"
    producers = [_producer(config, f"p{i}", stop) for i in range(PRODUCERS)]
    try:
        for _ in range(cycles):
            with ServedDaemon(config) as daemon:
                daemon.start()
                time.sleep(rng.uniform(0.1, 0.6))
                daemon.kill9()
            time.sleep(rng.uniform(0.0, 0.2))  # the producers store their runs directly
    finally:
        stop.touch()
        outputs = [p.communicate(timeout=120)[0] for p in producers]
    acked: dict[str, Any] = {}
    refused: set[Any] = set()
    for name, out in zip((f"p{i}" for i in range(PRODUCERS)), outputs, strict=True):
        for line in out.splitlines():
            word, *rest = line.split(" ", 2)
            if word == "ok":
                acked[rest[0]] = (name, int(rest[1]))
            elif word == "refused":
                refused.add((name, int(rest[0])))
    return acked, refused


def _producer(config: Path, name: str, stop: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.crash_producer", str(config), name, str(KEYS), str(stop)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def _drain_and_check(config: Path, acked: Mapping[str, Any]) -> dict[str, Any]:
    """One daemon drains every run, then a fresh batch shows each key's slots are free."""
    database = config.parent / "keyq.db"
    with ServedDaemon(config) as daemon:
        daemon.start()
        wait_for(lambda: _active(database) == 0, 120, "every run final")
        stale_running = _count(database, "status = 'running'")
        fresh = _fresh_batch(config)
        wait_for(lambda: _active(database) == 0, 60, "the fresh batch final")
        daemon.stop()
    rows = query(database, "SELECT id, payload, concurrency_key, events, seq FROM runs")
    return {"rows": rows, "fresh": set(fresh), "running_after_drain": stale_running}


def _fresh_batch(config: Path) -> list[str]:
    items = [
        {"payload": {"fresh": True, "ms": 200}, "concurrency_key": f"k{k}"}
        for k in range(KEYS)
        for _ in range(2 * tasks.BURST_KEY_LIMIT)
    ]
    with keyq.Client(config) as client:
        return [h.id for h in client.batch_trigger(tasks.BURST, items)]


def _active(database: Path) -> int:
    return _count(database, "status IN ('queued', 'delayed', 'running', 'waiting')")


def _count(database: Path, where: str) -> int:
    (count,) = query(database, f"SELECT COUNT(*) FROM runs WHERE {where}")[0]
    return int(count)


# --- judging ----------------------------------------------------------------------------------


def _result(
    cycles: int, acked: Mapping[str, Any], refused: set[Any], found: Mapping[str, Any]
) -> Result:
    stored = {row[0]: row for row in found["rows"]}
    campaign = {i: r for i, r in stored.items() if i not in found["fresh"]}
    lost = [i for i in acked if i not in stored]
    strangers = [i for i in campaign if i not in acked]
    payloads = {i: json.loads(r[1]) for i, r in campaign.items()}
    refused_stored = [i for i, p in payloads.items() if (p.get("p"), p.get("n")) in refused]
    completions = {i: _completions(r[3]) for i, r in stored.items()}
    doubled = [i for i, n in completions.items() if n > 1]
    unfinished = [i for i, n in completions.items() if n == 0]
    overlap = _peak_per_key(campaign.values())
    fresh_overlap = _peak_per_key(r for i, r in stored.items() if i in found["fresh"])
    limit = tasks.BURST_KEY_LIMIT
    zero = (Target("<=", 0, "count"),)
    rows = [
        Row("campaign", "kill -9 cycles", cycles, "count"),
        Row("campaign", "runs acknowledged", len(acked), "count"),
        Row("campaign", "triggers refused", len(refused), "count"),
        Row("promises", "acknowledged runs lost", len(lost), "count", zero),
        Row("promises", "runs completed twice", len(doubled), "count", zero),
        Row("promises", "runs never finished", len(unfinished), "count", zero),
        Row("promises", "refused triggers stored", len(refused_stored), "count", zero),
        Row("promises", "runs nobody was told of", len(strangers), "count", zero),
        Row(
            "limits",
            f"most RUNNING at once in one key (limit {limit})",
            max(overlap.values(), default=0),
            "count",
            (Target("<=", limit, "count"),),
        ),
        Row(
            "slots",
            "runs left RUNNING after the drain",
            found["running_after_drain"],
            "count",
            zero,
        ),
        Row(
            "slots",
            f"fewest at once in a key, fresh batch after the drain (limit {limit})",
            min(fresh_overlap.values(), default=0),
            "count",
            (Target(">=", limit, "count"),),
        ),
    ]
    notes = [
        f"{PRODUCERS} producers, {KEYS} keys, runs of 5-25 ms; each daemon killed with "
        "SIGKILL 0.1-0.6 s after it was ready.",
        "Overlap is read from the recorded timelines: a killed attempt counts as running "
        "until the next daemon recovered it, so the limit check errs on the strict side.",
    ]
    details = {
        "lost": lost[:20],
        "doubled": doubled[:20],
        "strangers": strangers[:20],
        "refused_stored": refused_stored[:20],
        "overlap_per_key": overlap,
        "fresh_overlap_per_key": fresh_overlap,
    }
    return Result("crash", "Crash campaign: kill -9 under producers", rows, notes, details)


def _completions(events: str) -> int:
    return sum(1 for e in _events(events) if e["to"] == "completed")


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.split("\n") if line]


def _peak_per_key(rows: Any) -> dict[str, int]:
    """Per key, the most runs RUNNING at one instant, from the timelines."""
    points: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for row in rows:
        started: float | None = None
        for event in _events(row[3]):
            if event["to"] == "running":
                started = event["at"]
            elif event["from"] == "running" and started is not None:
                points[row[2]] += [(started, 1), (event["at"], -1)]
                started = None
    peaks: Counter[str] = Counter()
    for key, marks in points.items():
        running = 0
        for _, delta in sorted(marks):  # at equal times an end (-1) sorts first
            running += delta
            peaks[key] = max(peaks[key], running)
    return dict(peaks)
