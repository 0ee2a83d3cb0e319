"""A real `keyq serve` killed with kill -9 right after it claimed a schedule tick: the
tick's run survives as the same run, and no tick ever has two runs."""

from __future__ import annotations

from collections import Counter

from e2e_support import runs_by_status, wait_final
from project import Project, wait_until

SCHEDULE = """
[[schedules]]
id = "beat"
task = "e2e-sleep"
every = "2s"
payload = { s = 1.0 }
"""


def test_e2e__kill9_after_a_tick_is_claimed_runs_it_exactly_once(project: Project) -> None:
    project.write_config(extra=SCHEDULE)
    first = project.start_daemon()
    client = project.client()
    wait_until(lambda: runs_by_status(client).get("running"), 10, "a scheduled run started")
    (claimed,) = runs_by_status(client)["running"]
    first.kill9()  # its tick is claimed (the run is stored), its attempt cut short

    second = project.start_daemon()
    (run,) = wait_final(client, [claimed["id"]], timeout=15)
    assert run["status"] == "completed"
    assert run["schedule"] == claimed["schedule"]
    assert run["result"]["pid"] == second.pid
    assert run["attempt"] == 2
    wait_until(lambda: len(client.list_runs(limit=100)) >= 3, 10, "more ticks fired")
    second.terminate()

    runs = client.list_runs(limit=1000)
    ticks = Counter(r["schedule"]["tick"] for r in runs)
    assert ticks[claimed["schedule"]["tick"]] == 1
    assert max(ticks.values()) == 1, ticks
