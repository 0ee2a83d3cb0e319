"""`keyq trigger`: prints the run id once the run is durable; refuses bad input with exit codes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from keyq.store.instance import daemon_running

RUN_ID = re.compile(r"^run_[0-9a-z]{26}$")
Project = Any


def test_trigger__prints_only_the_run_id_and_stores_it_queued(project: Project) -> None:
    """With no daemon, trigger exits 0, prints the bare id, and the run waits queued on disk."""
    assert not daemon_running(project.database)
    result = project.trigger("cli-echo", '{"workoutId": "w-123"}', "--concurrency-key", "u-1")
    assert result.exit_code == 0, result.stderr
    assert RUN_ID.match(result.stdout.rstrip("\n"))
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""
    (row,) = project.rows()
    assert row["id"] == result.stdout.strip()
    assert (row["task"], row["queue"], row["concurrency_key"]) == ("cli-echo", "cli-q", "u-1")
    assert (row["status"], row["priority"]) == ("queued", 5)
    assert json.loads(row["payload"]) == {"workoutId": "w-123"}


def test_trigger__payload_defaults_to_empty_object(project: Project) -> None:
    """Without a payload argument the task receives {}."""
    project.trigger_id("cli-other")
    (row,) = project.rows()
    assert (row["queue"], row["payload"]) == ("cli-other", "{}")


def test_trigger__json_prints_the_run(project: Project) -> None:
    """--json prints the new run's JSON (SPEC §9 fields) instead of the id."""
    result = project.trigger("cli-echo", "[1, 2]", "--json", "--tag", "a", "--tag", "b")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    (row,) = project.rows()
    assert run["id"] == row["id"]
    assert (run["task"], run["queue"], run["status"]) == ("cli-echo", "cli-q", "queued")
    assert (run["payload"], run["tags"], run["concurrency_key"]) == ([1, 2], ["a", "b"], None)
    assert (run["priority"], run["attempt"], run["max_attempts"]) == (5, 1, 3)
    assert run["created_at"].endswith("Z")
    assert [e["to"] for e in run["events"]] == ["queued"]


def test_trigger__every_option_is_stored(project: Project) -> None:
    """Priority, max attempts, idempotency key, queue and queue limit reach the database."""
    project.trigger_id(
        "cli-echo",
        "{}",
        "--priority", "2",
        "--max-attempts", "7",
        "--idempotency-key", "order-1",
        "--queue", "free-users",
        "--queue-limit", "1",
        "-k", "u-9",
    )  # fmt: skip
    (row,) = project.rows()
    assert (row["priority"], row["max_attempts"], row["idempotency_key"]) == (2, 7, "order-1")
    assert (row["queue"], row["queue_limit"], row["concurrency_key"]) == ("free-users", 1, "u-9")


def test_trigger__idempotency_key_prints_the_same_id(project: Project) -> None:
    """Triggering twice with one idempotency key prints the first run's id again."""
    first = project.trigger_id("cli-echo", "{}", "--idempotency-key", "k")
    again = project.trigger_id("cli-echo", '{"other": 1}', "--idempotency-key", "k")
    assert again == first
    assert len(project.rows()) == 1


def test_trigger__delay_makes_a_delayed_run(project: Project) -> None:
    """--delay 5m stores the run delayed, available five minutes after it was created."""
    run_id = project.trigger_id("cli-echo", "{}", "--delay", "5m")
    (row,) = project.rows()
    assert (row["id"], row["status"]) == (run_id, "delayed")
    assert row["available_at"] - row["created_at"] == pytest.approx(300)


def test_trigger__unknown_task_exits_2_naming_known_tasks(project: Project) -> None:
    """An unknown task id fails with exit 2, names the task and the known ones, stores nothing."""
    result = project.trigger("cli-nope", "{}")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown task 'cli-nope'" in result.stderr
    assert "cli-echo" in result.stderr
    assert "cli-other" in result.stderr
    assert project.rows() == []


def test_trigger__without_app_the_task_is_unknown(project: Project) -> None:
    """A trigger with no task modules cannot name a task (no import of CLI-provided names)."""
    result = project.run("trigger", "os.system", "{}")
    assert result.exit_code == 2
    assert "unknown task 'os.system'" in result.stderr
    assert project.rows() == []


def test_trigger__missing_app_module_exits_2(project: Project) -> None:
    """--app naming a module that does not exist fails with exit 2 naming it."""
    result = project.run("trigger", "cli-echo", "{}", "--app", "keyq_clitier_no_such_module")
    assert result.exit_code == 2
    assert "cannot import task module 'keyq_clitier_no_such_module'" in result.stderr
    assert project.rows() == []


def test_trigger__app_is_imported_from_the_current_directory(project: Project) -> None:
    """--app finds a module in the current directory, the way uvicorn does."""
    (project.root / "keyq_clitier_fresh_app.py").write_text(
        "import keyq\n\n\n@keyq.task(id='cli-fresh')\n"
        "async def fresh(payload, ctx):\n    return 1\n"
    )
    result = project.run("trigger", "cli-fresh", "{}", "--app", "keyq_clitier_fresh_app")
    assert result.exit_code == 0, result.stderr
    assert [r["task"] for r in project.rows()] == ["cli-fresh"]


