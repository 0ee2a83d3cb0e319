"""Schedule definitions: ``@keyq.task(cron=...)``, ``keyq.Schedule``, ``[[schedules]]``.

A schedule names a task and a cadence (``cron`` with a ``tz``, or ``every``),
and the payload and concurrency key of each run it fires. Everything is
checked where it is defined: a bad cron, an unknown zone, or both ``cron`` and
``every``, is a :class:`~keyq.errors.DefinitionError` naming the schedule, the
field and the value. The daemon claims each tick in the transaction that
stores its run (docs/schedules.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from keyq.cadence import Cadence, Cron, Every, check_cron, parse_every, zone
from keyq.core import bounds
from keyq.core.bounds import check_name
from keyq.core.timetable import DEFAULT_MAX_CATCH_UP, MISFIRE_POLICIES
from keyq.errors import DefinitionError

MAX_CATCH_UP = 10_000
MAX_SCHEDULE_PAYLOAD_BYTES = 64 * 1024  # held in memory and in every run it fires
SCHEDULE_FIELDS = (
    "id",
    "task",
    "cron",
    "every",
    "tz",
    "payload",
    "concurrency_key",
    "misfire",
    "max_catch_up",
)


@dataclass(frozen=True)
class Schedule:
    """Fire ``task`` on a cadence: ``cron="*/5 * * * *"`` in ``tz``, or ``every="30s"``.

    ``misfire`` says what happens to ticks missed while the daemon was down:
    ``"latest"`` (one run for the latest), ``"all"`` (one per missed tick, at
    most ``max_catch_up``), ``"skip"``.
    """

    id: str
    cron: str | None = None
    every: float | str | timedelta | None = None
    tz: str = "UTC"
    payload: Any = None
    concurrency_key: str | None = None
    misfire: str = "latest"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    task: str | None = None  # set when it is attached to a task
    cadence: Cadence = field(init=False, repr=False, compare=False)
    payload_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            check_name("schedule id", self.id)
        except DefinitionError as exc:
            raise DefinitionError(f"schedule {self.id!r}: {exc}") from None
        try:
            self._check()
        except ValueError as exc:
            raise DefinitionError(f"schedule {self.id!r}: {exc}") from None

    def _check(self) -> None:
        if self.task is not None:
            check_name("task", self.task)
        if self.cron is not None and self.every is not None:
            raise ValueError(f"cron {self.cron!r} and every {self.every!r}: give one, not both")
        if self.cron is None and self.every is None:
            raise ValueError("give cron (e.g. '*/5 * * * *') or every (e.g. '30s')")
        if self.cron is not None:
            zone(self.tz)
            cadence: Cadence = Cron(check_cron(self.cron), self.tz)
        else:
            cadence = parse_every(self.every)
        if self.misfire not in MISFIRE_POLICIES:
            choices = ", ".join(MISFIRE_POLICIES)
            raise ValueError(f"misfire: expected one of {choices}, got {self.misfire!r}")
        bounds.integer("max_catch_up", self.max_catch_up, 1, MAX_CATCH_UP)
        if self.concurrency_key is not None:
            bounds.text("concurrency_key", self.concurrency_key, bounds.MAX_KEY_LENGTH)
        try:
            text = bounds.json_text(self.payload, MAX_SCHEDULE_PAYLOAD_BYTES)
        except ValueError as exc:
            raise ValueError(f"payload: {exc}") from None
        object.__setattr__(self, "cadence", cadence)
        object.__setattr__(self, "payload_json", text)

    @property
    def cadence_text(self) -> str:
        """How it is written: the cron expression, or the interval in seconds."""
        if isinstance(self.cadence, Every):
            return f"every {self.cadence.seconds:g}"
        return self.cadence.expression

    def for_task(self, task_id: str) -> Schedule:
        """This schedule attached to ``task_id``."""
        if self.task is not None and self.task != task_id:
            raise DefinitionError(
                f"schedule {self.id!r} names task {self.task!r} but is given to {task_id!r}"
            )
        return Schedule(
            self.id,
            self.cron,
            self.every,
            self.tz,
            self.payload,
            self.concurrency_key,
            self.misfire,
            self.max_catch_up,
            task_id,
        )


def from_table(index: int, table: dict[str, Any]) -> Schedule:
    """A ``[[schedules]]`` table; DefinitionError naming ``schedules[i].field``."""
    where = f"schedules[{index}]"
    unknown = sorted(set(table) - set(SCHEDULE_FIELDS))
    if unknown:
        raise DefinitionError(
            f"{where}.{unknown[0]}: unknown key (known: {', '.join(SCHEDULE_FIELDS)})"
        )
    for required in ("id", "task"):
        if required not in table:
            raise DefinitionError(f"{where}.{required}: required")
    try:
        return Schedule(**table)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}: {exc}") from None
