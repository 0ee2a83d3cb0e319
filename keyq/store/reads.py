"""Reading runs and counts straight from the database, with or without a daemon.

Readers never block the daemon: in WAL mode a reader sees the last committed
state while the daemon keeps writing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from keyq.config import Config
from keyq.core.limits import QueueLimit
from keyq.core.ratelimit import Rate, parse_rate
from keyq.core.settings import QueueSetting, queue_settings
from keyq.core.states import ACTIVE_ORDER, FINAL, RunState
from keyq.errors import KeyqError, RunNotFoundError
from keyq.registry import Queue
from keyq.results import RunResult
from keyq.store import db, schedule_rows
from keyq.store.codec import error_from_json, iso, run_json
from keyq.store.errors import map_store_errors

STATUSES = [s.value for s in RunState]
ACTIVE_NAMES = tuple(s.value for s in ACTIVE_ORDER)


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
        self._conn = db.connect_for_reading(config.database, config.lock_timeout_s)
        self._conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self._conn.close()

    def get_run(self, run_id: str, *, events: bool = True) -> dict[str, Any]:
        """The run's public JSON (SPEC §9), with its timeline."""
        with map_store_errors("reading a run"):
            row = self._conn.execute(db.QUERIES["get_run"], (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        data = run_json(row, events=events)
        if events:  # the full record (`runs show`): its waitpoint and its children too
            data["waitpoint"] = json.loads(row["waitpoint"]) if row["waitpoint"] else None
            children = self._conn.execute(db.QUERIES["select_children"], (run_id,)).fetchall()
            data["children"] = [{"id": c[0], "task": c[1], "status": c[2]} for c in children]
        return data

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
            if any(counts[s] for s in ACTIVE_NAMES)
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

    def queues(self, code: Mapping[str, Queue], config: Config, now: float) -> list[dict[str, Any]]:
        """Every known queue: effective limits and rates (code < config < runtime), pause,
        active counts, and the use of its total rate at ``now``."""
        with map_store_errors("reading queues"):
            stored = self._conn.execute(db.QUERIES["select_queue_settings"]).fetchall()
            counts = self._conn.execute(db.QUERIES["count_active_by_queue"]).fetchall()
        settings = queue_settings(code, config.queues, [dict(r) for r in stored])
        active: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ACTIVE_NAMES, 0))
        for queue, status, count in counts:
            active[queue][status] = count
        names = sorted(set(settings) | set(active))
        unset = QueueSetting(QueueLimit(), False)
        rows = []
        for name in names:
            setting = settings.get(name, unset)
            limit = setting.limit
            starts, next_at = self._rate_use(name, None, limit.total_rate, now, key_wide=False)
            rows.append(
                {
                    "queue": name,
                    "concurrency_limit": limit.concurrency_limit,
                    "total_limit": limit.total_limit,
                    "rate_limit": _text(limit.rate),
                    "rate_limit_total": _text(limit.total_rate),
                    "paused": setting.paused,
                    "total_rate_starts": starts,
                    "total_rate_next_start_at": iso(next_at),
                    **active[name],
                }
            )
        return rows

    def schedules(self, now: float) -> list[dict[str, Any]]:
        """Every schedule the daemon was given, gone ones included (``schedules list``)."""
        with map_store_errors("reading schedules"):
            return schedule_rows.listing(self._conn, now)

    def keys(
        self, queue: str, key_limit: int | None, key_rate: Rate | None, now: float
    ) -> list[dict[str, Any]]:
        """Active keys of one queue with their counts, whether each is at its limit, and
        the use of its rate at ``now`` (``key_rate``: the queue's, unless a key has its own)."""
        with map_store_errors("reading keys"):
            counts = self._conn.execute(db.QUERIES["count_active_by_key"], (queue,)).fetchall()
            overrides = {
                r["concurrency_key"]: r
                for r in self._conn.execute(db.QUERIES["select_key_settings"]).fetchall()
                if r["queue"] == queue
            }
        keys: dict[str | None, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ACTIVE_NAMES, 0))
        for key, status, count in counts:
            keys[key][status] = count
        rows = []
        for key, c in sorted(keys.items(), key=lambda kv: (-kv[1]["queued"], str(kv[0]))):
            override = overrides.get(key)
            limit = override["concurrency_limit"] if override else None
            limit = key_limit if limit is None else limit
            paused = bool(override["paused"]) if override else False
            at_limit = paused or (limit is not None and c["running"] >= limit)
            own = override["rate_limit"] if override else None
            rate = key_rate if own is None else parse_rate(own, field="rate_limit")
            starts, next_at = self._rate_use(queue, key, rate, now, key_wide=True)
            rows.append(
                {
                    "concurrency_key": key,
                    "limit": limit,
                    "paused": paused,
                    "at_limit": at_limit,
                    "rate_limit": _text(rate),
                    "rate_starts": starts,
                    "next_start_at": iso(next_at),
                    **c,
                }
            )
        return rows

    def _rate_use(
        self, queue: str, key: str | None, rate: Rate | None, now: float, *, key_wide: bool
    ) -> tuple[int | None, float | None]:
        """Starts in the window ending ``now``, and when the next start is allowed (None:
        now), from the recorded starts; (None, None) without a rate."""
        if rate is None:
            return None, None
        args = (queue, int(key_wide), key, now - rate.window_s, rate.count)
        with map_store_errors("reading rate limit use"):
            rows = self._conn.execute(db.QUERIES["recent_rate_starts"], args).fetchall()
        if len(rows) < rate.count:
            return len(rows), None
        return len(rows), rows[-1][0] + rate.window_s


def _text(rate: Rate | None) -> str | None:
    return str(rate) if rate is not None else None


def capacity_message(running: int, limit: int, queued: int) -> str:
    return f"Running {running} of {limit}; {queued} queued"
