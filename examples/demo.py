"""The README's first command: keyq running the example app, with the per-user limit visible.

    python -m examples.demo [--users 5]

It starts ``keyq serve --app examples.tasks`` as a separate process (the way
systemd would), triggers a burst of runs for several users from this process
through ``keyq.Client`` (the way a web app would), shows a live table of what
each user has running and queued, and checks at the end, from the recorded
timelines, that no user ever had more than 2 runs at once on a queue.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import keyq
from examples import tasks as app
from keyq.store.instance import daemon_running

QUEUES = ("analysis", "reports", "background")
LIMIT = 2


def burst(client: keyq.Client, users: int) -> list[str]:
    """Each user asks for a lot of work at once: more than their limit allows."""
    ids: list[str] = []
    for u in range(1, users + 1):
        user = f"user-{u}"
        workouts = [{"payload": {"workoutId": f"w-{u}-{i}"}, "concurrency_key": user}
                    for i in range(5)]  # fmt: skip
        ids += [h.id for h in client.batch_trigger(app.analyze_workout, workouts)]
        nights = [{"payload": {"night": i}, "concurrency_key": user} for i in range(2)]
        ids += [h.id for h in client.batch_trigger(app.score_sleep, nights)]
        week = {"week": 47, "workouts": [f"w-{u}-report-{i}" for i in range(2)]}
        ids.append(client.trigger(app.weekly_report, week, concurrency_key=user).id)
        ids.append(client.trigger(app.export_csv, {"format": "csv"}, concurrency_key=user).id)
        for name in (app.sync_calendar, app.send_digest):
            ids.append(client.trigger(name, {"user": user}, concurrency_key=user).id)
    return ids


def snapshot(client: keyq.Client, ids: list[str]) -> dict[str, Any]:
    """Per user: running, waiting for a slot, done; plus every run's timeline."""
    runs = [client.get_run(run_id) for run_id in ids]
    children = client.list_runs(task="analyze-workout", limit=10_000)
    known = {r["id"] for r in runs}
    runs += [r | {"events": client.get_run(r["id"])["events"]} for r in children
             if r["id"] not in known and r["parent_id"]]  # fmt: skip
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in runs:
        status = r["status"]
        column = "done" if status in ("completed", "failed", "canceled") else status
        rows[r["concurrency_key"]][column] += 1
        if status == "running":
            rows[r["concurrency_key"]][f"running:{r['queue']}"] += 1
    return {"rows": rows, "runs": runs}


def render(snap: dict[str, Any], elapsed: float, peaks: dict[tuple[str, str], int]) -> str:
    lines = [f"keyq demo  {elapsed:5.1f}s   limit: {LIMIT} running per user per queue", ""]
    header = f"{'user':<8} " + " ".join(f"{q:>10}" for q in QUEUES)
    lines.append(header + f" {'queued':>7} {'waiting':>8} {'delayed':>8} {'done':>5}")
    for user, row in sorted(snap["rows"].items()):
        running = " ".join(f"{row.get('running:' + q, 0):>10}" for q in QUEUES)
        lines.append(
            f"{user:<8} {running} {row.get('queued', 0):>7} {row.get('waiting', 0):>8} "
            f"{row.get('delayed', 0):>8} {row.get('done', 0):>5}"
        )
    top = max(peaks.values(), default=0)
    lines += ["", f"most runs one user has had running on one queue so far: {top}"]
    return "\n".join(lines)


def peak_overlap(runs: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """From the timelines: the most RUNNING spans at once per (user, queue)."""
    edges: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for r in runs:
        group = (r["concurrency_key"], r["queue"])
        start = None
        for e in r["events"]:
            at = datetime.fromisoformat(e["at"]).timestamp()
            if e["to"] == "running":
                start = at
            elif start is not None:
                edges[group] += [(start, 1), (at, -1)]
                start = None
        if start is not None:
            edges[group].append((start, 1))
    peaks = {}
    for group, points in edges.items():
        current = peak = 0
        for _, step in sorted(points):  # an end sorts before a start at the same instant
            current += step
            peak = max(peak, current)
        peaks[group] = peak
    return peaks


def start_daemon(config: keyq.Config, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "keyq", "serve", "--app", "examples.tasks"],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 15
    while not daemon_running(config.database):
        if daemon.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the daemon did not start; see {log_path}")
        time.sleep(0.05)
    return daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5)
    args = parser.parse_args()
    config = keyq.load_config()
    log_path = Path("keyq-demo.log")
    print(f"starting `keyq serve --app examples.tasks` on {config.database} (log: {log_path})")
    daemon = start_daemon(config, log_path)
    tty = sys.stdout.isatty()
    try:
        with keyq.Client(config) as client:
            started = time.monotonic()
            ids = burst(client, args.users)
            print(f"triggered {len(ids)} runs for {args.users} users\n")
            while True:
                snap = snapshot(client, ids)
                peaks = peak_overlap(snap["runs"])
                view = render(snap, time.monotonic() - started, peaks)
                print("\x1b[H\x1b[J" + view if tty else view + "\n", flush=True)
                if all(r["status"] in ("completed", "failed", "canceled") for r in snap["runs"]):
                    break
                time.sleep(0.5 if tty else 2.0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    summary(snap["runs"], peaks)


def summary(runs: list[dict[str, Any]], peaks: dict[tuple[str, str], int]) -> None:
    completed = sum(r["status"] == "completed" for r in runs)
    top = max(peaks.values())
    print(f"{completed} of {len(runs)} runs completed (children of weekly-report included).")
    print(f"most runs any user had running on one queue at once: {top} (limit {LIMIT}).")
    keyq_cli = Path(sys.executable).parent / "keyq"
    print(f"try: {keyq_cli} stats   (also: runs list --key user-1, runs show ID, queues)")
    if top > LIMIT or completed != len(runs):
        sys.exit("unexpected: see keyq-demo.log")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
