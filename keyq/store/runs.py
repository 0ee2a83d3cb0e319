"""Writing runs: the one insert path and the one path for a step's transitions.

Every process that writes runs goes through here, inside a transaction its
caller opened: a client storing triggers directly, the daemon storing runs
handed in together with their first transitions, and an operator's cancel
while no daemon runs. Synchronous and connection-level: the daemon's store
runs these on its own connection, inline or in its worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from keyq.core.journal import Entry
from keyq.core.model import CancelRequest, NewRun, RunId, Step, TokenExpiry, Transition
from keyq.store.codec import new_run_params, transition_params
from keyq.store.db import QUERIES as Q

JournalWrite = tuple[RunId, Entry, float]


def insert_runs(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> list[RunId]:
    """Insert validated runs in one ``executemany``; for each run in order, the id of
    the run that stands for it.

    That is its own id, unless its idempotency key was used before for its task
    (in the database or earlier in ``runs``): then the earlier run stands for it
    and it is not stored. A run whose id is already stored (stored by the other
    path) keeps that row. A trigger-time queue limit is stored as that queue's
    runtime limit.
    """
    standing, fresh = _resolve_idempotency(conn, runs)
    conn.executemany(Q["insert_run"], [new_run_params(r) for r in fresh])
    _store_queue_limits(conn, fresh)
    _claim_ticks(conn, fresh)
    return standing


def _insert_with_seqs(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> dict[RunId, int]:
    """:func:`insert_runs`, one statement per run: the seq of each run stored, by id."""
    _, fresh = _resolve_idempotency(conn, runs)
    seqs = {r.id: _insert_one(conn, r) for r in fresh}
    _store_queue_limits(conn, fresh)
    _claim_ticks(conn, fresh)
    return seqs


def _resolve_idempotency(
    conn: sqlite3.Connection, runs: Sequence[NewRun]
) -> tuple[list[RunId], list[NewRun]]:
    """The run standing for each run, and the runs to store."""
    if all(run.idempotency_key is None for run in runs):  # the common case: all stand
        return [run.id for run in runs], list(runs)
    standing: list[RunId] = []
    fresh: list[NewRun] = []
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        if run.idempotency_key is not None:
            scope = (run.task, run.idempotency_key)
            existing = seen.get(scope) or _find_idempotent(conn, scope)
            if existing is not None:
                standing.append(existing)
                continue
            seen[scope] = run.id
        fresh.append(run)
        standing.append(run.id)
    return standing, fresh


def _store_queue_limits(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> None:
    overrides = {
        r.queue: (r.queue, r.queue_limit, r.created_at) for r in runs if r.queue_limit is not None
    }
    if overrides:
        conn.executemany(Q["set_queue_limit_from_trigger"], overrides.values())


def _claim_ticks(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> None:
    """A scheduled run's row is its tick's claim (a unique index); the schedule
    remembers its last claimed tick in the same transaction."""
    claims = [(r.schedule.id, r.schedule.tick, r.id, r.created_at) for r in runs if r.schedule]
    if claims:
        conn.executemany(Q["claim_schedule_tick"], claims)


def _find_idempotent(conn: sqlite3.Connection, scope: tuple[str, str]) -> str | None:
    row = conn.execute(Q["find_idempotent"], scope).fetchone()
    return row[0] if row else None


def _insert_one(conn: sqlite3.Connection, run: NewRun) -> int:
    cursor = conn.execute(Q["insert_run"], new_run_params(run))
    if cursor.rowcount == 1 and cursor.lastrowid is not None:
        return cursor.lastrowid
    (seq,) = conn.execute(Q["seq_of_run"], (run.id,)).fetchone()  # stored already
    return int(seq)


def write_step(
    conn: sqlite3.Connection,
    step: Step,
    entries: Sequence[JournalWrite] = (),
    inserts: Sequence[NewRun] = (),
    rate_horizon_s: float = 0.0,
) -> dict[RunId, int]:
    """Store runs handed in, then a step's transitions (in order), cancel requests,
    journal entries, timed-out tokens and the starts rate limits counted (forgetting
    those older than ``rate_horizon_s``, the longest window); the seqs of the runs
    inserted, by id.

    Runs handed in are known to the engine with seq 0 before their rows exist:
    their transitions and cancel requests here say 0, and get the seq their
    INSERT was given. A run whose id is already stored is not inserted again:
    its transitions apply to that row.
    """
    params = [transition_params(t) for t in step.transitions]
    seqs = _insert_with_seqs(conn, inserts) if inserts else {}
    conn.executemany(Q["apply_transition"], _with_seqs(params, seqs, step.transitions))
    _mark_cancels(conn, step.cancel_requests, seqs)
    if entries:
        journal = [(run_id, e.position, e.kind, e.name, e.data, at) for run_id, e, at in entries]
        conn.executemany(Q["insert_journal_entry"], journal)
    _time_out(conn, step.expired_tokens)
    if step.counted_starts:
        counted = [(c.queue, c.concurrency_key, c.at) for c in step.counted_starts]
        conn.executemany(Q["insert_rate_start"], counted)
        conn.execute(Q["forget_rate_starts"], (step.counted_starts[0].at - rate_horizon_s,))
    return seqs


def rows_written(step: Step, entries: Sequence[JournalWrite], inserts: Sequence[NewRun]) -> int:
    """How many rows :func:`write_step` writes (the daemon sends big steps to a thread)."""
    return (
        len(inserts)
        + len(step.transitions)
        + len(step.cancel_requests)
        + len(entries)
        + len(step.counted_starts)
    )


def _with_seqs(
    params: list[tuple[Any, ...]], seqs: dict[RunId, int], transitions: Sequence[Transition]
) -> list[tuple[Any, ...]]:
    """Transition params with each seq 0 (a run handed in) replaced by its row's seq."""
    if not seqs:
        return params
    return [
        p if p[-1] else (*p[:-1], seqs[t.run_id]) for p, t in zip(params, transitions, strict=True)
    ]


def _mark_cancels(
    conn: sqlite3.Connection, requests: Sequence[CancelRequest], seqs: dict[RunId, int]
) -> None:
    if requests:
        marks = [(c.at, c.seq or seqs[c.run_id]) for c in requests]
        conn.executemany(Q["mark_cancel_requested"], marks)


def _time_out(conn: sqlite3.Connection, expired: Sequence[TokenExpiry]) -> None:
    if expired:
        conn.executemany(Q["time_out_token"], [(e.at, e.token_id) for e in expired])
