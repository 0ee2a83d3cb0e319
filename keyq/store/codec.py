"""The mapping between keyq's values and SQL rows, and the stable JSON of a run.

One module owns every row shape, so the producer's INSERT, the daemon's
UPDATEs and the CLI's JSON cannot drift apart. The JSON of a run (SPEC §9) is a
public, versioned format: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from sys import intern
from typing import Any

from keyq.core.model import (
    ErrorInfo,
    NewRun,
    RunSpec,
    Transition,
    Wait,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.core.states import FINAL, RUNNING, Reason, RunState

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


_STATE_JSON: dict[RunState | None, str] = {None: "null", **{s: f'"{s.value}"' for s in RunState}}


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-22T10:00:00.250Z``."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    except (OverflowError, ValueError, OSError):
        # Out of datetime's range: only rows written before every time was bounded
        # (keyq.core.bounds) hold one. Shown at the end of the range, not as a traceback.
        return "9999-12-31T23:59:59.999Z" if ts > 0 else "0001-01-01T00:00:00.000Z"


def event_line(
    at: float,
    from_: RunState | None,
    to: RunState,
    reason: Reason,
    attempt: int,
    error: ErrorInfo | None = None,
) -> str:
    """One timeline entry, as a JSON line appended to ``runs.events``."""
    # Written for every transition: formatted directly rather than through the
    # JSON encoder (a third of the commit's cost). States and reasons are our
    # own identifiers and a float's repr is its JSON; only the error needs escaping.
    line = (
        f'{{"at":{at!r},"from":{_STATE_JSON[from_]},"to":{_STATE_JSON[to]},'
        f'"reason":"{reason}","attempt":{attempt}'
    )
    if error is not None:
        line += ',"error":' + _dumps({"type": error.type, "message": error.message})
    return line + "}\n"


def error_json(error: ErrorInfo | None) -> str | None:
    if error is None:
        return None
    return _dumps({"type": error.type, "message": error.message, "traceback": error.traceback})


def error_from_json(text: str | None) -> ErrorInfo | None:
    if text is None:
        return None
    data = json.loads(text)
    return ErrorInfo(data["type"], data["message"], data.get("traceback"))


def wait_json(wait: Wait | None) -> str | None:
    if wait is None:
        return None
    if isinstance(wait, WaitUntil):
        return _dumps({"kind": "until", "resume_at": wait.resume_at})
    if isinstance(wait, WaitForToken):
        return _dumps({"kind": "token", "token_id": wait.token_id, "timeout_at": wait.timeout_at})
    return _dumps({"kind": "children", "child_ids": list(wait.child_ids)})


def wait_from_json(text: str | None) -> Wait | None:
    if text is None:
        return None
    data = json.loads(text)
    if data["kind"] == "until":
        return WaitUntil(data["resume_at"])
    if data["kind"] == "token":
        return WaitForToken(data["token_id"], data["timeout_at"])
    return WaitChildren(tuple(data["child_ids"]))


def new_run_params(run: NewRun) -> tuple[Any, ...]:
    """Parameters of the ``insert_run`` query."""
    return (
        run.id,
        run.task,
        run.queue,
        run.concurrency_key,
        run.state.value,
        run.priority,
        run.max_attempts,
        run.payload,
        _dumps(list(run.tags)),
        run.idempotency_key,
        run.queue_limit,
        run.parent_id,
        run.created_at,
        run.available_at,
        event_line(run.created_at, None, run.state, Reason.TRIGGERED, 0),
        *_schedule_params(run),
        run.expires_at,
        run.debounce_key,
        run.debounce_until,
    )


def _schedule_params(run: NewRun) -> tuple[str | None, float | None, float | None]:
    s = run.schedule
    return (None, None, None) if s is None else (s.id, s.tick, s.previous)


def transition_params(t: Transition) -> tuple[Any, ...]:
    """Parameters of the ``apply_transition`` query."""
    return (
        str(t.to),  # not .value: an Enum property, slow enough to show in profiles
        t.attempt,
        t.at if t.to is RUNNING else None,
        t.at if t.to in FINAL else None,
        t.result,
        error_json(t.error),
        t.available_at,
        wait_json(t.wait),
        t.payload,
        event_line(t.at, t.from_, t.to, t.reason, t.attempt, t.error),
        t.seq,
    )


_STATES: dict[str, RunState] = {s.value: s for s in RunState}  # RunState(v) is slow


def spec_from_row(row: tuple[Any, ...]) -> RunSpec:
    """A RunSpec from a ``select_new_runs`` / ``select_runs_in_state`` row."""
    (
        seq, run_id, task, queue, key, status, priority, attempt, max_attempts, payload,
        queue_limit, parent_id, waitpoint, cancel_requested_at, created_at, available_at,
        expires_at, debounce_key, debounce_until,
    ) = row  # fmt: skip
    # Names repeat across runs (a million runs, a few tasks and queues): interned,
    # each is held once rather than once per run (bench/scale: memory at 1M).
    return RunSpec(
        id=run_id,
        seq=seq,
        task=intern(task),
        queue=intern(queue),
        concurrency_key=intern(key) if key is not None else None,
        priority=priority,
        payload=payload,
        max_attempts=max_attempts,
        state=_STATES[status],
        attempt=attempt,
        available_at=available_at,
        created_at=created_at,
        queue_limit=queue_limit,
        parent_id=parent_id,
        wait=wait_from_json(waitpoint),
        cancel_requested=cancel_requested_at is not None,
        expires_at=expires_at,
        debounce_key=debounce_key,
        debounce_until=debounce_until,
    )


def spec_from_new(run: NewRun) -> RunSpec:
    """The RunSpec of a run handed to the daemon, before its row exists (seq 0)."""
    return RunSpec(
        id=run.id,
        seq=0,
        task=run.task,
        queue=run.queue,
        concurrency_key=run.concurrency_key,
        priority=run.priority,
        payload=run.payload,
        max_attempts=run.max_attempts,
        state=run.state,
        available_at=run.available_at,
        created_at=run.created_at,
        parent_id=run.parent_id,
        expires_at=run.expires_at,
        debounce_key=run.debounce_key,
        debounce_until=run.debounce_until,
    )


def _schedule_json(row: sqlite3.Row) -> dict[str, Any] | None:
    if row["schedule_id"] is None:
        return None
    return {"id": row["schedule_id"], "tick": iso(row["schedule_tick"])}


def _debounce_json(row: sqlite3.Row) -> dict[str, Any] | None:
    if row["debounce_key"] is None:
        return None
    return {"key": row["debounce_key"], "until": iso(row["debounce_until"])}


def run_json(row: sqlite3.Row, *, events: bool = False) -> dict[str, Any]:
    """The public JSON of a run (SPEC §9); ``events`` adds the timeline."""
    error = error_from_json(row["error"])
    data: dict[str, Any] = {
        "id": row["id"],
        "task": row["task"],
        "queue": row["queue"],
        "concurrency_key": row["concurrency_key"],
        "status": row["status"],
        "priority": row["priority"],
        "attempt": max(1, row["attempt"]),
        "max_attempts": row["max_attempts"],
        "payload": json.loads(row["payload"]),
        "result": json.loads(row["result"]) if row["result"] is not None else None,
        "error": {"type": error.type, "message": error.message} if error else None,
        "tags": json.loads(row["tags"]),
        "idempotency_key": row["idempotency_key"],
        "parent_id": row["parent_id"],
        "created_at": iso(row["created_at"]),
        "available_at": iso(row["available_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "schedule": _schedule_json(row),
        "expires_at": iso(row["expires_at"]),
        "debounce": _debounce_json(row),
    }
    if events:
        data["events"] = [
            # split on "\n" only: splitlines() would also split inside a message
            {**e, "at": iso(e["at"])}
            for e in map(json.loads, filter(None, row["events"].split("\n")))
        ]
    return data
