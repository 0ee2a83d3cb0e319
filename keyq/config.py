"""Configuration: TOML in, one frozen :class:`Config` out, resolved once.

Where it comes from, first match wins: ``--config PATH``, then ``$KEYQ_CONFIG``,
then ``./keyq.toml`` if it exists, else the built-in defaults. Unknown keys and
bad values stop start-up with a :class:`ConfigError` naming the dotted key.

A relative ``database`` path is resolved against the directory of the config
file that names it (or the current directory for the defaults), so the CLI
finds the daemon's database from anywhere.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from keyq.core import bounds
from keyq.core.bounds import check_name
from keyq.core.durations import parse_duration
from keyq.core.ratelimit import parse_rate
from keyq.errors import ConfigError, DefinitionError
from keyq.schedules import Schedule, from_table

Durability = Literal["full", "normal"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024  # SQLite stores at most about 1 GB in one value
MAX_BURST_FACTOR = 1000.0
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: the environment base limit and its burst factor."""

    concurrency: int = 200
    burst_factor: float = 2.0

    @property
    def burst(self) -> int:
        return math.floor(self.concurrency * self.burst_factor)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``[queues.NAME]``: overrides of a queue's limits by name."""

    concurrency_limit: int | None = None
    total_limit: int | None = None
    rate_limit: str | None = None  # "100/1m", or "none" to lift the code's; None: unset
    rate_limit_total: str | None = None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: how long final runs are kept."""

    completed_s: float = 24 * 3600.0
    failed_s: float = 7 * 24 * 3600.0
    canceled_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``: the group that shares the daemon's files (keyq/permissions.py)."""

    group: str | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: log format and level; payloads are never logged unless asked."""

    format: LogFormat = "auto"
    level: str = "info"
    payloads: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """Everything keyq reads from configuration."""

    database: Path = Path("keyq.db")
    tasks: tuple[str, ...] = ()
    durability: Durability = "full"
    max_payload_bytes: int = 1024 * 1024
    lock_timeout_s: float = 5.0
    shutdown_grace_s: float = 30.0
    checkpoint_after_s: float = 5.0  # a wait longer than this drops its coroutine
    commit_retry_s: float = 300.0  # then a daemon whose commits keep failing stops
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    schedules: tuple[Schedule, ...] = ()  # [[schedules]]
    source: Path | None = None  # the file this came from, if any

    def with_database(self, database: str | Path) -> Config:
        return replace(self, database=Path(database).absolute())


# --- loading ------------------------------------------------------------------------


def resolve_path(explicit: str | Path | None = None) -> Path | None:
    """The config file to use, by precedence, or None for the defaults."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("KEYQ_CONFIG")
    if env:
        return Path(env)
    local = Path("keyq.toml")
    return local if local.is_file() else None


def load_config(explicit: str | Path | None = None) -> Config:
    """Resolve and load the configuration (see module docstring for precedence)."""
    path = resolve_path(explicit)
    if path is None:
        return Config(database=Path("keyq.db").absolute())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(text, source=path)


def parse_config(text: str, *, source: Path | None = None) -> Config:
    """Parse TOML text into a Config; ``source`` anchors relative paths."""
    where = f" in {source}" if source else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config{where} is not valid TOML: {exc}") from exc
    try:
        return _build(data, source)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{where}") from None


# --- validation -----------------------------------------------------------------------

Validator = Callable[[str, Any], Any]


def _int(minimum: int, maximum: int = bounds.MAX_LIMIT) -> Validator:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")
        if value > maximum:
            raise ConfigError(f"{key} must be <= {maximum}, got {value}")
        return value

    return check


def _factor(key: str, value: Any) -> float:
    try:
        return bounds.number(key, value, 1, MAX_BURST_FACTOR)
    except bounds.BoundError as exc:
        raise ConfigError(str(exc)) from None


