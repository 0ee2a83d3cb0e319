"""Durable waits with real `keyq serve` processes: SIGTERM and kill -9 while runs wait."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Project, wait_final, wait_until

import keyq

pytestmark = pytest.mark.slow


def status(client: keyq.Client, run_id: str) -> str:
    return str(client.get_run(run_id)["status"])


def transitions(run: dict[str, Any]) -> list[str]:
    return [e["to"] for e in run["events"]]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_e2e__waiting_run_survives_a_restart(project: Project, stop: str) -> None:
    """A run waiting on wait.for_ when its daemon stops (SIGTERM or kill -9) completes in
    the next daemon with the right result: its step ran once, one WAITING span."""
    first = project.start_daemon()
    client = project.client()
    marks = project.root / "marks"
    handle = client.trigger("e2e-durable", {"marks": str(marks), "wait_s": 2.0})
    wait_until(lambda: status(client, handle.id) == "waiting", 10, "the run never waited")
    if stop == "sigterm":
        assert first.terminate() == 0
    else:
        first.kill9()
    assert status(client, handle.id) == "waiting"

    second = project.start_daemon()
    (run,) = wait_final(client, [handle.id], timeout=15)

    assert run["status"] == "completed", run
    assert run["result"] == {"calls": 1, "pid": second.pid, "attempt": 1}
    assert lines(marks) == 1
    assert transitions(run) == ["queued", "running", "waiting", "queued", "running", "completed"]


def test_e2e__step_is_not_run_again_after_a_kill_while_running(project: Project) -> None:
    """kill -9 after a step is recorded, while the attempt still runs: the next daemon
    re-runs the interrupted attempt and replays the step instead of calling it again."""
    first = project.start_daemon()
    client = project.client()
    marks = project.root / "marks"
    after = project.root / "marks.after"
    handle = client.trigger("e2e-durable", {"marks": str(marks), "sleep_s": 30})
    wait_until(lambda: lines(after) == 1, 10, "the step never returned")
    first.kill9()

    project.start_daemon()
    (run,) = wait_final(client, [handle.id], timeout=15)

    assert run["status"] == "completed", run
    assert lines(marks) == 1  # the step's function ran once
    assert lines(after) == 2  # the code after it ran in both attempts
    assert run["result"]["calls"] == 1
    assert run["result"]["attempt"] == 2


def test_e2e__parent_waiting_on_children_survives_kill9(project: Project) -> None:
    """A parent waiting on two waiting children across kill -9 gets both results."""
    first = project.start_daemon()
    client = project.client()
    handle = client.trigger("e2e-parent", [1, 2])

    def all_waiting() -> bool:
        parent = client.get_run(handle.id)
        kids = parent["children"]
        return parent["status"] == "waiting" and len(kids) == 2

    wait_until(all_waiting, 10, "the parent and its children never all waited")
    first.kill9()

    project.start_daemon()
    (run,) = wait_final(client, [handle.id], timeout=20)

    assert run["result"] == [2, 4]
    assert [c["status"] for c in run["children"]] == ["completed", "completed"]
    assert transitions(run).count("waiting") == 1


def test_e2e__token_completed_while_the_daemon_is_stopped(project: Project) -> None:
    """`keyq tokens complete` while no daemon runs: the run resumes when one starts."""
    first = project.start_daemon()
    client = project.client()
    handle = client.trigger("e2e-approval")
    wait_until(lambda: status(client, handle.id) == "waiting", 10, "the run never waited")
    assert first.terminate() == 0

    listed = project.cli("tokens", "list", "--status", "waiting", "--json")
    assert listed.returncode == 0, listed.stderr
    (token,) = json.loads(listed.stdout)
    assert token["run_id"] == handle.id
    done = project.cli("tokens", "complete", token["id"], '{"approved": true}')
    assert done.returncode == 0, done.stderr
    again = project.cli("tokens", "complete", token["id"], "{}")
    assert again.returncode == 1
    assert "already completed" in again.stderr

    second = project.start_daemon()
    (run,) = wait_final(client, [handle.id], timeout=15)
    assert run["result"] == {"ok": True, "output": {"approved": True}, "pid": second.pid}
