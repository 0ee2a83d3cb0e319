"""Operator writes without a daemon: cancel a stored run, change limits and pauses durably."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import insert

from keyq.clock import FakeClock
from keyq.config import Config
from keyq.errors import RunNotFoundError, RunStateError
from keyq.producer import Producer
from keyq.registry import Task
from keyq.store import admin, db

Rows = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def conn(config: Config) -> Iterator[sqlite3.Connection]:
    connection = db.connect(config.database)
    try:
        yield connection
    finally:
        connection.close()


def _set_status(database: Path, run_id: str, status: str) -> None:
    raw = sqlite3.connect(database)
    raw.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
    raw.commit()
    raw.close()


@pytest.mark.parametrize("delay", [None, "5m"])
def test_cancel_stored__cancels_an_active_run(
    producer: Producer,
    tasks: dict[str, Task],
    conn: sqlite3.Connection,
    rows: Rows,
    events: Any,
    clock: FakeClock,
    delay: str | None,
) -> None:
    """A queued or delayed run becomes canceled, with finished_at and a timeline entry."""
    (handle, other) = insert(producer, [(tasks["email"], None, {"delay": delay})] * 2)
    was = "delayed" if delay else "queued"
    clock.advance(42)
    admin.cancel_stored(conn, handle.id, clock.now())

    row, untouched = rows()
    assert (row["status"], row["finished_at"], row["waitpoint"]) == ("canceled", clock.now(), None)
    assert events(row)[-1] == {
        "at": clock.now(),
        "from": was,
        "to": "canceled",
        "reason": "canceled",
        "attempt": 0,
    }
    assert len(events(row)) == 2
    assert (untouched["id"], untouched["status"]) == (other.id, was)


@pytest.mark.parametrize("final", ["completed", "failed", "canceled"])
def test_cancel_stored__refuses_a_final_run(
    producer: Producer,
    tasks: dict[str, Task],
    conn: sqlite3.Connection,
    rows: Rows,
    database: Path,
    clock: FakeClock,
    final: str,
) -> None:
    """Canceling a finished run raises RunStateError saying its state, and changes nothing."""
    (handle,) = insert(producer, [(tasks["email"], None, {})])
    _set_status(database, handle.id, final)
    before = rows()
    with pytest.raises(RunStateError) as info:
        admin.cancel_stored(conn, handle.id, clock.now() + 1)
    assert str(info.value) == f"run {handle.id} is already {final}"
    assert rows() == before
    assert conn.in_transaction is False  # the refused cancel did not leave a transaction open


def test_cancel_stored__unknown_id(conn: sqlite3.Connection, clock: FakeClock) -> None:
    """Canceling an id that does not exist raises RunNotFoundError naming it."""
    with pytest.raises(RunNotFoundError, match="no run with id 'run_nope'"):
        admin.cancel_stored(conn, "run_nope", clock.now())
    assert conn.in_transaction is False


def test_cancel_stored__running_run_keeps_its_attempt(
    producer: Producer,
    tasks: dict[str, Task],
    conn: sqlite3.Connection,
    rows: Rows,
    events: Any,
    database: Path,
    clock: FakeClock,
) -> None:
    """A run recorded as running (daemon gone) is canceled and its timeline keeps the attempt."""
    (handle,) = insert(producer, [(tasks["email"], None, {})])
    raw = sqlite3.connect(database)
    raw.execute(
        "UPDATE runs SET status = 'running', attempt = 2, started_at = 5 WHERE id = ?", (handle.id,)
    )
    raw.commit()
    raw.close()
    admin.cancel_stored(conn, handle.id, clock.now())
    (row,) = rows()
    assert (row["status"], row["started_at"], row["attempt"]) == ("canceled", 5, 2)
    assert events(row)[-1]["from"] == "running"
    assert events(row)[-1]["attempt"] == 2


# --- runtime settings -----------------------------------------------------------------------------


def _queue_row(conn: sqlite3.Connection, queue: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT concurrency_limit, total_limit, paused, updated_at FROM queue_settings "
        "WHERE queue = ?",
        (queue,),
    ).fetchone()


def _key_row(conn: sqlite3.Connection, queue: str, key: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT concurrency_limit, paused, updated_at FROM key_settings "
        "WHERE queue = ? AND concurrency_key = ?",
        (queue, key),
    ).fetchone()


def test_update_queue_settings__changes_only_the_given_fields(conn: sqlite3.Connection) -> None:
    """Setting a limit keeps the pause, pausing keeps the limits, and None clears a limit."""
    admin.update_queue_settings(conn, "q", 1.0, concurrency_limit=3, total_limit=30)
    assert _queue_row(conn, "q") == (3, 30, 0, 1.0)
    admin.update_queue_settings(conn, "q", 2.0, paused=True)
    assert _queue_row(conn, "q") == (3, 30, 1, 2.0)
    admin.update_queue_settings(conn, "q", 3.0, concurrency_limit=None)
    assert _queue_row(conn, "q") == (None, 30, 1, 3.0)
    admin.update_queue_settings(conn, "q", 4.0, paused=False)
    assert _queue_row(conn, "q") == (None, 30, 0, 4.0)
    assert _queue_row(conn, "other") is None


def test_update_key_settings__changes_only_the_given_fields(conn: sqlite3.Connection) -> None:
    """One key's limit and pause are set independently and do not touch other keys."""
    admin.update_key_settings(conn, "q", "u-1", 1.0, concurrency_limit=10)
    admin.update_key_settings(conn, "q", "u-1", 2.0, paused=True)
    admin.update_key_settings(conn, "q", "u-2", 3.0, paused=True)
    assert _key_row(conn, "q", "u-1") == (10, 1, 2.0)
    assert _key_row(conn, "q", "u-2") == (None, 1, 3.0)
    admin.update_key_settings(conn, "q", "u-1", 4.0, concurrency_limit=None)
    assert _key_row(conn, "q", "u-1") == (None, 1, 4.0)


def test_cancel_stored__cancels_active_children_and_theirs(
    producer: Producer,
    tasks: dict[str, Task],
    conn: sqlite3.Connection,
    rows: Rows,
    clock: FakeClock,
) -> None:
    """With the daemon stopped, cancelling a parent cancels its active descendants, as the
    daemon would; a final child and unrelated runs keep their status."""
    (parent, other) = insert(producer, [(tasks["email"], None, {})] * 2)
    (child, done) = insert(producer, [(tasks["email"], None, {})] * 2, parent_id=parent.id)
    (grandchild,) = insert(producer, [(tasks["email"], None, {})], parent_id=child.id)
    _set_status(conn_path(conn), done.id, "completed")
    admin.cancel_stored(conn, parent.id, clock.now())

    status = {r["id"]: r["status"] for r in rows()}
    assert status == {
        parent.id: "canceled",
        other.id: "queued",
        child.id: "canceled",
        done.id: "completed",
        grandchild.id: "canceled",
    }


def conn_path(conn: sqlite3.Connection) -> Path:
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])
