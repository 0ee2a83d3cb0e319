"""Latency: trigger → start with the daemon idle, ``keyq serve`` running as a subprocess.

Each trigger waits for its run to finish before the next one, so every trigger
lands on an idle daemon. The trigger time is ``time.monotonic_ns()`` in this
process just before the call; the start time is ``time.monotonic_ns()`` read by
the task as its first statement and returned as the run's result
(CLOCK_MONOTONIC is one clock for all processes on Linux).

- client: ``keyq.Client.trigger`` from this process. The daemon being up, the
  run is handed to it over its control socket; it commits the run's INSERT and
  RUNNING transition together (one fsync with ``durability = "full"``),
  answers, and starts the task (keyq/handoff.py). The trigger call's own
  duration, reported too, therefore includes the daemon's commit.
- CLI: ``python -m keyq trigger`` as a subprocess, so its figure includes the
  interpreter's start-up and keyq's imports.

The daemon logs at keyq's default level, "info" (two JSON lines per run, to a file).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keyq
from bench import tasks
from bench.common import (
    APP,
    REPO_ROOT,
    Options,
    Result,
    Row,
    ServedDaemon,
    Target,
    keyq_command,
    subprocess_env,
    summary_ms,
    workspace,
    write_config,
)

P50_TARGET = Target("<=", 1.0, "ms")
P99_TARGET = Target("<=", 1.5, "ms")
IDLE_S = 0.002  # a pause before each trigger, so the daemon has finished its log writes


@dataclass(frozen=True, slots=True)
class Sizes:
    warmup: int
    client: int
    cli: int
    producers: int  # the concurrent case: processes triggering at once ...
    per_producer: int  # ... each this many runs, one at a time


def sizes(options: Options) -> Sizes:
    return Sizes(10, 100, 5, 4, 50) if options.quick else Sizes(50, 1000, 30, 8, 500)


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    s = sizes(options)
    result = Result("latency", "Latency: trigger → start, daemon idle, sequential triggers")
    for durability in ("full", "normal"):
        with workspace() as tmp:
            config = write_config(tmp, durability=durability, log_level="info")
            with ServedDaemon(config) as daemon, keyq.Client(config) as client:
                daemon.start()
                client_samples(client, s.warmup)
                starts, calls = client_samples(client, s.client)
                full = durability == "full"
                cli = cli_samples(config, client, s.cli) if full else None
                many = concurrent_samples(config, s.producers, s.per_producer) if full else None
                daemon.stop()
        _client_rows(result, durability, starts, calls)
        if cli is not None:
            _cli_rows(result, *cli)
        if many is not None:
            _concurrent_rows(result, s.producers, *many)
    result.notes += [
        f"{s.client:,} client triggers per durability after {s.warmup} warm-up triggers; "
        f"{s.cli} CLI triggers (full durability).",
        "The CLI figure includes starting a Python interpreter and importing keyq.",
        f"Concurrent: {s.producers} processes each trigger {s.per_producer:,} no-op runs "
        "one at a time, all at once, while the daemon also runs them; rate = all "
        "triggers / (last call's return - start).",
    ]
    return result


def client_samples(client: keyq.Client, count: int) -> tuple[list[int], list[int]]:
    """(trigger → start, duration of the trigger call), in ns, for ``count`` triggers."""
    starts, calls = [], []
    for i in range(count):
        time.sleep(IDLE_S)
        before = time.monotonic_ns()
        handle = client.trigger(tasks.STAMP, i)
        returned = time.monotonic_ns()
        started = client.wait(handle.id, timeout=30).unwrap()["start_ns"]
        starts.append(started - before)
        calls.append(returned - before)
    return starts, calls


def cli_samples(config: Path, client: keyq.Client, count: int) -> tuple[list[int], list[int]]:
    """(trigger → start, CLI process wall time), in ns, for ``count`` CLI triggers."""
    argv = keyq_command("trigger", tasks.STAMP, "0", "--config", str(config), "--app", APP)
    starts, walls = [], []
    for _ in range(count):
        time.sleep(IDLE_S)
        before = time.monotonic_ns()
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
        )
        returned = time.monotonic_ns()
        started = client.wait(done.stdout.strip(), timeout=30).unwrap()["start_ns"]
        starts.append(started - before)
        walls.append(returned - before)
    return starts, walls


def concurrent_samples(config: Path, processes: int, per: int) -> tuple[list[int], float]:
    """(every trigger call's duration in ns, triggers per second) of ``processes``
    producer processes triggering at once (bench/producer.py)."""
    argv = [sys.executable, "-m", "bench.producer", str(config), str(per)]
    producers = [
        subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for p in producers:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"
        started = time.perf_counter()
        for p in producers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=600)[0] for p in producers]
        elapsed = time.perf_counter() - started
    finally:
        for p in producers:
            if p.poll() is None:
                p.kill()
                p.communicate()
    calls = [ns for out in outputs for ns in json.loads(out)]
    return calls, len(calls) / elapsed


def _concurrent_rows(result: Result, processes: int, calls: list[int], rate: float) -> None:
    case = f"{processes} producers at once, full"
    call = summary_ms(calls)
    result.rows += [
        Row(case, "triggers per second", rate, "runs/s"),
        Row(case, "the trigger call p50", call["p50"], "ms"),
        Row(case, "the trigger call p99", call["p99"], "ms"),
    ]
    result.details[case] = {"rate": rate, "trigger_call_ms": call}


def _client_rows(result: Result, durability: str, starts: list[int], calls: list[int]) -> None:
    case = f"client, {durability}"
    start, call = summary_ms(starts), summary_ms(calls)
    full = durability == "full"
    result.rows += [
        Row(case, "trigger → start p50", start["p50"], "ms", (P50_TARGET,) if full else ()),
        Row(case, "trigger → start p95", start["p95"], "ms"),
        Row(case, "trigger → start p99", start["p99"], "ms", (P99_TARGET,) if full else ()),
        Row(case, "the trigger call (returns once stored) p50", call["p50"], "ms"),
        Row(case, "the trigger call p99", call["p99"], "ms"),
    ]
    result.details[case] = {"trigger_to_start_ms": start, "trigger_call_ms": call}
    result.details[case]["samples_ns"] = starts


def _cli_rows(result: Result, starts: list[int], walls: list[int]) -> None:
    start, wall = summary_ms(starts), summary_ms(walls)
    result.rows += [
        Row("CLI, full", "trigger → start p50 (incl. interpreter start-up)", start["p50"], "ms"),
        Row("CLI, full", "trigger → start p99 (incl. interpreter start-up)", start["p99"], "ms"),
        Row("CLI, full", "`keyq trigger` process wall time p50", wall["p50"], "ms"),
    ]
    result.details["CLI, full"] = {"trigger_to_start_ms": start, "process_wall_ms": wall}
