"""Schedules as stored: their definitions, paused flags and last claimed ticks.

The daemon writes every schedule it is given at start and at each reload
(``define``): one it is no longer given is kept, marked gone, with its
history. A tick is claimed by the row of its run (keyq/store/runs.py), which
also moves ``last_tick``. Connection-level and synchronous, for the daemon's
connection and the CLI's alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keyq.cadence import stored
from keyq.core.model import RunId, ScheduleTick
from keyq.schedules import Schedule
from keyq.store.codec import iso
from keyq.store.db import QUERIES as Q


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    id: str
    task: str
    cadence: str
    tz: str
    misfire: str
    defined: bool
    paused: bool
    fires_after: float
    last_tick: float | None
    last_run_id: RunId | None


def define(conn: sqlite3.Connection, schedules: Iterable[Schedule], now: float) -> None:
    """Store the schedules in force; mark every other stored one as gone."""
    given = list(schedules)
    conn.executemany(
        Q["define_schedule"],
        [(s.id, s.task, s.cadence_text, s.tz, s.misfire, now) for s in given],
    )
    conn.execute(Q["undefine_schedules"], (json.dumps([s.id for s in given]), now))


def rows(conn: sqlite3.Connection) -> list[ScheduleRow]:
    return [_row(r) for r in conn.execute(Q["select_schedules"]).fetchall()]


def _row(r: Sequence[Any]) -> ScheduleRow:
    return ScheduleRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7], r[8], r[9])


def set_paused(conn: sqlite3.Connection, schedule_id: str, paused: bool, now: float) -> bool:
    """Pause or resume a stored schedule; False if there is none by that id."""
    return conn.execute(Q["pause_schedule"], (schedule_id, int(paused), now)).rowcount == 1


def active_scheduled(conn: sqlite3.Connection) -> dict[RunId, ScheduleTick]:
    """The tick of every active scheduled run (for ``ctx.schedule`` after a restart)."""
    found = conn.execute(Q["select_active_scheduled"]).fetchall()
    return {r[0]: ScheduleTick(r[1], r[2], r[3]) for r in found}


def listing(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """Every stored schedule for ``keyq schedules list``: its next fire (none while
    paused or gone), its last claimed tick and that run's status."""
    out = []
    for r in conn.execute(Q["list_schedules"]).fetchall():
        row = _row(r)
        next_at = None
        if row.defined and not row.paused:
            since = max(now, row.fires_after, row.last_tick or 0.0)
            next_at = stored(row.cadence, row.tz).next_after(since)
        out.append(
            {
                "id": row.id,
                "task": row.task,
                "cadence": row.cadence,
                "tz": row.tz,
                "misfire": row.misfire,
                "next_fire_at": iso(next_at),
                "last_tick": iso(row.last_tick),
                "last_run_id": row.last_run_id,
                "last_run_status": r[10],
                "paused": row.paused,
                "gone": not row.defined,
            }
        )
    return out
