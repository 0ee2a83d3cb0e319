"""Triggering while no daemon runs must not leak resources (users run their tests with -W error)."""

from __future__ import annotations

import gc
import warnings
from typing import Any

from keyq.client import Client

Project = Any


def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_trigger__no_daemon_leaves_no_socket_unclosed(project: Project) -> None:
    """`keyq trigger` with the daemon stopped closes every socket it opened to poke it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = project.trigger("cli-echo", "{}")
        gc.collect()
    assert result.exit_code == 0, result.stderr
    assert _resource_warnings(caught) == []


def test_client_trigger__no_daemon_leaves_no_socket_unclosed(project: Project) -> None:
    """A web app's Client triggering while the daemon is down leaks no socket."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Client(project.config) as client:
            for _ in range(3):
                client.trigger("cli-echo", {"n": 1})
        gc.collect()
    assert len(project.rows()) == 3
    assert _resource_warnings(caught) == []
