"""No-op end-to-end throughput: bulk-trigger N runs, then time the daemon draining them.

    python -m bench.throughput [--runs 20000] [--keys 0] [--durability full|normal]

Runs are triggered with the daemon stopped (``keyq.Client.batch_trigger``, batches
of 1,000), so the trigger rate and the drain rate are measured apart. Then an
in-process ``keyq.Daemon`` starts, and the end-to-end rate is taken from the
first start to the last completion as recorded in the ``runs`` table. Daemon
logs are at "warning": the figure is the engine's, not the log's. In the suite
(``python -m bench throughput``) each rate is also given as a share of the
SQLite ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

import keyq
from bench import tasks
from bench.common import (
    Options,
    Result,
    Row,
    Target,
    noop_items,
    query,
    trigger_batches,
    workspace,
    write_config,
)
from keyq.config import Config, LogConfig, load_config
from keyq.logs import configure_logging

TARGET_RATE = Target(">=", 25_000, "runs/s")
TARGET_SHARE = Target(">=", 0.20, "ratio", of_ceiling=True)
CASES = (("full", 0), ("full", 10_000), ("normal", 0), ("normal", 10_000))


@dataclass(frozen=True, slots=True)
class Measurement:
    runs: int
    keys: int
    durability: str
    trigger_rate: float
    end_to_end_rate: float
    drain_wall_s: float


def measure(runs: int, keys: int, durability: str) -> Measurement:
    """Trigger ``runs`` no-op runs over ``keys`` keys (0: none), then drain them."""
    configure_logging(LogConfig(format="json", level="warning"))
    with workspace() as tmp:
        config = load_config(write_config(tmp, durability=durability))
        items = noop_items(0, runs, keys)
        with keyq.Client(config) as client:
            trigger_s = trigger_batches(client, tasks.NOOP, items)
        wall = time.perf_counter()
        anyio.run(drain, config)
        wall = time.perf_counter() - wall
        rate = end_to_end_rate(config.database, runs)
    return Measurement(runs, keys, durability, runs / trigger_s, rate, wall)


async def drain(config: Config) -> None:
    """Run an in-process daemon until nothing is queued or running."""
    async with keyq.Daemon(config, control_socket=False) as daemon:
        while (stats := daemon.statistics()).queued or stats.running:
            await daemon.until_idle()


def end_to_end_rate(database: Path, runs: int) -> float:
    """Runs per second from the first start to the last completion, as stored."""
    ((first, last, done),) = query(
        database,
        "SELECT MIN(started_at), MAX(finished_at), COUNT(*) FROM runs WHERE status = 'completed'",
    )
    if done != runs:
        raise RuntimeError(f"only {done} of {runs} runs completed")
    return float(runs / (last - first))


# --- in the suite ------------------------------------------------------------------------------


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    runs = 5_000 if options.quick else 100_000
    ceiling: dict[str, float] = earlier["ceiling"].details["rates"]
    result = Result("throughput", f"Throughput: {runs:,} no-op runs, bulk-triggered then drained")
    for durability, keys in CASES:
        m = measure(runs, min(keys, runs), durability)
        case = f"{durability}, {f'{m.keys:,} keys' if m.keys else 'no keys'}"
        targets = (TARGET_RATE, TARGET_SHARE) if durability == "full" else ()
        share = m.end_to_end_rate / ceiling[durability]
        result.rows += [
            Row(case, "trigger (batch_trigger, 1,000 per call)", m.trigger_rate, "runs/s"),
            Row(
                case,
                "end to end (first start → last completion)",
                m.end_to_end_rate,
                "runs/s",
                targets,
                share,
            ),
            Row(case, "drain wall time (daemon start → idle)", m.drain_wall_s, "s"),
        ]
        result.details[case] = {**asdict(m), "of_ceiling": share}
    result.notes.append("In-process keyq.Daemon, no control socket, logs at warning level.")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=0, help="concurrency keys (0: none)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    m = measure(args.runs, args.keys, args.durability)
    print("| runs | keys | durability | trigger runs/s | end-to-end runs/s | drain wall s |")
    print("|---:|---:|---|---:|---:|---:|")
    print(
        f"| {m.runs} | {m.keys} | {m.durability} | {m.trigger_rate:,.0f} "
        f"| {m.end_to_end_rate:,.0f} | {m.drain_wall_s:.2f} |"
    )


if __name__ == "__main__":
    main()
