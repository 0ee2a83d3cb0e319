"""Which limits apply: code, then config, then runtime overrides stored in the database.

A queue's limits come from three layers, each overriding the one before for
the fields it sets:

1. the code: ``keyq.queue("name", concurrency_limit=2, total_limit=40)``;
2. the config: ``[queues.name]``;
3. runtime: ``keyq queues set-limit``, a trigger-time queue override with a
   ``concurrency_limit``, ``keyq queues pause`` (stored in ``queue_settings``).

Per-key limits and pauses exist only at runtime (``key_settings``). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keyq.core.limits import QueueLimit


class CodeQueue(Protocol):
    """A queue as the code defines it (``keyq.Queue``)."""

    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def total_limit(self) -> int | None: ...


class ConfigQueue(CodeQueue, Protocol):
    """A queue as the config sets it (``[queues.NAME]``, ``keyq.config.QueueConfig``)."""

    @property
    def paused(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class QueueSetting:
    limit: QueueLimit
    paused: bool


@dataclass(frozen=True, slots=True)
class KeySetting:
    queue: str
    key: str
    limit: int | None
    paused: bool


def queue_settings(
    code: Mapping[str, CodeQueue],
    config: Mapping[str, ConfigQueue],
    stored: Iterable[Mapping[str, Any]],
) -> dict[str, QueueSetting]:
    """The effective limit and pause state of every queue any layer mentions."""
    merged: dict[str, dict[str, Any]] = {}
    for name, q in code.items():
        merged[name] = {"concurrency_limit": q.concurrency_limit, "total_limit": q.total_limit}
    for name, qc in config.items():
        layer = merged.setdefault(name, {})
        _overlay(layer, qc.concurrency_limit, qc.total_limit)
        layer["paused"] = qc.paused
    for row in stored:
        layer = merged.setdefault(row["queue"], {})
        _overlay(layer, row["concurrency_limit"], row["total_limit"])
        layer["paused"] = bool(row["paused"]) or layer.get("paused", False)
    return {
        name: QueueSetting(
            QueueLimit(layer.get("concurrency_limit"), layer.get("total_limit")),
            layer.get("paused", False),
        )
        for name, layer in merged.items()
    }


def key_settings(stored: Iterable[Mapping[str, Any]]) -> list[KeySetting]:
    return [
        KeySetting(
            row["queue"], row["concurrency_key"], row["concurrency_limit"], bool(row["paused"])
        )
        for row in stored
    ]


def _overlay(layer: dict[str, Any], concurrency_limit: int | None, total_limit: int | None) -> None:
    if concurrency_limit is not None:
        layer["concurrency_limit"] = concurrency_limit
    if total_limit is not None:
        layer["total_limit"] = total_limit
