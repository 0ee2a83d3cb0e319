"""Which limits apply: code, then config, then runtime overrides stored in the database.

A queue's limits come from three layers, each overriding the one before for
the fields it sets:

1. the code: ``keyq.queue("name", concurrency_limit=2, total_limit=40,
   rate_limit="100/1m")``;
2. the config: ``[queues.name]``;
3. runtime: ``keyq queues set-limit``, ``set-rate``, a trigger-time queue
   override with a ``concurrency_limit``, ``keyq queues pause`` (stored in
   ``queue_settings``).

A rate is written as text everywhere it is stored or configured: ``"100/1m"``,
or ``"none"`` to lift a rate an earlier layer set; an unset field (None)
leaves the earlier layer's. Per-key limits, rates and pauses exist only at
runtime (``key_settings``). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keyq.core.limits import KeyRule, QueueLimit
from keyq.core.ratelimit import Rate, parse_rate

_FIELDS = ("concurrency_limit", "total_limit", "rate_limit", "rate_limit_total")


class CodeQueue(Protocol):
    """A queue as the code defines it (``keyq.Queue``)."""

    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def total_limit(self) -> int | None: ...
    @property
    def rate_limit(self) -> Rate | None: ...
    @property
    def rate_limit_total(self) -> Rate | None: ...


class ConfigQueue(Protocol):
    """A queue as the config sets it (``[queues.NAME]``, ``keyq.config.QueueConfig``)."""

    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def total_limit(self) -> int | None: ...
    @property
    def rate_limit(self) -> str | None: ...
    @property
    def rate_limit_total(self) -> str | None: ...
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
    rate_limit: str | None = None  # None: the queue's rate applies

    @property
    def rule(self) -> KeyRule:
        own = self.rate_limit is not None
        rate = parse_rate(self.rate_limit, field="rate_limit") if own else None
        return KeyRule(self.limit, self.paused, rate, own_rate=own)


def queue_settings(
    code: Mapping[str, CodeQueue],
    config: Mapping[str, ConfigQueue],
    stored: Iterable[Mapping[str, Any]],
) -> dict[str, QueueSetting]:
    """The effective limit and pause state of every queue any layer mentions."""
    merged: dict[str, dict[str, Any]] = {}
    for name, q in code.items():
        merged[name] = {
            "concurrency_limit": q.concurrency_limit,
            "total_limit": q.total_limit,
            "rate_limit": _text(q.rate_limit),
            "rate_limit_total": _text(q.rate_limit_total),
        }
    for name, qc in config.items():
        layer = merged.setdefault(name, {})
        _overlay(layer, {f: getattr(qc, f) for f in _FIELDS})
        layer["paused"] = qc.paused
    for row in stored:
        layer = merged.setdefault(row["queue"], {})
        _overlay(layer, {f: row[f] for f in _FIELDS})
        layer["paused"] = bool(row["paused"]) or layer.get("paused", False)
    return {name: _setting(layer) for name, layer in merged.items()}


def _setting(layer: Mapping[str, Any]) -> QueueSetting:
    limit = QueueLimit(
        layer.get("concurrency_limit"),
        layer.get("total_limit"),
        parse_rate(layer.get("rate_limit"), field="rate_limit"),
        parse_rate(layer.get("rate_limit_total"), field="rate_limit_total"),
    )
    return QueueSetting(limit, layer.get("paused", False))


def key_settings(stored: Iterable[Mapping[str, Any]]) -> list[KeySetting]:
    return [
        KeySetting(
            row["queue"],
            row["concurrency_key"],
            row["concurrency_limit"],
            bool(row["paused"]),
            row["rate_limit"],
        )
        for row in stored
    ]


def _overlay(layer: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Each field an upper layer sets wins; None leaves the lower layer's."""
    layer.update({name: value for name, value in fields.items() if value is not None})


def _text(rate: Rate | None) -> str | None:
    return str(rate) if rate is not None else None
