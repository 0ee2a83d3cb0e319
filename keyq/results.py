"""What a trigger hands back (:class:`RunHandle`) and how a run ended (:class:`RunResult`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keyq.errors import KeyqError
from keyq.model import ErrorInfo
from keyq.states import RunState


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
