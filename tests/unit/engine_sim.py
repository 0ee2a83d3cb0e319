"""An engine driven on explicit time, for scenario tests: act, then assert it all.

Every tick is followed by ``engine.audit() == []`` (no leaked slot, no idle slot
with a startable run, state counts agree).
"""

from __future__ import annotations

import itertools
import random

from keyq.core.engine import Engine
from keyq.core.limits import Limits, QueueLimit
from keyq.core.model import (
    Cancelled,
    Completed,
    ErrorInfo,
    Failed,
    RunSpec,
    Step,
    Transition,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.core.states import QUEUED, RunState

T0 = 1_234_567_890.25
BOOM = ErrorInfo("ValueError", "boom")
_seq = itertools.count(1)


def spec(
    run_id: str,
    *,
    queue: str = "q",
    key: str | None = None,
    priority: int = 5,
    max_attempts: int = 3,
    task: str = "t",
    state: RunState = QUEUED,
    attempt: int = 0,
    available_at: float = 0.0,
    queue_limit: int | None = None,
    parent_id: str | None = None,
    wait: WaitUntil | WaitChildren | WaitForToken | None = None,
    expires_at: float | None = None,
    debounce_key: str | None = None,
    debounce_until: float | None = None,
) -> RunSpec:
    return RunSpec(
        id=run_id, seq=next(_seq), task=task, queue=queue, concurrency_key=key,
        priority=priority, payload=f'{{"run": "{run_id}"}}', max_attempts=max_attempts,
        state=state, attempt=attempt, available_at=available_at, created_at=T0,
        queue_limit=queue_limit, parent_id=parent_id, wait=wait, expires_at=expires_at,
        debounce_key=debounce_key, debounce_until=debounce_until,
    )  # fmt: skip


class Sim:
    """An engine plus the current time; every tick is audited and its transitions kept."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine if engine is not None else Engine(rng=random.Random(0))
        self.now = T0
        self.history: list[Transition] = []
        self.check_audit = True

    def tick(self, at: float | None = None) -> Step:
        if at is not None:
            assert at >= self.now, "time can't go backwards"
            self.now = at
        step = self.engine.tick(self.now)
        self.history.extend(step.transitions)
        if self.check_audit:
            assert self.engine.audit() == []
        return step

    def submit(self, *specs: RunSpec) -> Step:
        for s in specs:
            assert self.engine.submit(s) is True
        return self.tick()

    def finish(self, run_id: str, outcome: Completed | Failed | Cancelled | None = None) -> Step:
        self.engine.finished(run_id, outcome or Completed('{"ok": true}'), self.now)
        return self.tick()

    def stats(self) -> tuple[int, int, int, int]:
        s = self.engine.statistics()
        return (s.queued, s.delayed, s.running, s.waiting)

    def timeline(self, run_id: str) -> list[tuple[str, str, str]]:
        return [(_name(t.from_), t.to.value, t.reason) for t in self.history if t.run_id == run_id]


def _name(state: RunState | None) -> str:
    return "new" if state is None else state.value


def started(step: Step) -> list[str]:
    return [s.run_id for s in step.start]


def moves(step: Step) -> list[tuple[str, str, str, str]]:
    return [(t.run_id, _name(t.from_), t.to.value, t.reason) for t in step.transitions]


def limited(concurrency: int = 200, burst_factor: float = 2.0, **queues: QueueLimit) -> Engine:
    limits = Limits(concurrency, burst_factor)
    for name, limit in queues.items():
        limits.set_queue(name, limit)
    return Engine(limits=limits, rng=random.Random(0))
