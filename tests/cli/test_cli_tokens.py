"""`keyq tokens list|complete`: waitpoint tokens from the command line, no daemon needed."""

from __future__ import annotations

import json
from typing import Any

from keyq.client import Client

Project = Any


def test_tokens__list_then_complete(project: Project) -> None:
    """A waiting token lists with its status; completing it stores the output once."""
    with Client(project.config) as client:
        token = client.create_token(timeout="1h")
    listed = project.run("tokens", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["status"], row["run_id"]) == (token.id, "waiting", None)
    assert row["timeout_at"] is not None

    done = project.run("tokens", "complete", token.id, '{"approved": true}')
    assert done.exit_code == 0, done.stderr
    assert done.stdout.strip() == f"completed {token.id}"
    table = project.run("tokens", "list", "--status", "completed")
    assert token.id in table.stdout
    with Client(project.config) as client:
        assert client.get_token(token.id)["output"] == {"approved": True}


def test_tokens__bad_input_is_refused_and_changes_nothing(project: Project) -> None:
    """Bad JSON (exit 2), an unknown token or status, a second completion: each says why."""
    with Client(project.config) as client:
        token = client.create_token()
    bad_json = project.run("tokens", "complete", token.id, "{nope")
    assert bad_json.exit_code == 2
    assert "output is not valid JSON" in bad_json.stderr
    unknown = project.run("tokens", "complete", "tok_missing", "1")
    assert unknown.exit_code == 1
    assert "no waitpoint token 'tok_missing'" in unknown.stderr
    bad_status = project.run("tokens", "list", "--status", "done")
    assert bad_status.exit_code == 2
    assert "--status must be one of waiting, completed, timed_out" in bad_status.stderr
    with Client(project.config) as client:
        assert client.get_token(token.id)["status"] == "waiting"
        assert project.run("tokens", "complete", token.id).exit_code == 0  # output: null
        second = project.run("tokens", "complete", token.id, "2")
        assert second.exit_code == 1
        assert "already completed" in second.stderr
        assert client.get_token(token.id)["output"] is None
