"""Operator writes to the database: runtime limits and pauses, and cancels without a daemon.

Limit overrides are written to the database first (so they survive restarts),
then the running daemon, if any, is told to re-read them. A cancel while no
daemon runs is written under the instance lock, so a daemon cannot start from
a snapshot taken halfway through it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from keyq.core import recovery
from keyq.core.bounds import MAX_LIMIT
from keyq.core.engine import Engine
from keyq.core.limits import Limits
from keyq.core.model import Cancelled, Step
from keyq.core.states import FINAL, RunState
from keyq.errors import RunNotFoundError, RunStateError
from keyq.store import db
from keyq.store.codec import spec_from_row
from keyq.store.db import QUERIES as Q
from keyq.store.errors import map_store_errors
from keyq.store.runs import write_step

UNSET: Any = object()


def update_queue_settings(
    conn: sqlite3.Connection,
    queue: str,
    now: float,
    *,
    concurrency_limit: int | None = UNSET,
    total_limit: int | None = UNSET,
    paused: bool = UNSET,
    rate_limit: str | None = UNSET,
    rate_limit_total: str | None = UNSET,
) -> None:
    """Change some fields of a queue's runtime settings, keeping the others (a rate
    as text: "100/1m", "none"; None drops the override)."""
    with map_store_errors(f"updating settings of queue {queue!r}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_queue_settings"], (queue,)).fetchone()
        current = row if row is not None else (None, None, 0, None, None)
        given = (concurrency_limit, total_limit, paused, rate_limit, rate_limit_total)
        limit, total, pause, rate, rate_total = _merged(current, given)
        conn.execute(
            db.QUERIES["upsert_queue_settings"],
            (queue, limit, total, int(pause), rate, rate_total, now),
        )


def update_key_settings(
    conn: sqlite3.Connection,
    queue: str,
    key: str,
    now: float,
    *,
    concurrency_limit: int | None = UNSET,
    paused: bool = UNSET,
    rate_limit: str | None = UNSET,
) -> None:
    """Change one key's runtime limit, pause or rate, keeping the others."""
    with map_store_errors(f"updating settings of key {key!r} in {queue!r}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_key_settings"], (queue, key)).fetchone()
        current = row if row is not None else (None, 0, None)
        limit, pause, rate = _merged(current, (concurrency_limit, paused, rate_limit))
        conn.execute(db.QUERIES["upsert_key_settings"], (queue, key, limit, int(pause), rate, now))


def _merged(current: tuple[Any, ...], given: tuple[Any, ...]) -> tuple[Any, ...]:
    """The stored fields, each replaced by the one given unless that is UNSET."""
    return tuple(old if new is UNSET else new for old, new in zip(current, given, strict=True))


def cancel_stored(conn: sqlite3.Connection, run_id: str, now: float) -> None:
    """Cancel an active run and its active children (and theirs) directly in the
    database, by the engine's own rule (the caller holds the instance lock).

    The run and its active descendants are adopted as stored by an engine that
    starts nothing; the engine cancels them as the daemon would, and its step
    is written by the daemon's own write path. A run recorded RUNNING has no
    live attempt (no daemon runs): its cancel ends it at once.
    """
    with map_store_errors(f"canceling run {run_id}"), db.transaction(conn):
        row = conn.execute(db.QUERIES["get_run_outcome"], (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        if RunState(row[0]) in FINAL:
            raise RunStateError(f"run {run_id} is already {row[0]}")
        family = [run_id, *(r[0] for r in conn.execute(Q["active_descendants"], (run_id,)))]
        rows = conn.execute(Q["select_runs_by_ids"], (json.dumps(family),)).fetchall()
        engine = Engine(Limits(MAX_LIMIT, 1.0))
        engine.hold_starts()
        recovery.adopt(engine, map(spec_from_row, rows))
        engine.cancel(run_id, now)
        asked = engine.tick(now)
        for stopped in asked.cancel:
            engine.finished(stopped, Cancelled(), now)
        write_step(conn, Step(asked.transitions + engine.tick(now).transitions))
