"""Inspector: runs as data (SPEC §9) and counts, read straight from the database."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from support import insert

from keyq.clock import FakeClock
from keyq.config import Config
from keyq.core.model import ErrorInfo, Transition
from keyq.core.states import COMPLETED, DELAYED, FAILED, QUEUED, RUNNING, WAITING, RunState
from keyq.errors import RunNotFoundError
from keyq.producer import Producer
from keyq.registry import Task
from keyq.store import db
from keyq.store.codec import transition_params
from keyq.store.reads import Inspector, NoDatabaseError

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SPEC_FIELDS = {
    "id",
    "task",
    "queue",
    "concurrency_key",
    "status",
    "priority",
    "attempt",
    "max_attempts",
    "payload",
    "result",
    "error",
    "tags",
    "created_at",
    "started_at",
    "finished_at",
}
STATUSES = ["delayed", "queued", "running", "waiting", "completed", "failed", "canceled"]


@pytest.fixture
def inspector(config: Config) -> Iterator[Inspector]:
    db.connect(config.database).close()
    opened = Inspector(config)
    try:
        yield opened
    finally:
        opened.close()


def _apply(
    config: Config, run_id: str, *moves: tuple[float, RunState, RunState, dict[str, Any]]
) -> None:
    """Write transitions with the daemon's own UPDATE statement."""
    conn = sqlite3.connect(config.database, isolation_level=None)
    try:
        (seq, task, queue, key) = conn.execute(
            "SELECT seq, task, queue, concurrency_key FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        for at, from_, to, extra in moves:
            attempt = extra.pop("attempt", 1)
            t = Transition(run_id, seq, task, queue, key, at, from_, to, to.value, attempt, **extra)
            conn.execute(db.QUERIES["apply_transition"], transition_params(t))
    finally:
        conn.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- get_run --------------------------------------------------------------------------------------


def test_get_run__has_every_spec_field_with_utc_times(
    producer: Producer,
    tasks: dict[str, Task],
    inspector: Inspector,
    config: Config,
    clock: FakeClock,
) -> None:
    """A run's JSON has every §9 field, values as a user gave them, times ISO 8601 UTC with Z."""
    t0 = clock.now()
    (handle,) = insert(
        producer,
        [
            (
                tasks["analyze"],
                {"workoutId": "w-123"},
                {"concurrency_key": "u-1", "priority": 3, "tags": ["vip", "eu"], "max_attempts": 2},
            )
        ],
    )
    _apply(
        config,
        handle.id,
        (t0 + 1, QUEUED, RUNNING, {}),
        (t0 + 2.5, RUNNING, COMPLETED, {"result": '{"score":9}'}),
    )

    run = inspector.get_run(handle.id)
    assert SPEC_FIELDS | {"events"} <= set(run)
    assert {k: run[k] for k in SPEC_FIELDS} == {
        "id": handle.id,
        "task": "analyze",
        "queue": "user-analysis",
        "concurrency_key": "u-1",
        "status": "completed",
        "priority": 3,
        "attempt": 1,
        "max_attempts": 2,
        "payload": {"workoutId": "w-123"},
        "result": {"score": 9},
        "error": None,
        "tags": ["vip", "eu"],
        "created_at": _iso(t0),
        "started_at": _iso(t0 + 1),
        "finished_at": _iso(t0 + 2.5),
    }
    for field in ("created_at", "started_at", "finished_at"):
        assert ISO_UTC.match(run[field]), run[field]
    assert run["created_at"] == "2009-02-13T23:31:30.250Z"  # the FakeClock's start, in UTC


def test_get_run__events_are_the_timeline(
    producer: Producer,
    tasks: dict[str, Task],
    inspector: Inspector,
    config: Config,
    clock: FakeClock,
) -> None:
    """`events` lists every transition with at/from/to/reason, oldest first, at in UTC."""
    t0 = clock.now()
    (handle,) = insert(producer, [(tasks["email"], None, {"delay": 10})])
    boom = ErrorInfo("ValueError", "bad", "Traceback (most recent call last): ...")
    _apply(
        config,
        handle.id,
        (t0 + 10, DELAYED, QUEUED, {"attempt": 0}),
        (t0 + 11, QUEUED, RUNNING, {}),
        (t0 + 12, RUNNING, FAILED, {"error": boom}),
    )
    run = inspector.get_run(handle.id)
    assert [(e["at"], e["from"], e["to"], e["reason"]) for e in run["events"]] == [
        (_iso(t0), None, "delayed", "triggered"),
        (_iso(t0 + 10), "delayed", "queued", "queued"),
        (_iso(t0 + 11), "queued", "running", "running"),
        (_iso(t0 + 12), "running", "failed", "failed"),
    ]
    assert run["error"] == {"type": "ValueError", "message": "bad"}  # no traceback in the JSON
    assert run["events"][-1]["error"] == {"type": "ValueError", "message": "bad"}


def test_get_run__fresh_run_has_nulls_and_attempt_one(
    producer: Producer, tasks: dict[str, Task], inspector: Inspector
) -> None:
    """A queued run reports attempt 1 (the one it will make) and null times, key and result."""
    (handle,) = insert(producer, [(tasks["email"], None, {})])
    run = inspector.get_run(handle.id)
    assert (run["status"], run["attempt"], run["concurrency_key"]) == ("queued", 1, None)
    assert (run["started_at"], run["finished_at"], run["result"], run["error"]) == (
        None,
        None,
        None,
        None,
    )
    assert run["payload"] is None
    assert run["tags"] == []


def test_get_run__unknown_id(inspector: Inspector) -> None:
    """An unknown id raises RunNotFoundError with 'no run with id'."""
    with pytest.raises(RunNotFoundError, match="no run with id 'run_nope'"):
        inspector.get_run("run_nope")


def test_inspector__missing_database_is_a_clear_error_and_creates_nothing(config: Config) -> None:
    """Inspecting where no database exists says so and does not create an empty one."""
    with pytest.raises(NoDatabaseError) as info:
        Inspector(config)
    assert str(config.database) in str(info.value)
    assert not config.database.exists()


# --- list_runs ------------------------------------------------------------------------------------


@pytest.fixture
def mixed(
    producer: Producer, tasks: dict[str, Task], config: Config, clock: FakeClock
) -> list[str]:
    """Seven runs over two queues, three tasks, two keys and some tags; two are final."""
    a, s, e = tasks["analyze"], tasks["summarize"], tasks["email"]
    ids = [
        h.id
        for h in insert(
            producer,
            [
                (a, 0, {"concurrency_key": "u-1", "tags": ["vip"]}),
                (a, 1, {"concurrency_key": "u-2"}),
                (s, 2, {"concurrency_key": "u-1", "tags": ["vip", "eu"]}),
                (e, 3, {}),
                (e, 4, {"delay": 60, "tags": ["eu"]}),
                (a, 5, {"concurrency_key": "u-1"}),
                (s, 6, {"concurrency_key": "u-2"}),
            ],
        )
    ]
    t = clock.now()
    _apply(
        config, ids[0], (t + 1, QUEUED, RUNNING, {}), (t + 2, RUNNING, COMPLETED, {"result": "1"})
    )
    _apply(config, ids[1], (t + 1, QUEUED, RUNNING, {}))
    _apply(config, ids[2], (t + 1, QUEUED, RUNNING, {}), (t + 2, RUNNING, WAITING, {}))
    _apply(
        config,
        ids[3],
        (t + 1, QUEUED, RUNNING, {}),
        (t + 2, RUNNING, FAILED, {"error": ErrorInfo("E", "x")}),
    )
    return ids


def test_list_runs__newest_first_with_spec_fields(inspector: Inspector, mixed: list[str]) -> None:
    """Without filters every run is listed, newest first, each with the §9 fields."""
    runs = inspector.list_runs()
    assert [r["id"] for r in runs] == mixed[::-1]
    assert all(set(r) >= SPEC_FIELDS for r in runs)
    assert "events" not in runs[0]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "queued"}, [6, 5]),
        ({"status": "running"}, [1]),
        ({"status": "waiting"}, [2]),
        ({"status": "delayed"}, [4]),
        ({"status": "completed"}, [0]),
        ({"status": "failed"}, [3]),
        ({"status": "canceled"}, []),
        ({"queue": "email"}, [4, 3]),
        ({"queue": "user-analysis"}, [6, 5, 2, 1, 0]),
        ({"key": "u-1"}, [5, 2, 0]),
        ({"task": "summarize"}, [6, 2]),
        ({"tag": "vip"}, [2, 0]),
        ({"tag": "eu"}, [4, 2]),
        ({"tag": "nope"}, []),
        ({"limit": 3}, [6, 5, 4]),
        ({"queue": "user-analysis", "key": "u-1", "status": "queued"}, [5]),
        ({"task": "analyze", "tag": "vip"}, [0]),
        ({"key": "u-2", "limit": 1}, [6]),
    ],
)
def test_list_runs__filters_combine(
    inspector: Inspector, mixed: list[str], filters: dict[str, Any], expected: list[int]
) -> None:
    """status, queue, key, task, tag and limit narrow the list; several filters all apply."""
    assert [r["id"] for r in inspector.list_runs(**filters)] == [mixed[i] for i in expected]


