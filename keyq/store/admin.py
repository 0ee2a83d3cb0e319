"""Operator writes to the database: runtime limits and pauses, and cancels without a daemon.

Limit overrides are written to the database first (so they survive restarts),
then the running daemon, if any, is told to re-read them. A cancel while no
daemon runs is written under the instance lock, so a daemon cannot start from
a snapshot taken halfway through it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from keyq.core.states import CANCELED, FINAL, Reason, RunState
from keyq.errors import RunNotFoundError, RunStateError, map_store_errors
from keyq.store import db
from keyq.store.codec import event_line

UNSET: Any = object()


def update_queue_settings(
    conn: sqlite3.Connection,
    queue: str,
    now: float,
    *,
    concurrency_limit: int | None = UNSET,
    total_limit: int | None = UNSET,
    paused: bool = UNSET,
) -> None:
    """Change some fields of a queue's runtime settings, keeping the others."""
    with map_store_errors(f"updating settings of queue {queue!r}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_queue_settings"], (queue,)).fetchone()
        current = row if row is not None else (None, None, 0)
        conn.execute(
            db.QUERIES["upsert_queue_settings"],
            (
                queue,
                current[0] if concurrency_limit is UNSET else concurrency_limit,
                current[1] if total_limit is UNSET else total_limit,
                int(current[2] if paused is UNSET else paused),
                now,
            ),
        )


def update_key_settings(
    conn: sqlite3.Connection,
    queue: str,
    key: str,
    now: float,
    *,
    concurrency_limit: int | None = UNSET,
    paused: bool = UNSET,
) -> None:
    """Change one key's runtime limit or pause, keeping the other."""
    with map_store_errors(f"updating settings of key {key!r} in {queue!r}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_key_settings"], (queue, key)).fetchone()
        current = row if row is not None else (None, 0)
        conn.execute(
            db.QUERIES["upsert_key_settings"],
            (
                queue,
                key,
                current[0] if concurrency_limit is UNSET else concurrency_limit,
                int(current[1] if paused is UNSET else paused),
                now,
            ),
        )


def cancel_stored(conn: sqlite3.Connection, run_id: str, now: float) -> None:
    """Cancel an active run and its active children (and theirs) directly in the
    database, as the daemon would (the caller holds the instance lock)."""
    with map_store_errors(f"canceling run {run_id}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_run_status"], (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        status = RunState(row[0])
        if status in FINAL:
            raise RunStateError(f"run {run_id} is already {status.value}")
        runs = [(run_id, status, row[1])]
        for child_id, child_status, attempt in conn.execute(
            db.QUERIES["active_descendants"], (run_id,)
        ).fetchall():
            runs.append((child_id, RunState(child_status), attempt))
        conn.executemany(
            db.QUERIES["cancel_stored_run"],
            [(now, event_line(now, s, CANCELED, Reason.CANCELED, a), i) for i, s, a in runs],
        )
