"""The engine's invariants, checked by a full walk: for tests and ``keyq doctor``, never
the hot path. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from keyq.core.dispatch import Dispatcher
from keyq.core.limits import Limits
from keyq.core.runbook import ActiveRun
from keyq.core.states import QUEUED, RUNNING, RunState


def audit(
    runs: Iterable[ActiveRun],
    counts: Counter[RunState],
    limits: Limits,
    dispatcher: Dispatcher,
    holding: bool,
) -> list[str]:
    """What is wrong, one line each; [] when every invariant holds:

    * the counts by state agree with the runs;
    * exactly the RUNNING runs hold a slot;
    * every QUEUED run is in the dispatcher, and none could start now (no idle slot).
    """
    problems: list[str] = []
    runs = list(runs)
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
    return problems