def test_list_runs__default_limit_is_100(
    producer: Producer, tasks: dict[str, Task], inspector: Inspector
) -> None:
    """Without --limit at most 100 runs come back, the newest ones."""
    handles = insert(producer, [(tasks["email"], i, {}) for i in range(105)])
    runs = inspector.list_runs()
    assert len(runs) == 100
    assert runs[0]["id"] == handles[-1].id
    assert runs[-1]["id"] == handles[5].id


def test_list_runs__sees_runs_committed_after_it_opened(
    producer: Producer, tasks: dict[str, Task], inspector: Inspector
) -> None:
    """A long-lived inspector (keyq top) sees runs that were triggered after it opened."""
    assert inspector.list_runs() == []
    (handle,) = insert(producer, [(tasks["email"], None, {})])
    assert [r["id"] for r in inspector.list_runs()] == [handle.id]


# --- stats ----------------------------------------------------------------------------------------


def test_stats__counts_per_status_queue_and_key(inspector: Inspector, mixed: list[str]) -> None:
    """stats() counts every state in total, per queue, and per key that still has work."""
    stats = inspector.stats(burst_limit=40)
    assert stats["total"] == {
        "delayed": 1,
        "queued": 2,
        "running": 1,
        "waiting": 1,
        "completed": 1,
        "failed": 1,
        "canceled": 0,
    }
    assert stats["queues"] == {
        "email": dict.fromkeys(STATUSES, 0) | {"delayed": 1, "failed": 1},
        "user-analysis": dict.fromkeys(STATUSES, 0)
        | {"queued": 2, "running": 1, "waiting": 1, "completed": 1},
    }
    assert stats["keys"] == [
        {
            "queue": "user-analysis",
            "concurrency_key": "u-1",
            **dict.fromkeys(STATUSES, 0),
            "queued": 1,
            "waiting": 1,
            "completed": 1,
        },
        {
            "queue": "user-analysis",
            "concurrency_key": "u-2",
            **dict.fromkeys(STATUSES, 0),
            "queued": 1,
            "running": 1,
        },
    ]
    assert stats["capacity"] == {"running": 1, "limit": 40, "queued": 2}
    assert stats["message"] == "Running 1 of 40; 2 queued"


