"""`keyq runs list|show|cancel` and `keyq stats`: JSON shapes, filters, exit codes, no daemon."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest

from keyq.core.model import ErrorInfo, Transition
from keyq.core.states import FAILED, QUEUED, RUNNING
from keyq.store import db
from keyq.store.codec import transition_params

Project = Any
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
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


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def runs(project: Project) -> list[str]:
    """Five runs: two keys on cli-q, a delayed one, another task, tags; oldest first."""
    return [
        project.trigger_id("cli-echo", '{"n": 0}', "-k", "u-1", "--tag", "vip"),
        project.trigger_id("cli-echo", '{"n": 1}', "-k", "u-2"),
        project.trigger_id("cli-other", '{"n": 2}', "--tag", "vip"),
        project.trigger_id("cli-echo", '{"n": 3}', "-k", "u-1", "--delay", "1h"),
        project.trigger_id("cli-echo", '{"n": 4}', "-k", "u-1"),
    ]


# --- runs list ------------------------------------------------------------------------------------


def test_runs_list__json_array_newest_first_with_spec_fields(
    project: Project, runs: list[str]
) -> None:
    """`runs list --json` is a JSON array, newest first, each run with every §9 field."""
    listed = _json(project.run("runs", "list", "--json"))
    assert isinstance(listed, list)
    assert [r["id"] for r in listed] == runs[::-1]
    for run in listed:
        assert set(run) >= SPEC_FIELDS
        assert ISO_UTC.match(run["created_at"])
    assert listed[0]["payload"] == {"n": 4}
    assert listed[-1]["tags"] == ["vip"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "queued"], [4, 2, 1, 0]),
        (["--status", "delayed"], [3]),
        (["--status", "completed"], []),
        (["--queue", "cli-q"], [4, 3, 1, 0]),
        (["--queue", "cli-other"], [2]),
        (["--key", "u-1"], [4, 3, 0]),
        (["--task", "cli-other"], [2]),
        (["--tag", "vip"], [2, 0]),
        (["--limit", "2"], [4, 3]),
        (["--key", "u-1", "--status", "queued", "--limit", "1"], [4]),
    ],
)
def test_runs_list__filters(
    project: Project, runs: list[str], args: list[str], expected: list[int]
) -> None:
    """--status, --queue, --key, --task, --tag and --limit narrow the list."""
    listed = _json(project.run("runs", "list", "--json", *args))
    assert [r["id"] for r in listed] == [runs[i] for i in expected]


def test_runs_list__bad_status_is_a_usage_error(project: Project, runs: list[str]) -> None:
    """--status with an unknown state exits 2 and lists the valid ones."""
    result = project.run("runs", "list", "--status", "done")
    assert result.exit_code == 2
    assert "queued, delayed" not in result.stdout
    assert "completed" in result.stderr
    assert "'done'" in result.stderr


def test_runs_list__table_output(project: Project, runs: list[str]) -> None:
    """Without --json a table with a header and one line per run is printed."""
    result = project.run("runs", "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["ID", "TASK", "QUEUE", "KEY", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == runs[::-1]


def test_runs_list__no_database_exits_1_and_creates_none(project: Project) -> None:
    """Listing where nothing was ever triggered says there is no database and creates none."""
    result = project.run("runs", "list", "--json")
    assert result.exit_code == 1
    assert "no keyq database" in result.stderr
    assert not project.database.exists()


def test_runs_list__empty_database(project: Project, runs: list[str]) -> None:
    """A filter that matches nothing gives [] with --json and 'no runs' as a table."""
    assert _json(project.run("runs", "list", "--json", "--task", "nope")) == []
    result = project.run("runs", "list", "--task", "nope")
    assert result.stdout.strip() == "no runs"


# --- runs show ------------------------------------------------------------------------------------


def test_runs_show__json_has_events(project: Project, runs: list[str]) -> None:
    """`runs show ID --json` is the run's §9 JSON with events of at/from/to/reason."""
    run = _json(project.run("runs", "show", runs[3], "--json"))
    assert set(run) >= SPEC_FIELDS
    assert (run["id"], run["status"], run["concurrency_key"]) == (runs[3], "delayed", "u-1")
    (event,) = run["events"]
    assert {"at", "from", "to", "reason"} <= set(event)
    assert (event["from"], event["to"], event["reason"]) == (None, "delayed", "triggered")
    assert ISO_UTC.match(event["at"])
    assert event["at"] == run["created_at"]


def test_runs_show__events_after_cancel(project: Project, runs: list[str]) -> None:
    """The timeline shows the cancel as a second transition."""
    assert project.run("runs", "cancel", runs[0]).exit_code == 0
    run = _json(project.run("runs", "show", runs[0], "--json"))
    assert [(e["from"], e["to"], e["reason"]) for e in run["events"]] == [
        (None, "queued", "triggered"),
        ("queued", "canceled", "canceled"),
    ]


