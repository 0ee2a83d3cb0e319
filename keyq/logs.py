"""structlog set-up: readable on a terminal, JSON otherwise (under systemd, in files).

Events are stable snake_case names with ``run_id``, ``task``, ``queue``,
``concurrency_key`` and ``attempt`` as fields. Payloads and results are never
logged unless ``[log] payloads = true``: they may hold personal data.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from keyq.config import LogConfig
from keyq.core.model import Transition

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(log: LogConfig, stream: TextIO | None = None) -> None:
    """Route keyq's structlog events to ``stream`` (stderr) in the configured format."""
    stream = stream or sys.stderr
    fmt = log.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
    global _min_level
    _min_level = _LEVELS[log.level]
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[log.level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


_min_level = logging.INFO


def get_logger() -> Any:
    return structlog.get_logger("keyq")


# (to, reason) -> (event name, level). Unlisted transitions log at debug as run_<to>.
_EVENTS: dict[tuple[str, str], tuple[str, str]] = {
    ("running", "started"): ("run_started", "info"),
    ("running", "restarted"): ("run_started", "info"),
    ("running", "resumed"): ("run_resumed", "info"),
    ("completed", "completed"): ("run_completed", "info"),
    ("delayed", "retry"): ("attempt_failed", "warning"),
    ("queued", "interrupted"): ("attempt_interrupted", "warning"),
    ("waiting", "wait"): ("run_waiting", "info"),
    ("failed", "failed"): ("run_failed", "error"),
    ("failed", "timeout"): ("run_failed", "error"),
    ("failed", "interrupted"): ("run_failed", "error"),
    ("failed", "unrecordable"): ("run_failed", "error"),
    ("canceled", "canceled"): ("run_canceled", "info"),
}
_UNLISTED = ("", "debug")  # named run_<to> when logged


def log_transitions(log: Any, transitions: Sequence[Transition], payloads: bool) -> None:
    """One structured event per transition: ids, task, queue and key; never the payload
    or result unless ``payloads`` (``[log] payloads = true``)."""
    for t in transitions:
        # (RunState, str) finds the (str, str) key: RunState is a StrEnum.
        event, level = _EVENTS.get((t.to, t.reason), _UNLISTED)
        if _LEVELS[level] < _min_level:
            continue  # filtered anyway: skip building the event on the hot path
        event = event or f"run_{t.to}"
        fields: dict[str, Any] = {
            "run_id": t.run_id,
            "task": t.task,
            "queue": t.queue,
            "concurrency_key": t.concurrency_key,
            "attempt": t.attempt,
            "reason": t.reason,
        }
        if t.error is not None:
            fields["error_type"] = t.error.type
            fields["error"] = t.error.message
        if payloads and t.result is not None:
            fields["result"] = t.result
        getattr(log, level)(event, **fields)
