"""`keyq schedules list|pause|resume`: what the daemon stored, read and changed offline."""

from __future__ import annotations

import json

import anyio
from project import Project

import keyq
from keyq.clock import FakeClock


def start_and_stop_once(project: Project, clock: FakeClock) -> None:
    """A daemon with two schedules runs once (storing them), fires one tick, and stops."""
    registry = keyq.Registry()

    @registry.task(id="report", cron="0 3 * * *", tz="Europe/Paris",
                   schedules=[keyq.Schedule("beat", every="1m")])  # fmt: skip
    async def report(payload: object, ctx: keyq.Context) -> None: ...

    async def main() -> None:
        config = keyq.load_config(project.config)
        async with keyq.Daemon(config, registry=registry, clock=clock) as daemon:
            clock.advance(60 - clock.now() % 60)
            await daemon.until_idle()

    anyio.run(main)


def test_schedules__list_pause_resume(project: Project) -> None:
    clock = FakeClock()
    start_and_stop_once(project, clock)

    listed = project.run("schedules", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    rows = {s["id"]: s for s in json.loads(listed.stdout)}
    assert sorted(rows) == ["beat", "report"]
    assert (rows["report"]["cadence"], rows["report"]["tz"]) == ("0 3 * * *", "Europe/Paris")
    assert rows["beat"]["cadence"] == "every 60"
    assert rows["beat"]["last_run_status"] == "completed"
    assert rows["report"]["last_tick"] is None
    assert rows["report"]["next_fire_at"]

    assert project.run("schedules", "pause", "beat").exit_code == 0
    text = project.run("schedules", "list").stdout
    assert "paused" in next(line for line in text.splitlines() if line.startswith("beat"))
    assert json.loads(project.run("schedules", "list", "--json").stdout)[0]["next_fire_at"] is None

    assert project.run("schedules", "resume", "beat").exit_code == 0
    assert not json.loads(project.run("schedules", "list", "--json").stdout)[0]["paused"]


def test_schedules__pause_an_unknown_schedule_says_so(project: Project) -> None:
    start_and_stop_once(project, FakeClock())
    result = project.run("schedules", "pause", "nope")
    assert result.exit_code == 1
    assert "no schedule 'nope' is stored" in result.stderr
