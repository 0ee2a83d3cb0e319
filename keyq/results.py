"""What a trigger hands back (:class:`RunHandle`), how a run ended (:class:`RunResult`),
and how a wait for a waitpoint token ended (:class:`TokenResult`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keyq.core.model import ErrorInfo
from keyq.core.states import RunState
from keyq.errors import KeyqError


@dataclass(frozen=True, slots=True)
class RunHandle:
    """A durable run: ``id`` is its run id. ``is_new`` is False when an
    idempotency key matched an existing run, whose id is returned instead."""

    id: str
    task: str
    is_new: bool = True


class RunFailedError(KeyqError):
    """``RunResult.unwrap()`` on a run that failed or was canceled."""

    def __init__(self, result: RunResult) -> None:
        error = result.error
        detail = f"{error.type}: {error.message}" if error else result.status.value
        super().__init__(f"run {result.id} {result.status.value}: {detail}")
        self.result = result


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: ``ok`` and ``output`` when it completed, ``error`` otherwise."""

    id: str
    status: RunState
    output: Any = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunState.COMPLETED

    def unwrap(self) -> Any:
        """The output of a completed run; raises :class:`RunFailedError` otherwise."""
        if not self.ok:
            raise RunFailedError(self)
        return self.output

    @classmethod
    def from_stored(
        cls, run_id: str, status: RunState, result: str | None, error: ErrorInfo | None
    ) -> RunResult:
        return cls(run_id, status, json.loads(result) if result is not None else None, error)


class TokenTimeoutError(KeyqError):
    """``TokenResult.unwrap()`` on a token wait that timed out."""


@dataclass(frozen=True, slots=True)
class WaitToken:
    """A waitpoint token: hand ``id`` to whoever completes it (a web hook, a person)."""

    id: str
    timeout_at: float | None = None  # epoch seconds; None waits for ever

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class TokenResult:
    """How ``ctx.wait.for_token`` ended: ``ok`` and ``output`` when the token was
    completed, ``ok`` False and ``error.type == "TokenTimeout"`` when it timed out."""

    token_id: str
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None

    @property
    def timed_out(self) -> bool:
        return not self.ok

    def unwrap(self) -> Any:
        """The completion's output; raises :class:`TokenTimeoutError` if it timed out."""
        if not self.ok:
            raise TokenTimeoutError(f"waitpoint token {self.token_id} timed out")
        return self.output
