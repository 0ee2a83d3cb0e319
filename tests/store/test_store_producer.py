"""Producer: durable inserts, idempotency, all-or-nothing batches, and bounded lock waits."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import acquire, insert

from keyq.clock import FakeClock
from keyq.errors import DatabaseBusyError, PayloadError, StoreError, TriggerError
from keyq.ids import new_run_id
from keyq.producer import Producer
from keyq.registry import Task
from keyq.results import RunHandle
from keyq.store import db
from keyq.store.instance import InstanceLock

Rows = Callable[..., list[dict[str, Any]]]


def _queue_settings(database: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(
            "SELECT queue, concurrency_limit, total_limit, paused, updated_at FROM queue_settings"
        ).fetchall()
    finally:
        conn.close()


# --- durable inserts ------------------------------------------------------------------------------


def test_producer__batch_is_durable_and_in_order(
    producer: Producer, tasks: dict[str, Task], rows: Rows, clock: FakeClock, pokes: Any
) -> None:
    """A batch returns one handle per item, in order, each already visible on disk."""
    analyze = tasks["analyze"]
    requests = [(analyze, {"n": n}, {"concurrency_key": f"u-{n % 2}"}) for n in range(5)]
    handles = insert(producer, requests)

    stored = rows()
    assert [h.id for h in handles] == [r["id"] for r in stored]
    assert all(h.is_new and h.task == "analyze" for h in handles)
    assert [r["payload"] for r in stored] == [f'{{"n":{n}}}' for n in range(5)]
    assert [r["concurrency_key"] for r in stored] == ["u-0", "u-1", "u-0", "u-1", "u-0"]
    assert {r["status"] for r in stored} == {"queued"}
    assert {r["queue"] for r in stored} == {"user-analysis"}
    assert {r["created_at"] for r in stored} == {clock.now()}
    assert {r["attempt"] for r in stored} == {0}
    assert {r["started_at"] for r in stored} == {None}
    assert pokes.count == 0  # insert() alone never pokes; trigger_sync does


def test_producer__run_ids_are_unique_and_time_ordered(
    producer: Producer, tasks: dict[str, Task], clock: FakeClock
) -> None:
    """Run ids look like run_<26 chars>, never repeat, and sort by creation time."""
    first = insert(producer, [(tasks["email"], None, {})] * 3)
    clock.advance(1)
    second = insert(producer, [(tasks["email"], None, {})])
    ids = [h.id for h in first + second]
    assert len(set(ids)) == 4
    assert all(i.startswith("run_") and len(i) == 30 for i in ids)
    assert max(ids[:3]) < ids[3]


def test_producer__stored_row_matches_the_trigger(
    producer: Producer, tasks: dict[str, Task], rows: Rows, events: Any, clock: FakeClock
) -> None:
    """Every option of the trigger is stored, and the timeline starts with `triggered`."""
    (handle,) = insert(
        producer,
        [
            (
                tasks["analyze"],
                {"workoutId": "w-123"},
                {
                    "concurrency_key": "u-1",
                    "priority": 2,
                    "delay": "5m",
                    "max_attempts": 7,
                    "tags": ["vip"],
                    "idempotency_key": "w-123",
                },
            )
        ],
    )
    (row,) = rows()
    assert row["id"] == handle.id
    assert (row["task"], row["queue"], row["concurrency_key"]) == (
        "analyze",
        "user-analysis",
        "u-1",
    )
    assert (row["status"], row["priority"], row["max_attempts"]) == ("delayed", 2, 7)
    assert (row["tags"], row["idempotency_key"]) == ('["vip"]', "w-123")
    assert row["available_at"] == clock.now() + 300
    assert events(row) == [
        {"at": clock.now(), "from": None, "to": "delayed", "reason": "triggered", "attempt": 0}
    ]


def test_producer__trigger_sync_pokes_once_per_batch(
    producer: Producer, tasks: dict[str, Task], pokes: Any
) -> None:
    """After a commit the daemon is poked once, not once per run."""
    producer.trigger_sync([(tasks["email"], None, {})] * 4)
    assert pokes.count == 1


@pytest.mark.anyio
async def test_producer__submit_runs_is_durable_on_return(
    producer: Producer, tasks: dict[str, Task], rows: Rows, pokes: Any
) -> None:
    """The async direct path returns handles only once the runs are on disk, then pokes."""
    handles = await producer.submit_runs(producer.build([(tasks["email"], {"to": "a@b"}, {})]))
    assert [r["id"] for r in rows()] == [h.id for h in handles]
    assert pokes.count == 1


def test_producer__parent_id_is_stored(
    producer: Producer, tasks: dict[str, Task], rows: Rows
) -> None:
    """Runs triggered by a parent run remember it."""
    parent = new_run_id(1.0)
    insert(producer, [(tasks["email"], None, {})], parent_id=parent)
    assert rows()[0]["parent_id"] == parent


# --- idempotency ----------------------------------------------------------------------------------


def test_producer__idempotency_key_returns_the_existing_run(
    producer: Producer, tasks: dict[str, Task], rows: Rows, pokes: Any
) -> None:
    """A repeated idempotency key returns the first run's id with is_new False; stores nothing."""
    (first,) = producer.trigger_sync([(tasks["analyze"], {"v": 1}, {"idempotency_key": "k"})])
    (again,) = producer.trigger_sync([(tasks["analyze"], {"v": 2}, {"idempotency_key": "k"})])
    assert again == RunHandle(first.id, "analyze", is_new=False)
    assert [(r["id"], r["payload"]) for r in rows()] == [(first.id, '{"v":1}')]
    assert pokes.count == 1  # nothing new, nothing to poke about