def test_trigger__tasks_from_config_are_imported(project: Project) -> None:
    """`tasks = [...]` in the config loads the modules, without --app."""
    project.config.write_text(f'tasks = ["{project.app}"]\n' + project.config.read_text())
    result = project.run("trigger", "cli-echo", "{}")
    assert result.exit_code == 0, result.stderr
    assert len(project.rows()) == 1


@pytest.mark.parametrize("payload", ["{bad", "", "{'a': 1}", "NaN-ish"])
def test_trigger__bad_json_payload_exits_2(project: Project, payload: str) -> None:
    """A payload that is not JSON is a usage error: exit 2, nothing stored."""
    result = project.trigger("cli-echo", payload)
    assert result.exit_code == 2
    assert "payload is not valid JSON" in result.stderr
    assert project.rows() == []


def test_trigger__nan_payload_is_refused(project: Project) -> None:
    """Python's json accepts NaN, but it is not JSON: keyq refuses it and stores nothing."""
    result = project.trigger("cli-echo", '{"x": NaN}')
    assert result.exit_code in (1, 2)
    assert "JSON" in result.stderr
    assert project.rows() == []


def test_trigger__payload_over_limit_exits_2_naming_size(project: Project) -> None:
    """A payload over max_payload_bytes fails with exit 2, naming its size and the limit."""
    project.config.write_text("max_payload_bytes = 64\n" + project.config.read_text())
    payload = json.dumps({"data": "x" * 100})
    result = project.trigger("cli-echo", payload)
    assert result.exit_code == 2
    assert f"payload is {len(json.dumps({'data': 'x' * 100}, separators=(',', ':')))} bytes" in (
        result.stderr
    )
    assert "max_payload_bytes = 64" in result.stderr
    assert project.rows() == []


@pytest.mark.parametrize("priority", ["0", "11", "-3"])
def test_trigger__priority_out_of_range_exits_nonzero(project: Project, priority: str) -> None:
    """--priority outside 1-10 fails naming priority; nothing is stored."""
    result = project.trigger("cli-echo", "{}", "--priority", priority)
    assert result.exit_code == 2
    assert f"priority must be from 1 to 10, got {priority}" in result.stderr
    assert project.rows() == []


def test_trigger__non_integer_priority_is_a_usage_error(project: Project) -> None:
    """--priority x is rejected by argument parsing (exit 2)."""
    result = project.trigger("cli-echo", "{}", "--priority", "x")
    assert result.exit_code == 2
    assert project.rows() == []


@pytest.mark.parametrize("delay", ["soon", "-5m", "5 minutes"])
def test_trigger__bad_delay_exits_2(project: Project, delay: str) -> None:
    """A delay that is not a duration fails naming the delay."""
    result = project.trigger("cli-echo", "{}", "--delay", delay)
    assert result.exit_code == 2
    assert "delay:" in result.stderr
    assert project.rows() == []


def test_trigger__queue_limit_needs_queue(project: Project) -> None:
    """--queue-limit without --queue is a usage error."""
    result = project.trigger("cli-echo", "{}", "--queue-limit", "3")
    assert result.exit_code == 2
    assert "--queue-limit needs --queue" in result.stderr
    assert project.rows() == []


def test_trigger__max_attempts_zero_exits_2(project: Project) -> None:
    """--max-attempts 0 is refused naming max_attempts and its bounds."""
    result = project.trigger("cli-echo", "{}", "--max-attempts", "0")
    assert result.exit_code == 2
    assert "max_attempts must be from 1 to 1000, got 0" in result.stderr
    assert project.rows() == []


def test_trigger__task_module_with_bad_definition_exits_2(project: Project) -> None:
    """A task module that defines a bad task id stops the command with exit 2 naming the id."""
    (project.root / "keyq_clitier_bad_app.py").write_text(
        "import keyq\n\n\n@keyq.task(id='bad id')\nasync def bad(payload, ctx):\n    return 1\n"
    )
    result = project.run("trigger", "bad id", "{}", "--app", "keyq_clitier_bad_app")
    assert result.exit_code == 2
    assert "invalid task id 'bad id'" in result.stderr
    assert "Traceback" not in result.output
    assert project.rows() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-attempts", "100000000000000000000"], "max_attempts must be from 1 to 1000"),
        (["--delay", "3000000d"], "delay must be a duration from 0 to 100 years"),
        (["--priority", "100000000000000000000"], "priority must be from 1 to 10"),
        (["--concurrency-key", "a\udcff"], "concurrency_key must be valid UTF-8"),
        (["--queue", "q", "--queue-limit", str(10**30)], "queue.concurrency_limit must be"),
    ],
)
def test_trigger__values_past_their_bounds_exit_2_naming_them(
    project: Project, args: list[str], message: str
) -> None:
    """Failures 1, 2 and 6: a value past its bound (an attempt count over 64 bits, a delay
    past the year 9999, an argument that is not UTF-8) is refused naming it, exit 2, nothing
    stored; before, the first one reached the daemon and killed it at its commit."""
    result = project.trigger("cli-echo", "{}", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert project.rows() == []
