"""`keyq queues` and `keyq keys`: limits as they apply, and who is held back."""

from __future__ import annotations

import json

from project import Project


def test_queues__lists_effective_limits_and_counts(project: Project) -> None:
    """The code's limit shows until a runtime override replaces it; counts are per state."""
    for key in ("u1", "u1", "u1", "u2"):
        project.trigger_id("cli-echo", "{}", "--concurrency-key", key)

    before = project.run("queues", "--json", app=True)
    assert before.exit_code == 0, before.stderr
    (queue,) = [q for q in json.loads(before.stdout) if q["queue"] == "cli-q"]
    assert (queue["concurrency_limit"], queue["queued"], queue["running"]) == (2, 4, 0)

    assert project.run("queues", "set-limit", "cli-q", "5").exit_code == 0
    after = json.loads(project.run("queues", "--json", app=True).stdout)
    assert [q["concurrency_limit"] for q in after if q["queue"] == "cli-q"] == [5]


def test_keys__busiest_backlog_first_with_key_overrides(project: Project) -> None:
    """`keyq keys --queue Q` lists active keys, biggest backlog first, with each key's limit."""
    for key in ("small", "big", "big", "big"):
        project.trigger_id("cli-echo", "{}", "--concurrency-key", key)
    assert project.run("keys", "set-limit", "cli-q", "big", "7").exit_code == 0

    result = project.run("keys", "--queue", "cli-q", "--json", app=True)
    assert result.exit_code == 0, result.stderr
    keys = json.loads(result.stdout)
    assert [(k["concurrency_key"], k["queued"], k["limit"]) for k in keys] == [
        ("big", 3, 7),
        ("small", 1, 2),
    ]
    assert not any(k["at_limit"] for k in keys)  # nothing is running yet


def test_keys__needs_a_queue(project: Project) -> None:
    """Without --queue the command says what it needs."""
    result = project.run("keys")
    assert result.exit_code == 2
    assert "--queue" in result.stderr


def test_queues__set_rate_is_stored_shown_and_reset(project: Project) -> None:
    """`queues set-rate` stores the rate as written; the table shows it; --reset drops it."""
    project.trigger_id("cli-echo", "{}", "--concurrency-key", "u1")
    result = project.run("queues", "set-rate", "cli-q", "100/60s", "--total", "1000/1h")
    assert (result.exit_code, result.stdout.strip()) == (0, "queue cli-q: rate 100/60s")
    queue = _queue(project, "cli-q")
    assert (queue["rate_limit"], queue["rate_limit_total"], queue["total_rate_starts"]) == (
        "100/1m",
        "1000/1h",
        0,
    )
    table = project.run("queues").stdout
    assert "RATE/KEY" in table
    assert "100/1m" in table
    assert "1000/1h (0 started)" in table

    assert project.run("keys", "set-rate", "cli-q", "u1", "none").exit_code == 0
    keys = json.loads(project.run("keys", "--queue", "cli-q", "--json", app=True).stdout)
    assert [(k["concurrency_key"], k["rate_limit"], k["rate_starts"]) for k in keys] == [
        ("u1", None, None)
    ]

    assert project.run("queues", "set-rate", "cli-q", "--reset").exit_code == 0
    queue = _queue(project, "cli-q")
    assert (queue["rate_limit"], queue["rate_limit_total"]) == (None, None)


def test_queues__a_bad_rate_exits_2_naming_it(project: Project) -> None:
    result = project.run("queues", "set-rate", "cli-q", "100/minute")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: rate: expected a rate such as 100/1m, 10/s or none, got '100/minute' "
        "('minute' is not a window: use s, m, h, d or e.g. 30s)"
    )
    assert project.run("queues", "set-rate", "cli-q").exit_code == 2  # neither RATE nor --reset


def _queue(project: Project, name: str) -> dict[str, object]:
    (queue,) = [q for q in json.loads(project.run("queues", "--json").stdout) if q["queue"] == name]
    return queue
