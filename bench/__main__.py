"""keyq's benchmark suite: ``python -m bench COMMAND [--quick] [--json PATH]``.

COMMAND is ``all`` or one of ceiling, throughput, latency, scale, fairness,
burst, waits, ratelimit, schedules, crash (``python -m bench --help`` lists them).

Prints the machine, then a Markdown table per benchmark (figure, target, ✓/✗,
share of the SQLite ceiling where it applies), and writes everything as JSON
(``--json``, default ``./bench-results.json``, rewritten after each benchmark).
``--quick`` shrinks every size: ``python -m bench all --quick`` is CI's smoke
test and takes well under a minute on 2 cores. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    burst,
    ceiling,
    crash,
    fairness,
    latency,
    ratelimit,
    scale,
    schedules,
    throughput,
    waits,
)
from bench.common import Options, Result, machine, render

Runner = Callable[[Options, Mapping[str, Result]], Result]
RUNNERS: dict[str, Runner] = {
    "ceiling": ceiling.run,
    "throughput": throughput.run,
    "latency": latency.run,
    "scale": scale.run,
    "fairness": fairness.run,
    "burst": burst.run,
    "waits": waits.run,
    "ratelimit": ratelimit.run,
    "schedules": schedules.run,
    "crash": crash.run,
}
NEEDS = {"throughput": ("ceiling",)}  # ratios to the ceiling come from the same run
HELP = {
    "all": "every benchmark, in this order",
    "ceiling": "SQLite's own rate for keyq's statements (the yardstick)",
    "throughput": "bulk-triggered no-op runs drained end to end (runs the ceiling too)",
    "latency": "trigger → start with the daemon idle, client and CLI",
    "scale": "a 1M-run backlog: memory, recovery time, dispatch rate",
    "fairness": "one heavy key against 100 light keys on a small limit",
    "burst": "10 keys × 50 runs of 20 ms, 2 per key, 20 overall",
    "waits": "100,000 runs waiting at once: memory and resume rate",
    "ratelimit": "cost per start with 100,000 rate-limited runs queued, against 1,000",
    "schedules": "10,000 cron schedules: an idle wake-up and a fired tick, against 100",
    "crash": "kill -9 the daemon under producers, cycle after cycle; check every promise",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    common.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write the results (default: ./bench-results.json)",
    )
    common.add_argument("--cycles", type=int, help="crash: how many kill -9 cycles (30)")
    common.add_argument("--seed", type=int, help="seed what is chosen at random")
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in HELP.items():
        commands.add_parser(name, parents=[common], help=text, description=text)
    return parser.parse_args(argv)


def selected(command: str) -> list[str]:
    if command == "all":
        return list(RUNNERS)
    return [*NEEDS.get(command, ()), command]


def render_machine(info: Mapping[str, Any], quick: bool) -> str:
    lines = [f"# keyq benchmarks{' (--quick)' if quick else ''}", "", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    return "\n".join(lines) + "\n"


def timed(name: str, options: Options, results: Mapping[str, Result]) -> Result:
    """Run one benchmark, noting its wall time and the load around it (other work = noise)."""
    load_before, started = os.getloadavg()[0], time.perf_counter()
    result = RUNNERS[name](options, results)
    wall, load_after = time.perf_counter() - started, os.getloadavg()[0]
    result.details |= {"wall_s": wall, "load_1min": [load_before, load_after]}
    result.notes.append(
        f"Took {wall:.1f} s; 1-minute load average {load_before:.2f} before, "
        f"{load_after:.2f} after."
    )
    return result


def write(path: Path, report: dict[str, Any], results: Mapping[str, Result]) -> None:
    report["results"] = {name: r.to_json() for name, r in results.items()}
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    options = Options(quick=args.quick, cycles=args.cycles, seed=args.seed)
    report: dict[str, Any] = {
        "command": ["python -m bench", *(argv if argv is not None else sys.argv[1:])],
        "quick": options.quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    print(render_machine(report["machine"], options.quick), flush=True)
    results: dict[str, Result] = {}
    for name in selected(args.command):
        results[name] = timed(name, options, results)
        print(render(results[name]) + "\n", flush=True)
        write(args.json, report, results)
    print(f"Results written to {args.json}")


if __name__ == "__main__":
    main()
