"""Runs entering and leaving the engine outside the normal flow.

- :func:`recover`: every active run at start-up, where it was;
- :func:`adopt`: stored runs exactly as they are, to operate on them with no
  daemon running (the offline cancel);
- :func:`withdraw`: runs handed in whose commit failed, as if never triggered;
- :func:`abandon`: a run whose record the database refused for good, failed;
- :func:`remember_starts`: the starts rate limits counted before a restart.

These are the engine's own rules, kept apart from its hot path; they work on
the engine's parts as the engine does. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from keyq.core.engine import Engine
from keyq.core.model import (
    RESUME_PRIORITY,
    CountedStart,
    ErrorInfo,
    Recovered,
    RunId,
    RunSpec,
    Wait,
    WaitChildren,
)
from keyq.core.runbook import ActiveRun
from keyq.core.states import CANCELED, DELAYED, FAILED, QUEUED, RUNNING, WAITING, Reason


def recover(engine: Engine, specs: Iterable[RunSpec], now: float) -> Recovered:
    """Adopt the runs loaded at start-up, where they were.

    A WAITING run waits again on its stored waitpoint, and a run queued to
    resume still resumes first: their coroutines are gone, so the shell
    resumes them by replay. A RUNNING run's attempt was cut short: it is
    re-queued as interrupted if it has attempts left, else FAILED.
    """
    waiting: list[tuple[ActiveRun, Wait]] = []
    for spec in specs:
        if spec.id in engine:
            continue
        if spec.cancel_requested:  # acknowledged before the crash: honour it now
            engine._finish(engine._book.adopt(spec), CANCELED, now, Reason.CANCELED)
        elif spec.state is WAITING and spec.wait is not None:
            waiting.append((engine._book.adopt(spec), spec.wait))
        elif spec.state is QUEUED and spec.wait is not None:
            _queued_to_resume(engine, engine._book.adopt(spec))
        elif spec.state in (RUNNING, WAITING):
            engine._interrupted(engine._book.adopt(spec), now)
        else:
            engine.submit(spec)
    # Children are adopted after their parents (by seq): set the waits up last.
    unknown: dict[RunId, list[RunId]] = {}
    for run, wait in waiting:
        engine.waits.arm(run, wait, now)
        if isinstance(wait, WaitChildren) and run.state is WAITING:
            missing = engine.waits.unresolved(run.id, wait.child_ids)
            if missing:
                unknown[run.id] = missing
    return Recovered(unknown, engine.waits.tokens())


def adopt(engine: Engine, specs: Iterable[RunSpec]) -> None:
    """Take stored runs exactly as they are, to operate on them without running them
    (a cancel while no daemon runs): a RUNNING one holds its slot as if its attempt
    were alive, a WAITING one waits on its waitpoint. Start nothing afterwards
    (:meth:`Engine.hold_starts`); an attempt asked to stop has stopped, so report it."""
    for spec in specs:
        if spec.state in (QUEUED, DELAYED) and spec.wait is None:
            engine.submit(spec)
            continue
        run = engine._book.adopt(spec)
        if run.state is RUNNING:
            engine.limits.acquire(run.id, run.queue, run.key)
        elif run.state is WAITING and spec.wait is not None:
            engine.waits.arm(run, spec.wait, 0.0)
        elif run.state is QUEUED:
            _queued_to_resume(engine, run)


def withdraw(engine: Engine, run_ids: Iterable[RunId]) -> None:
    """Forget runs submitted before their rows existed whose commit failed, as if
    they had never been triggered: their trigger is answered with the error, so
    nothing may run them later. Their transitions are not to be recorded."""
    for run_id in run_ids:
        run = engine._runs.get(run_id)
        if run is None:
            continue
        if run.state is RUNNING:
            engine._leave_running(run, run.span_started_at)
        elif run.state is QUEUED:
            engine._dispatcher.discard(run.id)
        engine._wakeups.cancel(run.id)
        engine._unstarted.left(run.id)
        engine._book.remove(run)


def abandon(engine: Engine, run_id: RunId, now: float, error: ErrorInfo) -> bool:
    """The database refused a change of this run for good: fail the run (stopping
    its attempt), so that it holds nothing and the rest goes on. False if the run
    is no longer active."""
    run = engine._runs.get(run_id)
    if run is None:
        return False
    if run.state is RUNNING:
        engine._leave_running(run, now)
        engine._book.cancels.append(run.id)
    elif run.state is QUEUED:
        engine._dispatcher.discard(run.id)
    if run.state is WAITING or run.resume:
        engine._book.cancels.append(run.id)  # its suspended coroutine
    run.cancel_reason, run.resume = None, False
    engine._finish(run, FAILED, now, Reason.UNRECORDABLE, error=error)
    return True


def _queued_to_resume(engine: Engine, run: ActiveRun) -> None:
    run.resume = True
    engine._dispatcher.push(run.id, run.queue, run.key, RESUME_PRIORITY)


def remember_starts(engine: Engine, starts: Iterable[CountedStart]) -> None:
    """Starts that rate limits counted before the stop, oldest first: each window is
    as full after a restart as it was before, so a restart grants no fresh burst."""
    for start in starts:
        engine.limits.remember_start(start.queue, start.concurrency_key, start.at)
