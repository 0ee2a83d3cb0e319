"""The SQLite store's schedules: fire each due tick as a run stored with its claim.

At start and whenever settings change, the schedules in force (the code's and
``[[schedules]]``) are written to the database and read back with their last
claimed ticks and paused flags, and the timetable is armed. At each tick the
due ticks become runs, handed to the engine like any trigger and stored with
the step's commit: the run row is the tick's claim (a unique index), so a
crash before the commit loses nothing (the tick is still unclaimed and fires
at the next start, by its misfire rule) and a crash after it cannot fire it
again. See docs/schedules.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from keyq.config import Config
from keyq.core.model import NewRun, RunId, ScheduleTick, StartRun, Transition
from keyq.core.states import FINAL
from keyq.core.timetable import Entry, Fire, Timetable
from keyq.errors import ConfigError, KeyqError, UnstorableError
from keyq.ids import new_run_id
from keyq.registry import Registry
from keyq.schedules import Schedule
from keyq.store.database import Database
from keyq.triggers import build_run


class Scheduling:
    """Schedules in force, their timetable, and the ticks of active scheduled runs."""

    def __init__(self, registry: Registry, log: Any) -> None:
        self._registry = registry
        self._log = log
        self.timetable = Timetable()
        self._schedules: dict[str, Schedule] = {}
        self._ticks: dict[RunId, ScheduleTick] = {}  # active scheduled runs

    async def load(self, db: Database, config: Config, now: float, *, reload: bool = False) -> None:
        """Store the schedules in force and arm the timetable from what is stored. On a
        reload, a config naming a task the daemon lacks keeps the schedules as they were
        (logged): a reload never takes the daemon down."""
        try:
            schedules = in_force(self._registry, config)
        except ConfigError as exc:
            if not reload:
                raise
            self._log.error("schedules_not_reloaded", error=str(exc))
            schedules = list(self._schedules.values())
        stored = {r.id: r for r in await db.define_schedules(schedules, now)}
        self._schedules = {s.id: s for s in schedules}
        entries = []
        for s in schedules:
            row = stored[s.id]
            since = max(row.fires_after, row.last_tick or row.fires_after)
            entries.append(
                Entry(
                    s.id,
                    s.cadence.next_after,
                    s.cadence.at_or_before,
                    s.misfire,
                    s.max_catch_up,
                    since,
                    row.last_tick,
                    row.paused,
                )
            )
        self.timetable.configure(entries)

    async def recover(self, db: Database) -> None:
        self._ticks = await db.active_scheduled()

    def due(self, now: float, max_payload_bytes: int) -> list[tuple[Fire, NewRun]]:
        """The runs of the ticks due at ``now`` (each carries its claim)."""
        fired = []
        for fire in self.timetable.due(now):
            schedule = self._schedules[fire.schedule_id]
            task = self._registry.tasks[schedule.task or ""]
            options = {"concurrency_key": schedule.concurrency_key}
            try:
                run = build_run(
                    task,
                    schedule.payload,
                    options,
                    run_id=new_run_id(now),
                    now=now,
                    max_payload_bytes=max_payload_bytes,
                )
            except KeyqError as exc:  # its payload is over max_payload_bytes, say
                self._log.error("schedule_tick_refused", schedule=fire.schedule_id, error=str(exc))
                continue
            tick = ScheduleTick(fire.schedule_id, fire.tick, fire.previous)
            fired.append((fire, replace(run, schedule=tick)))
            self._ticks[run.id] = tick
        return fired

    def refused(self, fires: Sequence[Fire], runs: Sequence[NewRun], exc: BaseException) -> None:
        """The runs of these ticks were not stored: unclaimed, they fire again, unless
        the database refused the values themselves (a tick claimed already)."""
        for run in runs:
            self._ticks.pop(run.id, None)
        self._log.error("schedule_tick_refused", ticks=len(fires), error=str(exc))
        if not isinstance(exc, UnstorableError):
            for fire in fires:
                self.timetable.refused(fire)

    def annotate(self, started: Iterable[StartRun], transitions: Iterable[Transition]) -> None:
        """Give started runs their tick (``ctx.schedule``); forget final ones."""
        if not self._ticks:
            return
        for start in started:
            start.schedule = self._ticks.get(start.run_id)
        for t in transitions:
            if t.to in FINAL:
                self._ticks.pop(t.run_id, None)


def in_force(registry: Registry, config: Config) -> list[Schedule]:
    """The code's schedules and the config's; a config schedule naming a task the
    daemon does not have, or an id the code uses, is a ConfigError naming it."""
    schedules = dict(registry.schedules)
    for i, s in enumerate(config.schedules):
        if s.task not in registry.tasks:
            raise ConfigError(f"schedules[{i}].task: no task {s.task!r} is defined")
        if s.id in schedules:
            raise ConfigError(f"schedules[{i}].id: {s.id!r} is also a schedule in the code")
        schedules[s.id] = s
    return list(schedules.values())
