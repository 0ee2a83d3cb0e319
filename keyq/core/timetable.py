"""Which schedule ticks fire now: one deadline per schedule, and the misfire rule.

Each schedule has one entry in a deadline heap, at its next tick, so 10,000
schedules cost nothing between their ticks. When an entry falls due, the
ticks since the schedule's last claimed one are due, and ``misfire`` decides
which fire (docs/schedules.md):

* the latest due tick is **on time** if it is less than :data:`GRACE_S` late;
  every earlier due tick is **missed** (a later tick came before it fired: the
  daemon was down, or the machine slept);
* ``latest`` fires the latest due tick, on time or not; ``all`` fires every
  missed tick, at most ``max_catch_up`` (the most recent ones), oldest first,
  then the on-time one; ``skip`` fires only an on-time tick.

Pure: the cadence (when ticks fall) is passed in as two functions, and the
store claims each fired tick in the transaction that stores its run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from keyq.core.timers import Deadlines

GRACE_S = 60.0
MISFIRE_POLICIES = ("latest", "all", "skip")
DEFAULT_MAX_CATCH_UP = 100


@dataclass(frozen=True, slots=True)
class Fire:
    """One tick to fire: store one run for it, claiming (schedule, tick)."""

    schedule_id: str
    tick: float
    previous: float | None  # the schedule's last claimed tick before this one


@dataclass(slots=True)
class Entry:
    """A schedule as the timetable keeps it."""

    id: str
    next_after: Callable[[float], float]
    at_or_before: Callable[[float], float | None]
    misfire: str = "latest"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    since: float = 0.0  # its last claimed tick, or when it was first defined
    last: float | None = None  # its last claimed tick
    paused: bool = False


class Timetable:
    """Schedules and their next ticks."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._due: Deadlines[str] = Deadlines()

    def configure(self, entries: Iterable[Entry]) -> None:
        """Replace every schedule (start-up, reload, pause and resume)."""
        self._entries = {e.id: e for e in entries}
        self._due = Deadlines()
        for entry in self._entries.values():
            if not entry.paused:
                self._due.push(entry.id, entry.next_after(entry.since))

    def __len__(self) -> int:
        return len(self._entries)

    def next_deadline(self) -> float | None:
        return self._due.next_deadline()

    def due(self, now: float) -> list[Fire]:
        """The ticks to fire at ``now``; each schedule's next tick is armed."""
        fires: list[Fire] = []
        for schedule_id in self._due.pop_due(now):
            entry = self._entries[schedule_id]
            ticks = _chosen(entry, now)
            previous = entry.last
            for tick in ticks:
                fires.append(Fire(entry.id, tick, previous))
                previous = tick
            if ticks:
                entry.last = entry.since = ticks[-1]
            self._due.push(entry.id, entry.next_after(now))
        return fires

    def refused(self, fire: Fire) -> None:
        """A fired tick's run was not stored (the database failed): fire it again."""
        entry = self._entries.get(fire.schedule_id)
        if entry is None or entry.paused or entry.last != fire.tick:
            return
        entry.last = fire.previous
        entry.since = fire.previous if fire.previous is not None else fire.tick - 1e-3
        self._due.push(entry.id, fire.tick)


def _chosen(entry: Entry, now: float) -> list[float]:
    """The due ticks ``entry.misfire`` fires, oldest first."""
    latest = entry.at_or_before(now)
    if latest is None or latest <= entry.since:
        return []
    on_time = now - latest < GRACE_S
    if entry.misfire == "latest":
        return [latest]
    if entry.misfire == "skip":
        return [latest] if on_time else []
    missed: list[float] = []
    t = latest if not on_time else entry.at_or_before(latest - 1e-3)
    while t is not None and t > entry.since and len(missed) < entry.max_catch_up:
        missed.append(t)
        t = entry.at_or_before(t - 1e-3)
    missed.reverse()
    return [*missed, latest] if on_time else missed
