"""Scale: 1,000,000 queued runs over 100,000 keys, against a 1,000-run backlog.

The big backlog is bulk-triggered through ``keyq.Client`` with no daemon running
and its queue paused (``Client.pause``, stored in the database). Then:

- recovery: ``keyq serve`` is started on it several times (each start is a
  restart on the same database: the previous process drained on SIGTERM).
  Recovery time is process start → ``READY=1`` on ``$NOTIFY_SOCKET``: the
  daemon has loaded every active run, rebuilt its state and serves. It includes
  the interpreter's start-up and imports.
- memory: the peak RSS (``VmHWM`` in ``/proc/PID/status``) of each daemon.
- dispatch rate: in a running, warmed-up daemon, a *window* resumes the queue,
  waits for N = 500 completions, pauses the queue again and waits until
  nothing runs. Its rate is N / (N-th completion − first start), from the
  ``started_at``/``finished_at`` of the runs started in the window. The same
  windows run on a 1,000-run backlog (over 100 keys, 10 runs per key as in the
  big one), re-filled before each window. Same N, same ramp from zero running,
  and in both the N-th completion comes while the backlog is not yet empty (so
  neither figure includes the pipeline running dry): the two medians are
  comparable, and their ratio is the cost of choosing at 1M. The two daemons
  run side by side and their windows alternate, so the machine's noise (large
  on a shared 2-core VM) hits both alike.
- sustained: one longer window (20,000 completions) on the big backlog.

The daemon runs with the default limits (200 base, 400 burst: one queue runs
at most 200 at once), full durability, logs at "warning".
"""

from __future__ import annotations

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
    noop_items,
    query,
    trigger_batches,
    wait_for,
    workspace,
    write_config,
)

RSS_TARGET = Target("<=", 1024, "MiB")
RECOVERY_TARGET = Target("<=", 15, "s")
RATIO_TARGET = Target(">=", 0.80, "ratio")
QUEUE = "bench-noop"  # the queue of tasks.NOOP
MEASURED = 500  # completions per window: half the small backlog


@dataclass(frozen=True, slots=True)
class Sizes:
    backlog: int
    keys: int
    small: int
    small_keys: int
    starts: int  # daemon starts on the big backlog (recovery, memory)
    windows: int  # dispatch-rate windows per backlog
    sustained: int  # completions in the long window


def sizes(options: Options) -> Sizes:
    if options.quick:
        return Sizes(20_000, 2_000, 1_000, 100, 1, 7, 5_000)
    return Sizes(1_000_000, 100_000, 1_000, 100, 3, 21, 20_000)


@dataclass(frozen=True, slots=True)
class Start:
    """One ``keyq serve`` process on a backlog: its recovery time and peak memory."""

    ready_s: float
    peak_rss_mib: float


@dataclass(frozen=True, slots=True)
class Windows:
    """Dispatch-rate windows, alternating between the big and the small backlog."""

    big: list[float]
    small: list[float]
    sustained: float
    big_start: Start
    small_start: Start


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    s = sizes(options)
    with workspace() as big_dir, workspace() as small_dir:
        big, small = write_config(big_dir), write_config(small_dir)
        insert_rate = fill(big, s.backlog, s.keys)
        fill(small, 0, 0)
        starts = [restart(big) for _ in range(s.starts - 1)]
        windows = compare(big, small, s)
    return _result(s, [*starts, windows.big_start], windows, insert_rate)


def fill(config: Path, runs: int, keys: int) -> float:
    """Pause the queue, then trigger ``runs`` runs over ``keys`` keys; the trigger rate."""
    with keyq.Client(config) as client:
        client.pause(QUEUE)
        if not runs:
            return 0.0
        items = noop_items(0, runs, keys)
        return runs / trigger_batches(client, tasks.NOOP, items, batch=10_000)


def restart(config: Path) -> Start:
    """Start ``keyq serve`` on the backlog, note its recovery time and memory, stop it."""
    with ServedDaemon(config) as daemon:
        ready_s = daemon.start()
        start = Start(ready_s, daemon.peak_rss_mib())
        daemon.stop(timeout_s=300)
    return start


