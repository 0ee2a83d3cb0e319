"""What the daemon logs: stable event names with ids, never payloads or results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import deadline

import keyq
from keyq.config import Config, LogConfig
from keyq.logs import configure_logging
from keyq.registry import Registry

pytestmark = pytest.mark.anyio

SECRET = "alice@example.com"


@pytest.fixture
def debug_logs() -> Iterator[None]:
    configure_logging(LogConfig(format="json", level="debug"))
    yield
    configure_logging(LogConfig(format="json", level="warning"))


@pytest.mark.usefixtures("debug_logs")
async def test_logs__runs_are_logged_with_ids_but_no_personal_data(
    config: Config, registry: Registry
) -> None:
    """Each transition is an event with run_id, task, queue and key; payloads stay out."""

    @registry.task(id="welcome", queue=registry.queue("mail", concurrency_limit=1))
    async def welcome(payload: dict[str, Any], ctx: keyq.Context) -> str:
        return f"sent to {payload['email']}"

    @registry.task(id="explode", retry=keyq.Retry(max_attempts=1))
    async def explode(payload: Any, ctx: keyq.Context) -> None:
        raise RuntimeError("smtp down")

    with capture_logs() as logs:
        async with keyq.Daemon(config, registry=registry) as daemon:
            ok = await welcome.trigger({"email": SECRET}, concurrency_key="tenant-7")
            bad = await explode.trigger({"email": SECRET})
            async with deadline():
                await daemon.result(ok.id)
                await daemon.result(bad.id)

    events = {(e["event"], e.get("run_id")) for e in logs}
    assert ("run_started", ok.id) in events
    assert ("run_completed", ok.id) in events
    assert ("run_failed", bad.id) in events
    completed = next(e for e in logs if e["event"] == "run_completed")
    assert completed["task"] == "welcome"
    assert completed["queue"] == "mail"
    assert completed["concurrency_key"] == "tenant-7"
    failed = next(e for e in logs if e["event"] == "run_failed")
    assert (failed["error_type"], failed["error"], failed["log_level"]) == (
        "RuntimeError",
        "smtp down",
        "error",
    )
    assert SECRET not in repr(logs)
