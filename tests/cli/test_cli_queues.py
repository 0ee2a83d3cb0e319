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
