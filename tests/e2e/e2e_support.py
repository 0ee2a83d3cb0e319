"""E2E-tier helpers: the task module, and reading runs back from a real `keyq serve`.

The project itself (keyq.toml, daemons, clients, the CLI) is tests/project.py's Project,
shared by every tier.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from project import DaemonProcess, Project, wait_until

import keyq

E2E_DIR = Path(__file__).resolve().parent
TASK_MODULE = "e2e_tasks"
FINAL = ("completed", "failed", "canceled")
__all__ = ["DaemonProcess", "Project", "wait_until"]


def e2e_project(root: Path) -> Project:
    """A project whose daemons run the e2e task module."""
    project = Project(root, TASK_MODULE, import_path=(E2E_DIR,))
    project.write_config()
    return project


def subprocess_env() -> dict[str, str]:
    """The environment of a keyq subprocess of this tier: e2e_tasks importable, no stray config."""
    env = {k: v for k, v in os.environ.items() if k != "KEYQ_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(E2E_DIR), env.get("PYTHONPATH")]))
    return env


def ts(iso: str) -> float:
    """An ISO 8601 UTC time from the run JSON as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals covering one instant."""
    points = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    running = peak = 0
    for _, delta in sorted(points):  # at equal times an end (-1) sorts before a start
        running += delta
        peak = max(peak, running)
    return peak


# --- reading runs ----------------------------------------------------------------------------


def runs_by_status(client: keyq.Client, **filters: Any) -> dict[str, list[dict[str, Any]]]:
    """Every run matching ``filters``, grouped by status."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in client.list_runs(limit=100_000, **filters):
        grouped.setdefault(run["status"], []).append(run)
    return grouped


def wait_final(client: keyq.Client, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Wait until every run in ``ids`` is final; return them (with events) in ``ids`` order."""
    pending = set(ids)
    seen: dict[str, str] = {}

    def done() -> bool:
        for run_id in list(pending):
            seen[run_id] = client.get_run(run_id)["status"]
            if seen[run_id] in FINAL:
                pending.discard(run_id)
        return not pending

    def what() -> str:
        statuses = sorted(seen[i] for i in pending)
        return f"{len(pending)} of {len(ids)} runs not final; this client reads {statuses}"

    wait_until(done, timeout, what)
    return [client.get_run(run_id) for run_id in ids]
