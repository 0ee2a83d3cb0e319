"""The engine's book of active runs: each run's record, the counts by state, who is
whose child, and what the step being built will record.

Every state change goes through :meth:`RunBook.move`, which checks it against
the transition table and records it: the transitions a step hands back are
both the durable record and the timeline. Pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from keyq.core.limits import Key
from keyq.core.model import (
    CancelRequest,
    ChildResult,
    CountedStart,
    ErrorInfo,
    RunId,
    RunSpec,
    StartRun,
    Step,
    TokenExpiry,
    Transition,
    Wait,
)
from keyq.core.states import Reason, RunState, check_transition
from keyq.errors import RunStateError


@dataclass(slots=True, eq=False)
class ActiveRun:
    """What the engine keeps of one active run."""

    id: RunId
    seq: int
    task: str
    queue: str
    key: Key
    priority: int
    payload: str
    max_attempts: int
    state: RunState
    attempt: int
    parent_id: RunId | None
    wait: Wait | None = None
    resume: bool = False  # the next start continues a waiting attempt
    restart: bool = False  # the next start follows an interrupted attempt
    cancel_reason: Reason | None = None  # why the engine asked the runner to stop
    used_s: float = 0.0  # running time spent by the current attempt
    span_started_at: float = 0.0
    claim: int = 0  # +1 at every start or resume: events about older ones are refused


class RunBook:
    """Active runs by id, their counts, their parents, and the step in the making."""

    def __init__(self) -> None:
        self.runs: dict[RunId, ActiveRun] = {}
        self.counts: Counter[RunState] = Counter()
        self._children: dict[RunId, dict[RunId, None]] = {}  # parent -> its active children
        self.transitions: list[Transition] = []
        self.starts: list[StartRun] = []
        self.cancels: list[RunId] = []  # attempts to stop
        self.cancel_requests: list[CancelRequest] = []
        self.expired: list[TokenExpiry] = []  # token waits ended by their timeout
        self.counted: list[CountedStart] = []  # starts a rate limit counted

    def adopt(self, spec: RunSpec) -> ActiveRun:
        run = ActiveRun(  # positional: a million of these at recovery (bench/scale)
            spec.id,
            spec.seq,
            spec.task,
            spec.queue,
            spec.concurrency_key,
            spec.priority,
            spec.payload,
            spec.max_attempts,
            spec.state,
            spec.attempt,
            spec.parent_id,
            spec.wait,
        )
        self.runs[run.id] = run
        self.counts[run.state] += 1
        if run.parent_id is not None:
            self._children.setdefault(run.parent_id, {})[run.id] = None
        return run

    def move(
        self,
        run: ActiveRun,
        to: RunState,
        now: float,
        reason: Reason,
        *,
        result: str | None = None,
        error: ErrorInfo | None = None,
        available_at: float | None = None,
        payload: str | None = None,
    ) -> None:
        """Change the run's state, recording the transition (IllegalTransition if the
        table has no such edge; then nothing changes)."""
        check_transition(run.id, run.state, to)
        self.transitions.append(
            Transition(
                run.id,
                run.seq,
                run.task,
                run.queue,
                run.key,
                now,
                run.state,
                to,
                reason,
                run.attempt,
                available_at=available_at,
                result=result,
                error=error,
                wait=run.wait,
                payload=payload,
            )
        )
        self.counts[run.state] -= 1
        self.counts[to] += 1
        run.state = to

    def start(self, run: ActiveRun, resumed: bool, children: tuple[ChildResult, ...]) -> None:
        """The run starts (or resumes) once this step is committed."""
        self.starts.append(
            StartRun(
                run.id,
                run.task,
                run.queue,
                run.key,
                run.attempt,
                run.payload,
                resumed,
                children,
                run.claim,
            )
        )

    def remove(self, run: ActiveRun) -> None:
        """A run that became final leaves the book (it was moved there first)."""
        self.counts[run.state] -= 1  # final runs are not counted
        del self.runs[run.id]
        self.forget_parent(run)

    def forget_parent(self, run: ActiveRun) -> None:
        if run.parent_id is not None:
            siblings = self._children.get(run.parent_id)
            if siblings is not None:
                siblings.pop(run.id, None)
                if not siblings:
                    del self._children[run.parent_id]

    def children_of(self, parent_id: RunId) -> list[RunId]:
        """The parent's children that are active."""
        return [c for c in self._children.get(parent_id, ()) if c in self.runs]

    def require(self, run_id: RunId, state: RunState) -> ActiveRun:
        run = self.runs.get(run_id)
        if run is None or run.state is not state:
            actual = run.state if run is not None else "not active"
            raise RunStateError(f"run {run_id} is {actual}, expected {state}")
        return run

    def take_step(self) -> Step:
        """Everything recorded since the last step, as one Step (then forgotten here)."""
        if not (self.transitions or self.starts or self.cancels or self.cancel_requests):
            return _EMPTY_STEP
        step = Step(
            tuple(self.transitions),
            tuple(self.starts),
            tuple(self.cancels),
            tuple(self.cancel_requests),
            tuple(self.expired),
            tuple(self.counted),
        )
        self.transitions.clear()
        self.starts.clear()
        self.cancels.clear()
        self.cancel_requests.clear()
        self.expired.clear()
        self.counted.clear()
        return step


_EMPTY_STEP = Step()
