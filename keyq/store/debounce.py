"""Debounced triggers stored while no daemon runs: each folds into the DELAYED run of
its task and debounce key, or is a new run.

While a daemon runs, it decides this itself (``Engine.debounce``: it holds that run
in memory). A client writes here only holding the instance lock
(``LocalStore.debounce_offline``), so a daemon cannot start halfway through, and
the two never fold into the same row at once. The rule is the engine's: the new
payload replaces the run's, and its start moves to the trigger's, capped at the
run's ``debounce_until``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from keyq.core.model import NewRun, RunId
from keyq.core.states import DELAYED, Reason
from keyq.store.codec import event_line
from keyq.store.db import QUERIES as Q
from keyq.store.runs import insert_runs


def store_debounced(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> list[RunId]:
    """Store the runs in order inside the caller's transaction; the run standing for each.

    One at a time: a later run of the batch may fold into an earlier one.
    """
    standing: list[RunId] = []
    for run in runs:
        folded = _fold(conn, run) if run.debounce_key is not None else None
        standing.append(folded if folded is not None else insert_runs(conn, [run])[0])
    return standing


def _fold(conn: sqlite3.Connection, run: NewRun) -> RunId | None:
    """Fold ``run`` into its key's DELAYED run; that run's id, or None if there is none."""
    row = conn.execute(Q["find_debounced"], (run.task, run.debounce_key)).fetchone()
    if row is None:
        return None
    seq, run_id, until = row
    if run_id == run.id:
        return run.id  # this very trigger, stored before (its answer was lost)
    at = run.available_at if until is None else min(run.available_at, until)
    line = event_line(run.created_at, DELAYED, DELAYED, Reason.DEBOUNCED, 0)
    conn.execute(Q["fold_debounced"], (run.payload, at, line, seq))
    return str(run_id)