def test_producer__idempotency_within_one_batch(
    producer: Producer, tasks: dict[str, Task], rows: Rows
) -> None:
    """Two items of one batch with the same key make one run; both handles carry its id."""
    a, b, c = insert(
        producer,
        [
            (tasks["analyze"], 1, {"idempotency_key": "k"}),
            (tasks["analyze"], 2, {"idempotency_key": "k"}),
            (tasks["analyze"], 3, {}),
        ],
    )
    assert (a.is_new, b.is_new, c.is_new) == (True, False, True)
    assert b.id == a.id
    assert [r["id"] for r in rows()] == [a.id, c.id]


def test_producer__idempotency_key_is_per_task(
    producer: Producer, tasks: dict[str, Task], rows: Rows
) -> None:
    """The same idempotency key on two different tasks makes two runs."""
    a, b = insert(
        producer,
        [
            (tasks["analyze"], None, {"idempotency_key": "k"}),
            (tasks["summarize"], None, {"idempotency_key": "k"}),
        ],
    )
    assert (a.is_new, b.is_new) == (True, True)
    assert a.id != b.id
    assert len(rows()) == 2


def test_producer__idempotency_across_producers(
    make_producer: Callable[..., Producer], tasks: dict[str, Task], rows: Rows
) -> None:
    """A web worker and the CLI (two producers) agree on an idempotent run."""
    (a,) = insert(make_producer(), [(tasks["email"], None, {"idempotency_key": "once"})])
    (b,) = insert(make_producer(), [(tasks["email"], None, {"idempotency_key": "once"})])
    assert b.id == a.id
    assert b.is_new is False
    assert len(rows()) == 1


# --- nothing stored on refusal --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (({1, 2}, {}), PayloadError),
        (("x" * 2000, {}), PayloadError),
        ((None, {"priority": 11}), TriggerError),
        ((None, {"colour": "red"}), TriggerError),
        ((None, {"queue": {"name": "q", "limit": 1}}), TriggerError),
    ],
)
def test_producer__one_bad_item_stores_nothing(
    make_producer: Callable[..., Producer],
    tasks: dict[str, Task],
    rows: Rows,
    database: Path,
    bad: tuple[Any, dict[str, Any]],
    error: type[Exception],
) -> None:
    """A batch with one invalid item is refused whole: no run, no queue override is stored."""
    producer = make_producer(max_payload_bytes=1000)
    (kept,) = insert(producer, [(tasks["email"], None, {})])
    good = (tasks["analyze"], {"ok": True}, {"queue": {"name": "free", "concurrency_limit": 1}})
    with pytest.raises(error):
        insert(producer, [good, (tasks["analyze"], *bad), good])
    assert [r["id"] for r in rows()] == [kept.id]
    assert _queue_settings(database) == []


