"""``keyq schedules``: list them, pause and resume them."""

from __future__ import annotations

from typing import Annotated

import typer

from keyq.cli.common import ConfigOpt, JsonOpt, client, emit, errors_reported
from keyq.cli.render import render_schedules

ScheduleArg = Annotated[str, typer.Argument(help="Schedule id (see `keyq schedules list`).")]


def schedules_list(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Every schedule: task, cron or interval, zone, next fire, last tick and its run,
    paused; one removed from the code or config is shown as gone, with its history."""
    with errors_reported(), client(config) as c:
        emit(c.schedules(), as_json, render_schedules)


def schedules_pause(schedule_id: ScheduleArg, config: ConfigOpt = None) -> None:
    """Stop a schedule firing (stored: it stays paused across restarts)."""
    with errors_reported(), client(config) as c:
        c.pause_schedule(schedule_id)
    typer.echo(f"schedule {schedule_id} paused")


def schedules_resume(schedule_id: ScheduleArg, config: ConfigOpt = None) -> None:
    """Let a paused schedule fire again, from its next tick (paused ticks are not replayed)."""
    with errors_reported(), client(config) as c:
        c.pause_schedule(schedule_id, paused=False)
    typer.echo(f"schedule {schedule_id} resumed")