def _duration(maximum: float = bounds.MAX_DURATION_S) -> Validator:
    def check(key: str, value: Any) -> float:
        try:
            seconds = parse_duration(value, field=key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if seconds > maximum:
            raise ConfigError(f"{key} must be at most {maximum:g} s, got {value!r}")
        return seconds

    return check


def _choice(*choices: str) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _rate(key: str, value: Any) -> str:
    try:
        rate = parse_rate(value, field=key) if value is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return str(rate) if rate is not None else "none"


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _modules(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be a list of module names, got {value!r}")
    return tuple(value)


def _schedule_list(key: str, value: Any) -> tuple[Schedule, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{key}: expected [[schedules]] tables")
    try:
        schedules = tuple(from_table(i, t) for i, t in enumerate(value))
    except DefinitionError as exc:
        raise ConfigError(str(exc)) from None
    ids = [s.id for s in schedules]
    for i, schedule_id in enumerate(ids):
        if schedule_id in ids[:i]:
            raise ConfigError(f"schedules[{i}].id: {schedule_id!r} is used twice")
    return schedules


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table, got {value!r}")
    return value


def _fields(prefix: str, table: dict[str, Any], spec: dict[str, Validator]) -> dict[str, Any]:
    """Validate a table's keys against ``spec``; unknown keys are errors."""
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if name not in spec:
            known = ", ".join(sorted(spec))
            raise ConfigError(f"unknown config key {key!r} (known here: {known})")
        out[name] = spec[name](key, value)
    return out


_TOP: dict[str, Validator] = {
    "database": _string,
    "tasks": _modules,
    "durability": _choice("full", "normal"),
    "max_payload_bytes": _int(1, MAX_PAYLOAD_BYTES),
    "lock_timeout": _duration(DAY_S),
    "shutdown_grace": _duration(DAY_S),
    "checkpoint_after": _duration(),
    "commit_retry": _duration(DAY_S),
    "limits": _table,
    "queues": _table,
    "retention": _table,
    "log": _table,
    "security": _table,
    "schedules": _schedule_list,
}
_LIMITS: dict[str, Validator] = {"concurrency": _int(1), "burst_factor": _factor}
_QUEUE: dict[str, Validator] = {
    "concurrency_limit": _int(0),
    "total_limit": _int(0),
    "rate_limit": _rate,
    "rate_limit_total": _rate,
    "paused": _bool,
}
_RETENTION: dict[str, Validator] = {
    "completed": _duration(),
    "failed": _duration(),
    "canceled": _duration(),
}
_SECURITY: dict[str, Validator] = {"group": _string}
_LOG: dict[str, Validator] = {
    "format": _choice("auto", "json", "console"),
    "level": _choice(*LOG_LEVELS),
    "payloads": _bool,
}


def _build(data: dict[str, Any], source: Path | None) -> Config:
    top = _fields("", data, _TOP)
    schedules = top.pop("schedules", ())
    limits = LimitsConfig(**_fields("limits.", top.pop("limits", {}), _LIMITS))
    queues = _queues(top.pop("queues", {}))
    retention = _fields("retention.", top.pop("retention", {}), _RETENTION)
    log = LogConfig(**_fields("log.", top.pop("log", {}), _LOG))
    security = SecurityConfig(**_fields("security.", top.pop("security", {}), _SECURITY))
    base = source.parent if source is not None else Path(".")
    database = (base / top.pop("database", "keyq.db")).absolute()
    renames = {
        "lock_timeout": "lock_timeout_s",
        "shutdown_grace": "shutdown_grace_s",
        "checkpoint_after": "checkpoint_after_s",
        "commit_retry": "commit_retry_s",
    }
    top = {renames.get(k, k): v for k, v in top.items()}
    return Config(
        database=database,
        limits=limits,
        queues=queues,
        retention=RetentionConfig(**{f"{k}_s": v for k, v in retention.items()}),
        log=log,
        security=security,
        schedules=schedules,
        source=source,
        **top,
    )


def _queues(table: dict[str, Any]) -> dict[str, QueueConfig]:
    queues: dict[str, QueueConfig] = {}
    for name, value in table.items():
        key = f"queues.{name}"
        try:
            check_name("queue name", name)
        except DefinitionError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        queues[name] = QueueConfig(**_fields(f"{key}.", _table(key, value), _QUEUE))
    return queues
