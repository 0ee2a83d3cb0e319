"""Ceiling: how fast SQLite alone records runs here, the yardstick for every throughput figure.

A run costs keyq one INSERT (the trigger) and two UPDATEs (started, completed).
This writes exactly those statements (keyq's own named queries and row
encoding, on a database created by ``keyq.store.db.connect``: same schema, WAL,
``synchronous`` FULL for "full" and NORMAL for "normal") in batches of 1,000
runs: one transaction inserts a batch, a second marks it running, a third
completed, as a producer's batch and the daemon's two group commits would.
Parameters are built before the clock starts, so only SQLite and Python's
``sqlite3`` binding are timed: that is the ceiling for a Python program.

For context only, the same rows are also written with the rows generated in
SQL (one INSERT ... SELECT and two set-wise UPDATEs per batch, nothing bound
per run): SQLite's engine alone, without the per-statement cost of ``sqlite3``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from bench.common import Options, Result, Row, workspace
from keyq.core.model import Transition
from keyq.core.states import COMPLETED, QUEUED, RUNNING
from keyq.ids import new_run_id
from keyq.registry import Registry
from keyq.store import db
from keyq.store.codec import new_run_params, transition_params
from keyq.triggers import build_run

BATCH = 1000
DURABILITIES = ("full", "normal")
Params = list[tuple[Any, ...]]


def sizes(options: Options) -> tuple[int, int]:
    """(runs, trials): the ceiling is the best of ``trials`` fresh databases."""
    return (10_000, 2) if options.quick else (100_000, 3)


def run(options: Options, earlier: Mapping[str, Result]) -> Result:
    runs, trials = sizes(options)
    batches = build(runs)
    rates = {d: max(measure(d, batches) for _ in range(trials)) for d in DURABILITIES}
    engine = {d: max(measure_engine_only(d, runs) for _ in range(trials)) for d in DURABILITIES}
    rows = [
        Row(d, "keyq's statements via sqlite3 (the ceiling)", r, "runs/s") for d, r in rates.items()
    ]
    rows += [
        Row(d, "rows generated in SQL (engine only, context)", r, "runs/s")
        for d, r in engine.items()
    ]
    notes = [
        f"{runs:,} runs, best of {trials} fresh databases per durability; 3 transactions "
        f"per batch of {BATCH:,} runs (1 INSERT + 2 UPDATEs per run).",
    ]
    details = {"runs": runs, "batch": BATCH, "rates": rates, "engine_only": engine}
    title = "Ceiling: SQLite alone, keyq's statements, batches of 1,000 runs"
    return Result("ceiling", title, rows, notes, details)


Batches = list[tuple[Params, Params, Params]]


def build(runs: int) -> Batches:
    """The parameters of every statement, batch by batch."""
    return [_batch(first, min(BATCH, runs - first)) for first in range(0, runs, BATCH)]


def measure(durability: str, batches: Batches) -> float:
    """Runs per second SQLite records on a fresh database with this durability."""
    runs = sum(len(inserted) for inserted, _, _ in batches)
    with workspace() as tmp:
        conn = db.connect(tmp / "ceiling.db", durability)
        try:
            return runs / _write(conn, batches)
        finally:
            conn.close()


def _write(conn: sqlite3.Connection, batches: Batches) -> float:
    insert, update = db.QUERIES["insert_run"], db.QUERIES["apply_transition"]
    started = time.perf_counter()
    for inserted, running, completed in batches:
        for sql, params in ((insert, inserted), (update, running), (update, completed)):
            with db.transaction(conn):
                conn.executemany(sql, params)
    return time.perf_counter() - started


_registry = Registry()
_task = _registry.task(id="ceiling")(lambda payload, ctx: None)


def _batch(first: int, count: int) -> tuple[Params, Params, Params]:
    """Parameters for runs ``first+1 .. first+count`` (their seq on a fresh database)."""
    now = time.time()
    inserted, running, completed = [], [], []
    for seq in range(first + 1, first + count + 1):
        new = build_run(_task, seq, {}, run_id=new_run_id(now), now=now, max_payload_bytes=2**20)
        inserted.append(new_run_params(new))
        start = Transition(
            new.id, seq, new.task, new.queue, None, now, QUEUED, RUNNING, "started", 1
        )
        running.append(transition_params(start))
        end = Transition(
            new.id,
            seq,
            new.task,
            new.queue,
            None,
            now,
            RUNNING,
            COMPLETED,
            "completed",
            1,
            result="null",
        )
        completed.append(transition_params(end))
    return inserted, running, completed


# --- context: the engine without per-run statements ---------------------------------------------

_INSERT_SET = """
INSERT INTO runs (id, task, queue, concurrency_key, status, priority, max_attempts, payload,
                  tags, idempotency_key, queue_limit, parent_id, created_at, available_at, events)
WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
SELECT printf('run_01m82rhmjrzpswa78d%08d', i), 'ceiling', 'ceiling', NULL, 'queued', 5, 3,
       CAST(i AS TEXT), '[]', NULL, NULL, NULL, ?3, ?3,
       '{"at":' || ?3 || ',"from":null,"to":"queued","reason":"triggered","attempt":0}' || char(10)
FROM n"""
_UPDATE_SET = """
UPDATE runs SET status = ?3, attempt = 1, started_at = COALESCE(started_at, ?4),
                finished_at = ?5, result = COALESCE(?6, result), error = COALESCE(NULL, error),
                available_at = COALESCE(NULL, available_at), waitpoint = NULL,
                events = events || '{"at":' || ?4 || ',"from":"' || status || '","to":"' || ?3
                         || '","reason":"x","attempt":1}' || char(10)
WHERE seq BETWEEN ?1 AND ?2"""


def measure_engine_only(durability: str, runs: int) -> float:
    """Runs per second with the same rows and transactions, generated inside SQLite."""
    with workspace() as tmp:
        conn = db.connect(tmp / "engine.db", durability)
        try:
            now, started = time.time(), time.perf_counter()
            for first in range(1, runs + 1, BATCH):
                last = min(first + BATCH, runs + 1) - 1
                for sql, params in (
                    (_INSERT_SET, (first, last, now)),
                    (_UPDATE_SET, (first, last, "running", now, None, None)),
                    (_UPDATE_SET, (first, last, "completed", now, now, "null")),
                ):
                    with db.transaction(conn):
                        conn.execute(sql, params)
            return runs / (time.perf_counter() - started)
        finally:
            conn.close()
