"""Waits: 100,000 runs waiting at once: the daemon's memory, and how fast they resume.

Every run waits on one waitpoint token. Waiting runs hold no slot (the
environment limit, 200, bounds only the running ones), and only their durable
records stay in memory once ``checkpoint_after`` (5 s by default) has passed. The benchmark triggers
them on a ``keyq serve`` subprocess, waits until all are WAITING, reads the
daemon's peak RSS, then completes the token: every run resumes by replay
(its coroutine was dropped) and completes. The resume rate is the number of
runs over the time from the completion to the last run's end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    trigger_batches,
    wait_for,
    workspace,
)

MEMORY_TARGET = Target("<=", 1024.0, "MiB")
COUNT = "SELECT COUNT(*) FROM runs INDEXED BY runs_status WHERE status = ?"


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    runs = 2_000 if options.quick else 100_000
    with workspace() as tmp:
        config = tmp / "keyq.toml"
        config.write_text('database = "keyq.db"\n\n[log]\nformat = "json"\nlevel = "warning"\n')
        database = database_of(config)
        with ServedDaemon(config) as daemon, keyq.Client(config) as client:
            daemon.start()
            token = client.create_token()
            started = time.perf_counter()
            trigger_batches(client, tasks.WAIT, [{"payload": token.id}] * runs)
            wait_for(lambda: _count(database, "waiting") == runs, 1800, f"{runs} runs waiting")
            to_waiting_s = time.perf_counter() - started
            waiting_rss = daemon.peak_rss_mib()
            resumed = time.perf_counter()
            client.complete_token(token, "go")
            wait_for(lambda: _count(database, "completed") == runs, 1800, "all runs resumed")
            resume_s = time.perf_counter() - resumed
            peak_rss = daemon.peak_rss_mib()
            daemon.stop()
    case = f"{runs:,} runs waiting"
    return Result(
        "waits",
        "Waits: runs waiting at once",
        rows=[
            Row(case, "daemon peak RSS, all waiting", waiting_rss, "MiB", (MEMORY_TARGET,)),
            Row(case, "daemon peak RSS, after all resumed", peak_rss, "MiB", (MEMORY_TARGET,)),
            Row(case, "trigger to all WAITING", runs / to_waiting_s, "runs/s"),
            Row(case, "resume rate (token completed to last run done)", runs / resume_s, "runs/s"),
        ],
        notes=[
            "Each run waits on one token; all resume by replay when it is completed. "
            "At most 200 run at once (the environment limit).",
        ],
        details={"runs": runs, "to_waiting_s": to_waiting_s, "resume_s": resume_s},
    )


def _count(database: Path, status: str) -> int:
    return int(query(database, COUNT, (status,))[0][0])
