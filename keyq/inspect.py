"""Reading runs and counts straight from the database, with or without a daemon.

Readers never block the daemon: in WAL mode a reader sees the last committed
state while the daemon keeps writing.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from keyq import db
from keyq.config import Config
from keyq.errors import KeyqError, RunNotFoundError, map_store_errors
from keyq.results import RunResult
from keyq.rows import error_from_json, run_json
from keyq.states import FINAL, RunState

STATUSES = [s.value for s in RunState]


class NoDatabaseError(KeyqError):
    """There is no database at the configured path yet."""


class Inspector:
    """Read-only queries over one database."""

    def __init__(self, config: Config) -> None:
        if not config.database.exists():
            raise NoDatabaseError(
                f"no keyq database at {config.database} (nothing triggered yet, or another "
                "--config / $KEYQ_CONFIG / ./keyq.toml points elsewhere)"
            )
        self._conn = db.connect(config.database, config.durability, config.lock_timeout_s)
        self._conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self._conn.close()

    def get_run(self, run_id: str, *, events: bool = True) -> dict[str, Any]:
        """The run's public JSON (SPEC §9), with its timeline."""
        with map_store_errors("reading a run"):
            row = self._conn.execute(db.QUERIES["get_run"], (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return run_json(row, events=events)

    def result(self, run_id: str) -> RunResult | None:
        """How the run ended, or None while it is still active."""
        row = self._conn.execute(db.QUERIES["get_run_outcome"], (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        status = RunState(row["status"])
        if status not in FINAL:
            return None
        return RunResult.from_stored(run_id, status, row["result"], error_from_json(row["error"]))

    def list_runs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        key: str | None = None,
        task: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Runs matching every given filter, newest first."""
        params: list[Any] = [queue, key, task, tag, limit]
        query = "list_runs"
        if status is not None:
            query = "list_runs_by_status"
            params.append(status)
        with map_store_errors("listing runs"):
            rows = self._conn.execute(db.QUERIES[query], params).fetchall()
        return [run_json(row) for row in rows]

    def stats(self, burst_limit: int) -> dict[str, Any]:
        """Counts by state in total, per queue and per active key, and a capacity line."""
        total: dict[str, int] = dict.fromkeys(STATUSES, 0)
        queues: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        keys: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(STATUSES, 0)
        )
        with map_store_errors("counting runs"):
            rows = self._conn.execute(db.QUERIES["count_by_bucket"]).fetchall()
        for queue, key, status, count in rows:
            total[status] += count
            queues[queue][status] += count
            if key is not None:
                keys[(queue, key)][status] += count
        active_keys = [
            {"queue": q, "concurrency_key": k, **counts}
            for (q, k), counts in sorted(keys.items())
            if any(counts[s] for s in ("queued", "delayed", "running", "waiting"))
        ]
        return {
            "total": total,
            "queues": dict(sorted(queues.items())),
            "keys": active_keys,
            "capacity": {
                "running": total["running"],
                "limit": burst_limit,
                "queued": total["queued"],
            },
            "message": capacity_message(total["running"], burst_limit, total["queued"]),
        }


def capacity_message(running: int, limit: int, queued: int) -> str:
    return f"Running {running} of {limit}; {queued} queued"