def test_runs_show__human_output_has_timeline(project: Project, runs: list[str]) -> None:
    """Without --json the run's fields and its timeline are printed."""
    result = project.run("runs", "show", runs[0])
    assert result.exit_code == 0, result.stderr
    assert runs[0] in result.stdout
    assert "timeline:" in result.stdout
    assert "new -> queued" in result.stdout


def test_runs_show__unknown_id_exits_1(project: Project, runs: list[str]) -> None:
    """An unknown run id exits 1 with 'no run with id' on stderr."""
    result = project.run("runs", "show", "run_nope", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no run with id 'run_nope'" in result.stderr


# --- runs cancel ----------------------------------------------------------------------------------


def test_runs_cancel__queued_run_with_no_daemon(project: Project, runs: list[str]) -> None:
    """Canceling a queued run while no daemon runs marks it canceled on disk at once."""
    result = project.run("runs", "cancel", runs[1])
    assert result.exit_code == 0, result.stderr
    assert runs[1] in result.stdout
    statuses = {r["id"]: r["status"] for r in project.rows()}
    assert statuses[runs[1]] == "canceled"
    assert sorted(statuses.values()) == ["canceled", "delayed", "queued", "queued", "queued"]
    (row,) = project.rows("id = ?", runs[1])
    assert row["finished_at"] is not None


def test_runs_cancel__final_run_exits_1(project: Project, runs: list[str]) -> None:
    """Canceling a run that already finished exits 1 saying its state, and changes nothing."""
    conn = sqlite3.connect(project.database)
    conn.execute("UPDATE runs SET status = 'completed' WHERE id = ?", (runs[0],))
    conn.commit()
    conn.close()
    result = project.run("runs", "cancel", runs[0])
    assert result.exit_code == 1
    assert "already completed" in result.stderr
    (row,) = project.rows("id = ?", runs[0])
    assert row["status"] == "completed"


def test_runs_cancel__unknown_id_exits_1(project: Project, runs: list[str]) -> None:
    """Canceling an unknown id exits 1 with 'no run with id'."""
    result = project.run("runs", "cancel", "run_nope")
    assert result.exit_code == 1
    assert "no run with id 'run_nope'" in result.stderr


# --- stats ----------------------------------------------------------------------------------------


def test_stats__json_shape(project: Project, runs: list[str]) -> None:
    """`stats --json` gives totals, per queue, per active key, capacity and the message."""
    stats = _json(project.run("stats", "--json"))
    assert set(stats) >= {"total", "queues", "keys", "capacity", "message"}
    assert stats["total"] == {
        "delayed": 1,
        "queued": 4,
        "running": 0,
        "waiting": 0,
        "completed": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert set(stats["queues"]) == {"cli-q", "cli-other"}
    assert (stats["queues"]["cli-q"]["queued"], stats["queues"]["cli-q"]["delayed"]) == (3, 1)
    assert [(k["queue"], k["concurrency_key"], k["queued"]) for k in stats["keys"]] == [
        ("cli-q", "u-1", 2),
        ("cli-q", "u-2", 1),
    ]
    assert stats["capacity"] == {"running": 0, "limit": 40, "queued": 4}
    assert stats["message"] == "Running 0 of 40; 4 queued"


def test_stats__human_first_line_is_capacity(project: Project, runs: list[str]) -> None:
    """The human output starts with 'Running X of Y; Z queued' (burst = 20 x 2.0)."""
    result = project.run("stats")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Running 0 of 40; 4 queued"
    assert any(line.startswith("cli-q ") for line in lines)


def test_stats__default_config_capacity(project: Project, runs: list[str]) -> None:
    """With the built-in limits the capacity is 200 x 2.0 = 400."""
    project.config.write_text('database = "keyq.db"\n')
    result = project.run("stats")
    assert result.stdout.splitlines()[0] == "Running 0 of 400; 4 queued"


def test_runs_cancel__no_database_exits_1_and_creates_none(project: Project) -> None:
    """Canceling where no database exists (a wrong --config) fails without creating files."""
    result = project.run("runs", "cancel", "run_nope")
    assert result.exit_code == 1
    assert sorted(p.name for p in project.root.iterdir()) == ["keyq.toml"]


def test_runs_show__error_with_line_separator_does_not_crash(project: Project) -> None:
    """`runs show` prints a failed run whose error message holds U+2028 without a traceback."""
    run_id = project.trigger_id("cli-echo")
    (row,) = project.rows()
    error = ErrorInfo("ValueError", "a\u2028b")
    conn = sqlite3.connect(project.database)
    for at, from_, to, extra in [
        (1.0, QUEUED, RUNNING, {}),
        (2.0, RUNNING, FAILED, {"error": error}),
    ]:
        move = Transition(
            run_id, row["seq"], "cli-echo", "cli-q", None, at, from_, to, "x", 1, **extra
        )
        conn.execute(db.QUERIES["apply_transition"], transition_params(move))  # the daemon's UPDATE
    conn.commit()
    conn.close()
    result = project.run("runs", "show", run_id, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"][-1]["error"]["message"] == "a\u2028b"