def test_stats__empty_database(inspector: Inspector) -> None:
    """With no runs, every count is zero and the message still reads naturally."""
    stats = inspector.stats(burst_limit=400)
    assert stats["total"] == dict.fromkeys(STATUSES, 0)
    assert (stats["queues"], stats["keys"]) == ({}, [])
    assert stats["message"] == "Running 0 of 400; 0 queued"


def test_stats__keys_with_only_final_runs_are_left_out(
    producer: Producer,
    tasks: dict[str, Task],
    inspector: Inspector,
    config: Config,
    clock: FakeClock,
) -> None:
    """A key whose runs have all finished is not listed among the active keys."""
    (done,) = insert(producer, [(tasks["analyze"], None, {"concurrency_key": "old"})])
    insert(producer, [(tasks["analyze"], None, {"concurrency_key": "new"})])
    t = clock.now()
    _apply(config, done.id, (t, QUEUED, RUNNING, {}), (t, RUNNING, COMPLETED, {"result": "1"}))
    assert [k["concurrency_key"] for k in inspector.stats(40)["keys"]] == ["new"]


def test_get_run__error_message_with_unicode_line_separators(
    producer: Producer, tasks: dict[str, Task], inspector: Inspector, config: Config
) -> None:
    """An exception message containing U+2028 / U+0085 / U+2029 still gives a readable timeline."""
    (handle,) = insert(producer, [(tasks["email"], None, {})])
    message = "row 1\u2028row 2\x85row 3\u2029end"
    boom = ErrorInfo("ValueError", message)
    _apply(config, handle.id, (1.0, QUEUED, RUNNING, {}), (2.0, RUNNING, FAILED, {"error": boom}))
    run = inspector.get_run(handle.id)
    assert [e["to"] for e in run["events"]] == ["queued", "running", "failed"]
    assert run["events"][-1]["error"] == {"type": "ValueError", "message": message}
    assert run["error"] == {"type": "ValueError", "message": message}


def test_result__none_while_active_then_the_outcome(
    producer: Producer, tasks: dict[str, Task], inspector: Inspector, config: Config
) -> None:
    """result() is None until the run is final, then says how it ended (for `trigger --wait`)."""
    (ok, bad) = insert(producer, [(tasks["email"], None, {})] * 2)
    assert inspector.result(ok.id) is None
    _apply(config, ok.id, (1.0, QUEUED, RUNNING, {}), (2.0, RUNNING, COMPLETED, {"result": "[7]"}))
    oops = ErrorInfo("KeyError", "'x'")
    _apply(config, bad.id, (1.0, QUEUED, RUNNING, {}), (2.0, RUNNING, FAILED, {"error": oops}))
    done = inspector.result(ok.id)
    failed = inspector.result(bad.id)
    assert done is not None
    assert failed is not None
    assert (done.ok, done.output, done.unwrap()) == (True, [7], [7])
    assert (failed.ok, failed.status, failed.error) == (False, FAILED, ErrorInfo("KeyError", "'x'"))
    with pytest.raises(RunNotFoundError):
        inspector.result("run_nope")
