"""Database, the daemon's side: recovery snapshot, ingest by seq, grouped transition commits."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from support import insert

from keyq.clock import FakeClock
from keyq.config import Config
from keyq.core.model import (
    ChildResult,
    ErrorInfo,
    RunSpec,
    Step,
    Transition,
    WaitChildren,
    WaitUntil,
)
from keyq.core.states import (
    CANCELED,
    COMPLETED,
    DELAYED,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    RunState,
)
from keyq.errors import StoreError
from keyq.ids import new_run_id
from keyq.producer import Producer
from keyq.registry import Task
from keyq.store.database import INLINE_ROWS, Database

PARENT = new_run_id(1.0)

pytestmark = pytest.mark.anyio

Rows = Callable[..., list[dict[str, Any]]]


async def runs_and_seq(store: Database) -> tuple[list[RunSpec], int]:
    snapshot, runs = await store.load_active(list)
    return runs, snapshot.last_seq


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Database]:
    opened = await Database.open(config)
    try:
        yield opened
    finally:
        await opened.close()


def _trigger(producer: Producer, task: Task, n: int, **options: Any) -> list[str]:
    handles = insert(producer, [(task, {"n": i}, options) for i in range(n)])
    return [h.id for h in handles]


def _move(
    spec: RunSpec, at: float, from_: RunState, to: RunState, reason: str, attempt: int, **kw: Any
) -> Transition:
    return Transition(
        run_id=spec.id,
        seq=spec.seq,
        task=spec.task,
        queue=spec.queue,
        concurrency_key=spec.concurrency_key,
        at=at,
        from_=from_,
        to=to,
        reason=reason,
        attempt=attempt,
        **kw,
    )


# --- open -----------------------------------------------------------------------------------------


async def test_open__creates_and_migrates_a_new_database(config: Config) -> None:
    """Opening a store on a missing file creates it, migrated and empty."""
    store = await Database.open(config)
    try:
        assert await runs_and_seq(store) == ([], 0)
        assert await store.load_new(0, 100) == []
    finally:
        await store.close()
    assert config.database.is_file()


async def test_open__refuses_a_newer_schema(config: Config) -> None:
    """The daemon refuses a database written by a newer keyq, saying to upgrade."""
    config.database.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(config.database)
    raw.execute("PRAGMA user_version = 999")
    raw.close()
    with pytest.raises(StoreError, match="upgrade keyq"):
        await Database.open(config)


# --- loading --------------------------------------------------------------------------------------


async def test_load_active__only_non_final_runs_and_the_max_seq(
    producer: Producer, tasks: dict[str, Task], store: Database, clock: FakeClock
) -> None:
    """Recovery loads queued/delayed/running/waiting runs only, and the highest seq of all runs."""
    ids = _trigger(producer, tasks["analyze"], 7, concurrency_key="u-1")
    active, max_seq = await runs_and_seq(store)
    by_id = {s.id: s for s in active}
    assert list(by_id) == ids
    t = clock.now() + 1
    s = [by_id[i] for i in ids]
    await commit(
        store,
        [
            _move(s[1], t, QUEUED, RUNNING, "started", 1),
            _move(s[2], t, QUEUED, RUNNING, "started", 1),
            _move(s[2], t, RUNNING, WAITING, "wait", 1, wait=WaitUntil(t + 60)),
            _move(s[3], t, QUEUED, CANCELED, "canceled", 0),
            _move(s[4], t, QUEUED, RUNNING, "started", 1),
            _move(s[4], t, RUNNING, FAILED, "failed", 1, error=ErrorInfo("E", "m")),
            _move(s[6], t, QUEUED, RUNNING, "started", 1),
            _move(s[6], t, RUNNING, COMPLETED, "completed", 1, result="1"),
        ],
    )

    active, max_seq = await runs_and_seq(store)
    assert [(a.id, a.state) for a in active] == [
        (ids[0], QUEUED),
        (ids[1], RUNNING),
        (ids[2], WAITING),
        (ids[5], QUEUED),
    ]
    assert max_seq == s[6].seq  # the newest run is final, but still counts for ingest
    assert active[2].wait == WaitUntil(t + 60)
    assert active[1].attempt == 1


async def test_load_active__spec_carries_every_stored_field(
    producer: Producer, tasks: dict[str, Task], store: Database, clock: FakeClock
) -> None:
    """A recovered run has the task, queue, key, priority, payload, attempts and timing stored."""
    (run_id,) = insert(
        producer,
        [
            (
                tasks["analyze"],
                {"w": 1},
                {
                    "concurrency_key": "u-9",
                    "priority": 3,
                    "delay": 10,
                    "max_attempts": 4,
                    "queue": {"name": "free", "concurrency_limit": 1},
                },
            )
        ],
        parent_id=PARENT,
    )
    (spec,), max_seq = await runs_and_seq(store)
    assert spec == RunSpec(
        id=run_id.id,
        seq=max_seq,
        task="analyze",
        queue="free",
        concurrency_key="u-9",
        priority=3,
        payload='{"w":1}',
        max_attempts=4,
        state=DELAYED,
        attempt=0,
        available_at=clock.now() + 10,
        created_at=clock.now(),
        queue_limit=1,
        parent_id=PARENT,
        wait=None,
    )


async def test_load_new__only_newer_rows_in_order(
    producer: Producer, tasks: dict[str, Task], store: Database
) -> None:
    """Ingest reads the rows after a seq, oldest first, at most `limit` of them."""
    first = _trigger(producer, tasks["email"], 3)
    _, seen = await runs_and_seq(store)
    later = _trigger(producer, tasks["analyze"], 4)

    new = await store.load_new(seen, 100)
    assert [n.id for n in new] == later
    assert [n.seq for n in new] == sorted(n.seq for n in new)
    assert all(n.seq > seen for n in new)
    assert [n.id for n in await store.load_new(0, 2)] == first[:2]
    assert [n.id for n in await store.load_new(new[1].seq, 100)] == later[2:]
    assert await store.load_new(new[-1].seq, 100) == []


async def test_load_new__sees_rows_committed_by_another_producer_after_open(
    make_producer: Callable[..., Producer], tasks: dict[str, Task], store: Database
) -> None:
    """Rows inserted by another process after the daemon opened the file are found."""
    _, seen = await runs_and_seq(store)
    ids = _trigger(make_producer(), tasks["email"], 2)
    assert [n.id for n in await store.load_new(seen, 10)] == ids


# --- commit ---------------------------------------------------------------------------------------


async def test_commit__many_transitions_of_many_runs_in_one_call(
    producer: Producer,
    tasks: dict[str, Task],
    store: Database,
    rows: Rows,
    events: Any,
    clock: FakeClock,
) -> None:
    """One commit applies every transition in order: final states, timestamps, results, events."""
    _trigger(producer, tasks["analyze"], 2, concurrency_key="u-1")
    (a, b), _ = await runs_and_seq(store)
    t0 = clock.now()
    boom = ErrorInfo("ValueError", "bad input", "Traceback ...")
    await commit(
        store,
        [
            _move(a, t0 + 1, QUEUED, RUNNING, "started", 1),
            _move(b, t0 + 1, QUEUED, RUNNING, "started", 1),
            _move(a, t0 + 2, RUNNING, COMPLETED, "completed", 1, result='{"ok":true}'),
            _move(b, t0 + 3, RUNNING, DELAYED, "retry", 1, error=boom, available_at=t0 + 13),
        ],
    )

    row_a, row_b = rows()
    assert (row_a["status"], row_a["attempt"]) == ("completed", 1)
    assert (row_a["started_at"], row_a["finished_at"]) == (t0 + 1, t0 + 2)
    assert json.loads(row_a["result"]) == {"ok": True}
    assert row_a["error"] is None
    assert [(e["from"], e["to"], e["reason"], e["at"]) for e in events(row_a)] == [
        (None, "queued", "triggered", t0),
        ("queued", "running", "started", t0 + 1),
        ("running", "completed", "completed", t0 + 2),
    ]

    assert (row_b["status"], row_b["started_at"], row_b["finished_at"]) == ("delayed", t0 + 1, None)
    assert row_b["available_at"] == t0 + 13
    assert json.loads(row_b["error"]) == {
        "type": "ValueError",
        "message": "bad input",
        "traceback": "Traceback ...",
    }
    assert events(row_b)[-1] == {
        "at": t0 + 3,
        "from": "running",
        "to": "delayed",
        "reason": "retry",
        "attempt": 1,
        "error": {"type": "ValueError", "message": "bad input"},
    }


@pytest.mark.parametrize("runs", [3, INLINE_ROWS + 1], ids=["inline", "worker-thread"])
async def test_commit__small_and_large_commits_land_the_same(
    producer: Producer,
    tasks: dict[str, Task],
    store: Database,
    rows: Rows,
    clock: FakeClock,
    runs: int,
) -> None:
    """A commit small enough to run inline and one sent to the worker thread store alike."""
    _trigger(producer, tasks["email"], runs)
    specs, _ = await runs_and_seq(store)
    t0 = clock.now()
    await commit(store, [_move(s, t0 + 1, QUEUED, RUNNING, "started", 1) for s in specs])
    assert {(r["status"], r["started_at"]) for r in rows()} == {("running", t0 + 1)}


@pytest.mark.timeout(15)  # an inline wait for the lock would block the loop for 30 s
async def test_commit__waits_for_another_process_lock_without_blocking_the_loop(
    producer: Producer,
    tasks: dict[str, Task],
    database: Path,
    config: Config,
    rows: Rows,
    clock: FakeClock,
) -> None:
    """While another connection holds the write lock, a small commit does not block the
    event loop waiting for it: it waits in the worker thread, and lands once the lock
    is released."""
    _trigger(producer, tasks["email"], 1)
    store = await Database.open(replace(config, lock_timeout_s=30.0))
    try:
        (spec,), _ = await runs_and_seq(store)
        other = sqlite3.connect(database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        committed = anyio.Event()

        async def record() -> None:
            await commit(store, [_move(spec, clock.now(), QUEUED, RUNNING, "started", 1)])
            committed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(record)
            # Reached only if the commit left the loop free while the lock is held.
            await wait_all_tasks_blocked()
            assert not committed.is_set()
            assert rows()[0]["status"] == "queued"
            other.execute("COMMIT")
            other.close()
        assert rows()[0]["status"] == "running"
    finally:
        await store.close()


async def test_commit__started_once_error_kept_finished_on_final(
    producer: Producer, tasks: dict[str, Task], store: Database, rows: Rows, events: Any
) -> None:
    """started_at is the first start; the last error survives a retry; finished_at marks the end."""
    _trigger(producer, tasks["email"], 1)
    ((run,), _) = await runs_and_seq(store)
    first = ErrorInfo("TimeoutError", "attempt 1 timed out")
    last = ErrorInfo("RuntimeError", "attempt 2 broke")
    steps = [
        _move(run, 10.0, QUEUED, RUNNING, "started", 1),
        _move(run, 11.0, RUNNING, DELAYED, "retry", 1, error=first, available_at=20.0),
        _move(run, 20.0, DELAYED, QUEUED, "delay over", 1),
        _move(run, 21.0, QUEUED, RUNNING, "started", 2),
    ]
    for step in steps:  # separate wake-ups, separate commits
        await commit(store, [step])
    (row,) = rows()
    assert (row["status"], row["attempt"], row["started_at"]) == ("running", 2, 10.0)
    assert row["finished_at"] is None
    assert json.loads(row["error"])["message"] == "attempt 1 timed out"

    await commit(store, [_move(run, 25.0, RUNNING, FAILED, "failed", 2, error=last)])
    (row,) = rows()
    assert (row["status"], row["started_at"], row["finished_at"]) == ("failed", 10.0, 25.0)
    assert json.loads(row["error"])["message"] == "attempt 2 broke"
    assert [e["to"] for e in events(row)] == [
        "queued",
        "running",
        "delayed",
        "queued",
        "running",
        "failed",
    ]
    assert [e["attempt"] for e in events(row)] == [0, 1, 1, 1, 2, 2]


async def test_commit__waitpoint_is_stored_and_cleared(
    producer: Producer, tasks: dict[str, Task], store: Database
) -> None:
    """A waiting run's waitpoint is stored for recovery and cleared when it resumes."""
    _trigger(producer, tasks["email"], 1)
    ((run,), _) = await runs_and_seq(store)
    wait = WaitChildren(("run_child1", "run_child2"))
    await commit(
        store,
        [
            _move(run, 1.0, QUEUED, RUNNING, "started", 1),
            _move(run, 2.0, RUNNING, WAITING, "trigger_and_wait", 1, wait=wait),
        ],
    )
    ((recovered,), _) = await runs_and_seq(store)
    assert (recovered.state, recovered.wait) == (WAITING, wait)

    await commit(store, [_move(run, 3.0, WAITING, QUEUED, "children done", 1)])
    ((resumed,), _) = await runs_and_seq(store)
    assert (resumed.state, resumed.wait) == (QUEUED, None)