def test_producer__database_failure_mid_batch_stores_nothing(
    producer: Producer, tasks: dict[str, Task], rows: Rows, database: Path
) -> None:
    """If the insert fails inside the transaction, earlier rows of the batch are rolled back."""
    insert(producer, [(tasks["email"], None, {})])
    conn = sqlite3.connect(database)
    conn.execute(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON runs WHEN NEW.payload = '\"bad\"' "
        "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    conn.close()
    with pytest.raises(StoreError, match="refused by test"):
        insert(producer, [(tasks["email"], "good", {}), (tasks["email"], "bad", {})])
    assert [r["payload"] for r in rows()] == ["null"]


# --- queue overrides ------------------------------------------------------------------------------


def test_producer__queue_override_writes_queue_settings(
    producer: Producer, tasks: dict[str, Task], rows: Rows, database: Path, clock: FakeClock
) -> None:
    """Triggering with a queue plus limit stores that limit durably for the daemon to apply."""
    insert(
        producer,
        [
            (tasks["analyze"], None, {"queue": {"name": "free-users", "concurrency_limit": 1}}),
            (tasks["analyze"], None, {"queue": {"name": "paid-users", "concurrency_limit": 10}}),
            (tasks["analyze"], None, {"queue": "plain"}),
        ],
    )
    assert [(r["queue"], r["queue_limit"]) for r in rows()] == [
        ("free-users", 1),
        ("paid-users", 10),
        ("plain", None),
    ]
    assert sorted(_queue_settings(database)) == [
        ("free-users", 1, None, 0, clock.now()),
        ("paid-users", 10, None, 0, clock.now()),
    ]


def test_producer__later_override_changes_the_limit_and_keeps_pause(
    producer: Producer, tasks: dict[str, Task], database: Path
) -> None:
    """A new trigger-time limit replaces the old one without unpausing a paused queue."""
    insert(
        producer, [(tasks["analyze"], None, {"queue": {"name": "free", "concurrency_limit": 1}})]
    )
    conn = sqlite3.connect(database)
    conn.execute("UPDATE queue_settings SET paused = 1, total_limit = 5")
    conn.commit()
    conn.close()
    insert(
        producer, [(tasks["analyze"], None, {"queue": {"name": "free", "concurrency_limit": 3}})]
    )
    assert [row[:4] for row in _queue_settings(database)] == [("free", 3, 5, 1)]


# --- concurrency and lock contention --------------------------------------------------------------


@pytest.fixture
def write_lock_holder(database: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock (BEGIN IMMEDIATE) until the test ends."""
    db.connect(database).close()  # the schema exists; only the write lock is contended
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def test_producer__lock_held_too_long_says_by_whom(
    make_producer: Callable[..., Producer],
    tasks: dict[str, Task],
    write_lock_holder: sqlite3.Connection,
    rows: Rows,
    database: Path,
) -> None:
    """When another writer holds the lock past lock_timeout, the error says how long and who."""
    producer = make_producer(lock_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(DatabaseBusyError) as info:
        insert(producer, [(tasks["email"], None, {})])
    waited = time.monotonic() - started
    message = str(info.value)
    assert "database is locked" not in message
    assert f"database {database} stayed locked for 0.2s" in message
    assert "another process held a write transaction" in message
    assert "no keyq daemon is running" in message
    assert "lock_timeout" in message
    assert 0.15 <= waited < 3.0
    write_lock_holder.execute("ROLLBACK")
    assert rows() == []


def test_producer__busy_error_names_the_daemon_pid(
    make_producer: Callable[..., Producer],
    tasks: dict[str, Task],
    write_lock_holder: sqlite3.Connection,
    database: Path,
) -> None:
    """With a daemon owning the database, the busy error names the daemon and its pid."""
    producer = make_producer(lock_timeout_s=0.1)
    with InstanceLock(database) as lock:
        acquire(lock)
        with pytest.raises(DatabaseBusyError) as info:
            insert(producer, [(tasks["email"], None, {})])
    assert f"the keyq daemon (pid {os.getpid()})" in str(info.value)


def test_producer__writer_waits_for_a_short_lock(
    producer: Producer, tasks: dict[str, Task], write_lock_holder: sqlite3.Connection, rows: Rows
) -> None:
    """A lock released within lock_timeout only delays the trigger; it does not fail it."""
    release = threading.Timer(0.1, write_lock_holder.execute, ("COMMIT",))
    release.start()
    try:
        (handle,) = insert(producer, [(tasks["email"], None, {})])
    finally:
        release.join()
    assert [r["id"] for r in rows()] == [handle.id]


def test_producer__many_producers_at_once_never_see_locked(
    make_producer: Callable[..., Producer], tasks: dict[str, Task], rows: Rows, database: Path
) -> None:
    """Eight producers inserting concurrently all succeed; every run is stored once."""
    db.connect(database).close()
    producers = [make_producer(durability="normal") for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(producers))

    def work(p: Producer, n: int) -> None:
        barrier.wait()
        try:
            for i in range(10):
                insert(p, [(tasks["email"], {"p": n, "i": i}, {})])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p, n)) for n, p in enumerate(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = rows()
    assert len(stored) == 80
    assert len({r["id"] for r in stored}) == 80
