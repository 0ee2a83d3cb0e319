"""Run one attempt of a task and report how it ended, as an :data:`~keyq.core.model.Outcome`.

The runner only calls the function: the payload is decoded from JSON, a sync
function goes to a worker thread, an exception becomes ``Failed``, and a return
value that is not JSON fails the attempt without retry. Cancellation
(``max_duration``, a user's cancel) comes from the daemon's cancel scope around
this call; the engine, not the runner, decides what it means.
"""

from __future__ import annotations

import json
import traceback

import anyio

from keyq.context import Context
from keyq.core import bounds
from keyq.core.journal import ReplayMismatchError
from keyq.core.model import Completed, ErrorInfo, Failed, Outcome
from keyq.registry import Task, reset_attempt, set_attempt

_MAX_TRACEBACK = 8000  # characters kept in the run's record
_RETURNED_NONE = Completed("null")  # most tasks return nothing: no encoding to do


async def run_attempt(
    task: Task | None, payload: str, ctx: Context, max_result_bytes: int
) -> Outcome:
    """Execute the task function once; never raises except for cancellation."""
    if task is None:
        message = f"no task {ctx.task_id!r} is defined in this daemon (check tasks / --app)"
        return Failed(ErrorInfo("UnknownTask", message), retryable=False)
    token = set_attempt(ctx)
    try:
        if task.is_async:
            value = await task.fn(json.loads(payload), ctx)
        else:
            value = await anyio.to_thread.run_sync(task.fn, json.loads(payload), ctx)
    except Exception as exc:
        if ctx.mismatch is not None:  # whatever the code made of it
            return Failed(error_info(ctx.mismatch), retryable=False)
        return Failed(error_info(exc))
    finally:
        reset_attempt(token)
    if ctx.mismatch is None and ctx.is_replaying:
        ctx.mismatch = ReplayMismatchError(
            "the task's code no longer matches this run's record: it returned before "
            "reaching the waits and steps the run recorded. The code changed while the "
            "run was waiting; code between waits must be deterministic (see docs/waits.md)"
        )
    if ctx.mismatch is not None:
        return Failed(error_info(ctx.mismatch), retryable=False)
    return encode_result(value, max_result_bytes)


def encode_result(value: object, max_bytes: int) -> Outcome:
    """The result as JSON text; a value that is not JSON, or too large, fails without retry."""
    if value is None:
        return _RETURNED_NONE
    try:
        return Completed(bounds.json_text(value, max_bytes))
    except bounds.TooLargeError as exc:
        return Failed(ErrorInfo("ResultTooLarge", f"the result is {exc}"), retryable=False)
    except bounds.NotJSONError as exc:
        error = ErrorInfo("ResultNotJSON", f"the task returned a value that is not JSON: {exc}")
        return Failed(error, retryable=False)


def error_info(exc: BaseException) -> ErrorInfo:
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type(exc).__name__, _storable(str(exc)), _storable(tb[-_MAX_TRACEBACK:]))


def _storable(text: str) -> str:
    """Text SQLite can store: lone surrogates (from surrogateescape'd file names) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