async def test_commit__empty_batch_is_harmless(store: Database) -> None:
    """Committing no transitions is a no-op."""
    await commit(store, [])
    assert await runs_and_seq(store) == ([], 0)


async def test_commit__failure_rolls_back_the_whole_group(
    producer: Producer, tasks: dict[str, Task], store: Database, rows: Rows, database: Path
) -> None:
    """If one transition of a group fails to write, none of the group is stored."""
    _trigger(producer, tasks["email"], 2)
    (a, b), _ = await runs_and_seq(store)
    conn = sqlite3.connect(database)
    conn.execute(
        "CREATE TRIGGER refuse_b BEFORE UPDATE ON runs WHEN NEW.seq = "
        f"{b.seq} BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    conn.close()
    with pytest.raises(StoreError, match="refused by test"):
        await commit(
            store,
            [
                _move(a, 1.0, QUEUED, RUNNING, "started", 1),
                _move(b, 1.0, QUEUED, RUNNING, "started", 1),
            ],
        )
    assert [r["status"] for r in rows()] == ["queued", "queued"]
    await commit(store, [_move(a, 2.0, QUEUED, RUNNING, "started", 1)])  # the store still works
    assert [r["status"] for r in rows()] == ["running", "queued"]


# --- outcomes and settings ------------------------------------------------------------------------


async def test_outcome__reports_the_stored_result(
    producer: Producer, tasks: dict[str, Task], store: Database
) -> None:
    """A parent sees its child's status, result text and error as stored."""
    _trigger(producer, tasks["email"], 2)
    (a, b), _ = await runs_and_seq(store)
    oops = ErrorInfo("KeyError", "'x'")
    await commit(
        store,
        [
            _move(a, 1.0, QUEUED, RUNNING, "started", 1),
            _move(a, 2.0, RUNNING, COMPLETED, "completed", 1, result="[1,2]"),
            _move(b, 1.0, QUEUED, RUNNING, "started", 1),
            _move(b, 2.0, RUNNING, FAILED, "failed", 1, error=oops),
        ],
    )
    assert await store.outcome(a.id) == ChildResult(a.id, COMPLETED, "[1,2]", None)
    assert await store.outcome(b.id) == ChildResult(b.id, FAILED, None, oops)
    assert await store.outcome("run_missing") is None


async def test_settings__returns_runtime_overrides(
    producer: Producer, tasks: dict[str, Task], store: Database, database: Path
) -> None:
    """Queue and key overrides stored by producers and operators are read back by name."""
    insert(producer, [(tasks["email"], None, {"queue": {"name": "free", "concurrency_limit": 1}})])
    conn = sqlite3.connect(database)
    conn.execute(
        "INSERT INTO key_settings (queue, concurrency_key, concurrency_limit, paused, updated_at) "
        "VALUES ('free', 'u-1', 5, 1, 0)"
    )
    conn.commit()
    conn.close()
    queues, keys = await store.settings()
    assert queues == [
        {
            "queue": "free",
            "concurrency_limit": 1,
            "total_limit": None,
            "paused": 0,
            "rate_limit": None,
            "rate_limit_total": None,
        }
    ]
    assert keys == [
        {
            "queue": "free",
            "concurrency_key": "u-1",
            "concurrency_limit": 5,
            "paused": 1,
            "rate_limit": None,
        }
    ]


async def commit(store: Database, transitions: list[Transition]) -> None:
    """One step of these transitions, recorded as the daemon records it."""
    await store.commit(Step(tuple(transitions)))
