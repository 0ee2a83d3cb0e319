"""The engine's invariants, checked by a full walk: for tests and ``keyq doctor``, never
the hot path. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from keyq.core.dispatch import Dispatcher
from keyq.core.limits import Limits
from keyq.core.model import RunId
from keyq.core.runbook import ActiveRun
from keyq.core.states import DELAYED, QUEUED, RUNNING, RunState
from keyq.core.unstarted import Scope


def audit(
    active: Mapping[RunId, ActiveRun],
    counts: Counter[RunState],
    limits: Limits,
    dispatcher: Dispatcher,
    holding: bool,
    debounced: Iterable[tuple[Scope, RunId]] = (),
) -> list[str]:
    """What is wrong, one line each; [] when every invariant holds:

    * the counts by state agree with the runs;
    * exactly the RUNNING runs hold a slot;
    * every QUEUED run is in the dispatcher, and none could start now (no idle slot);
    * every debounce key names a DELAYED run that has not started.
    """
    problems: list[str] = []
    runs = list(active.values())
    by_state = Counter(run.state for run in runs)
    if +by_state != +counts:
        problems.append(f"state counts {dict(counts)} != actual {dict(by_state)}")
    for run in runs:
        holds = limits.holds(run.id)
        if holds != (run.state is RUNNING):
            problems.append(f"run {run.id} is {run.state} and holds a slot: {holds}")
        if run.state is QUEUED and run.id not in dispatcher:
            problems.append(f"run {run.id} is queued but not in the dispatcher")
        if run.state is QUEUED and not holding and limits.can_start(run.queue, run.key):
            problems.append(f"run {run.id} could start but is left queued")
    if limits.running != by_state[RUNNING]:
        problems.append(f"{limits.running} slots held by {by_state[RUNNING]} runs")
    for (task, key), run_id in debounced:
        named = active.get(run_id)
        if named is None or named.state is not DELAYED or named.attempt:
            problems.append(f"debounce key {key!r} of {task!r} names {run_id}, not a fresh delay")
    return problems
