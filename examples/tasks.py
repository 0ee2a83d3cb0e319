"""An example app: a fitness product where every user's work shares three queues.

Each queue allows 2 runs at once *per user* (the concurrency key), so one
user's burst never holds back another user. Run it with::

    keyq serve --app examples.tasks

and trigger from another terminal::

    keyq trigger analyze-workout '{"workoutId": "w-1"}' --concurrency-key u-1 --app examples.tasks
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio

import keyq

analysis = keyq.queue("analysis", concurrency_limit=2)
reports = keyq.queue("reports", concurrency_limit=2)
background = keyq.queue("background", concurrency_limit=2)


async def pretend_work(payload: Any, low: float = 0.3, high: float = 0.9) -> float:
    """Sleep a stable, payload-dependent time, as a stand-in for real I/O."""
    digest = hashlib.sha256(repr(payload).encode()).digest()
    seconds = low + (high - low) * digest[0] / 255
    await anyio.sleep(seconds)
    return round(seconds, 3)


# --- analysis -------------------------------------------------------------------------


@keyq.task(
    id="analyze-workout",
    queue=analysis,
    retry=keyq.Retry(max_attempts=3, backoff="exponential", min_delay=1, max_delay=60),
    max_duration=300,
)
async def analyze_workout(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    took = await pretend_work(payload)
    return {"workoutId": payload.get("workoutId"), "score": int(took * 100), "attempt": ctx.attempt}


@keyq.task(id="score-sleep", queue=analysis)
async def score_sleep(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    took = await pretend_work(payload)
    return {"night": payload.get("night"), "quality": round(1 - took / 2, 2)}


# --- reports --------------------------------------------------------------------------


@keyq.task(id="weekly-report", queue=reports, max_duration=600)
async def weekly_report(payload: dict[str, Any], ctx: keyq.Context) -> dict[str, Any]:
    # Waiting on children gives this run's slot back until they are done.
    scores = await analyze_workout.batch_trigger_and_wait(
        [
            {"payload": {"workoutId": w}, "concurrency_key": ctx.concurrency_key}
            for w in payload.get("workouts", [])
        ]
    )
    await pretend_work(payload, 0.2, 0.4)
    return {"week": payload.get("week"), "workouts": sum(1 for s in scores if s.ok)}


@keyq.task(id="export-csv", queue=reports)
async def export_csv(payload: dict[str, Any], ctx: keyq.Context) -> str:
    await pretend_work(payload)
    return f"exports/{ctx.concurrency_key}/{ctx.run_id}.csv"


# --- background ----------------------------------------------------------------------


@keyq.task(id="sync-calendar", queue=background)
async def sync_calendar(payload: dict[str, Any], ctx: keyq.Context) -> int:
    await pretend_work(payload)
    return 3


@keyq.task(id="send-digest", queue=background)
def send_digest(payload: dict[str, Any], ctx: keyq.Context) -> bool:
    # A sync task: keyq runs it in a worker thread, so it never blocks the loop.
    import time

    time.sleep(0.2)
    return True
