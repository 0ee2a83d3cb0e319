"""The keyq error hierarchy.

Every error a user can meet derives from :class:`KeyqError`. Each class's
docstring says when it is raised; messages name the offending key or field and
its value, so that a CLI user can fix the input without reading code.
"""

from __future__ import annotations


class KeyqError(Exception):
    """Base class of every error keyq raises on purpose."""


class ConfigError(KeyqError):
    """The configuration file or a config value is invalid (names the dotted key)."""


class DefinitionError(KeyqError):
    """A queue or task definition is invalid (bad id, duplicate id, bad limit)."""


class InvalidArgumentError(KeyqError, ValueError):
    """An argument to an operation is outside its bounds (names it); nothing was written."""


class TriggerError(KeyqError):
    """A trigger was refused before anything was stored (names the field)."""


class UnknownTaskError(TriggerError, LookupError):
    """A trigger named a task id that no loaded module defines."""

    def __init__(self, task_id: str, known: list[str]) -> None:
        hint = ", ".join(sorted(known)[:20]) or "none; pass --app or set `tasks` in config"
        super().__init__(f"unknown task {task_id!r} (known tasks: {hint})")
        self.task_id = task_id


class PayloadError(TriggerError):
    """A payload is not JSON, or is larger than max_payload_bytes."""


class RunNotFoundError(KeyqError, LookupError):
    """No run with this id exists in the database."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class IllegalTransition(KeyqError):
    """A run was asked to move between two states the state table does not connect."""


class RunStateError(KeyqError):
    """An operation does not apply to a run in its current state (cancel a finished run)."""


class SlotError(KeyqError):
    """Slot accounting was misused: a double acquire or a release without an acquire (a bug)."""


class StoreError(KeyqError):
    """The SQLite database failed: disk full, I/O error, corrupt file (wraps the cause).

    Retrying may succeed once the cause is gone (space freed, the lock released).
    """


class UnstorableError(StoreError):
    """The database refused a write that retrying cannot fix: a constraint, text it
    cannot encode, a number out of range. Only the writes that carry it are refused."""


class DatabaseBusyError(StoreError):
    """Another process held the database's write lock for longer than the lock timeout."""


class DaemonAlreadyRunningError(KeyqError):
    """A second daemon was started on a database that a running daemon already owns."""


class UnsafeDatabaseError(KeyqError):
    """The database file is where SQLite cannot keep it safe (a network file system, a
    second hard link); the message says why and what to do."""


class DaemonNotRunningError(KeyqError):
    """A live operation needs the daemon and no daemon owns this database."""


class WaitError(KeyqError):
    """A wait was used outside a running task, or with invalid arguments."""


class TokenNotFoundError(KeyqError, LookupError):
    """No waitpoint token has this id."""

    def __init__(self, token_id: str) -> None:
        super().__init__(f"no waitpoint token {token_id!r} (keyq tokens list shows them)")
        self.token_id = token_id


class TokenStateError(KeyqError):
    """The token cannot be completed: it already was, or it timed out."""