def compare(big: Path, small: Path, s: Sizes) -> Windows:
    """Both daemons up; windows alternate between them so that noise hits both alike."""
    big_db, small_db = database_of(big), database_of(small)
    with (
        ServedDaemon(big) as big_daemon,
        ServedDaemon(small) as small_daemon,
        keyq.Client(big) as big_client,
        keyq.Client(small) as small_client,
    ):
        big_ready, small_ready = big_daemon.start(), small_daemon.start()
        big_rates, small_rates = [], []
        for i in range(s.windows):
            small_client.batch_trigger(tasks.NOOP, noop_items(i * s.small, s.small, s.small_keys))
            small_rates.append(window(small_client, small_db, MEASURED))
            big_rates.append(window(big_client, big_db, MEASURED))
        sustained = window(big_client, big_db, s.sustained)
        big_start = Start(big_ready, big_daemon.peak_rss_mib())
        small_start = Start(small_ready, small_daemon.peak_rss_mib())
        big_daemon.stop(timeout_s=300)
        small_daemon.stop()
    return Windows(big_rates, small_rates, sustained, big_start, small_start)


def window(client: keyq.Client, database: Path, completions: int) -> float:
    """Resume the queue until ``completions`` runs completed, pause it; the rate."""
    mark = time.time()  # the daemon stamps started_at with the same clock
    client.pause(QUEUE, paused=False)
    wait_for(
        lambda: _count(database, "completed", mark) >= completions,
        completions / 100 + 60,
        f"{completions} runs completed",
        poll_s=0.05,
    )
    client.pause(QUEUE)
    wait_for(lambda: _count(database, "running", 0) == 0, 60, "the window's runs finished")
    return _rate(database, mark, completions)


def _count(database: Path, status: str, since: float) -> int:
    sql = "SELECT COUNT(*) FROM runs WHERE status = ? AND started_at >= ?"
    return int(query(database, sql, (status, since))[0][0])


def _rate(database: Path, since: float, n: int) -> float:
    """n / (n-th completion − first start), over runs started since ``since``."""
    ((first,),) = query(
        database, "SELECT MIN(started_at) FROM runs WHERE started_at >= ?", (since,)
    )
    sql = (
        "SELECT finished_at FROM runs WHERE status = 'completed' AND started_at >= ? "
        "ORDER BY finished_at LIMIT 1 OFFSET ?"
    )
    ((nth,),) = query(database, sql, (since, n - 1))
    return float(n / (nth - first))


def _result(s: Sizes, starts: list[Start], w: Windows, insert_rate: float) -> Result:
    big_case = f"{s.backlog:,} queued, {s.keys:,} keys"
    small_case = f"{s.small:,} queued, {s.small_keys:,} keys"
    big_rate, small_rate = statistics.median(w.big), statistics.median(w.small)
    rate = f"dispatch rate, first {MEASURED:,} completions, median of {s.windows} windows"
    readies = [b.ready_s for b in starts]
    rows = [
        Row(
            big_case,
            f"peak RSS (VmHWM), worst of {s.starts} daemon start(s)",
            max(b.peak_rss_mib for b in starts),
            "MiB",
            (RSS_TARGET,),
        ),
        Row(
            big_case,
            f"start → READY (recovery), median of {s.starts}",
            statistics.median(readies),
            "s",
            (RECOVERY_TARGET,),
        ),
        Row(big_case, "start → READY (recovery), worst", max(readies), "s", (RECOVERY_TARGET,)),
        Row(big_case, rate, big_rate, "runs/s"),
        Row(small_case, rate, small_rate, "runs/s"),
        Row("big / small", "dispatch rate ratio", big_rate / small_rate, "ratio", (RATIO_TARGET,)),
        Row(big_case, f"sustained rate, {s.sustained:,} completions", w.sustained, "runs/s"),
        Row(small_case, "peak RSS (VmHWM)", w.small_start.peak_rss_mib, "MiB"),
        Row(small_case, "start → READY", w.small_start.ready_s, "s"),
        Row(
            big_case, "backlog insert rate (batch_trigger, 10,000 per call)", insert_rate, "runs/s"
        ),
    ]
    notes = [
        "Start → READY includes the interpreter's start-up and imports.",
        f"Window rates, big: {_list(w.big)}; small: {_list(w.small)} runs/s. Windows last "
        "~0.1 s each, so single windows are noisy on this machine: compare the medians.",
    ]
    details = {"sizes": asdict(s), "starts": [asdict(b) for b in starts], "windows": asdict(w)}
    return Result("scale", f"Scale: {s.backlog:,} queued runs", rows, notes, details)


def _list(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)
