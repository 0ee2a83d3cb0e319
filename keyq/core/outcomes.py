"""How an ended attempt decides its run: the outcome rules every store keeps. Pure.

An attempt returns, raises, or stops. What becomes of its run depends on the
outcome and on why the engine asked the attempt to stop, if it did:

* a cancel wins over everything but a completed or failed outcome reported
  before it landed: the run ends CANCELED (keeping the error it raised);
* past its ``max_duration`` the attempt failed with a ``Timeout``, even if a
  thread returned meanwhile;
* a failure retries after the task's backoff while attempts are left, unless
  it is not retryable (a bug on keyq's side, an unstorable result);
* an attempt cut short (shutdown, crash) runs again while attempts are left.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from keyq.core.model import Completed, ErrorInfo, Failed, Outcome, TaskPolicy
from keyq.core.states import CANCELED, COMPLETED, FAILED, Reason, RunState

INTERRUPTED = ErrorInfo("Interrupted", "the daemon stopped during the last attempt")


@dataclass(frozen=True, slots=True)
class Final:
    """The run ends in ``state``."""

    state: RunState
    reason: Reason
    result: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class RetryAt:
    """The run waits DELAYED until ``at``, then runs its next attempt."""

    at: float
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class RunAgain:
    """The attempt was cut short: the run is queued to run again at once."""


Verdict = Final | RetryAt | RunAgain


def judge(
    outcome: Outcome,
    stop_reason: Reason | None,
    attempt: int,
    max_attempts: int,
    policy: TaskPolicy,
    now: float,
    rng: random.Random,
) -> Verdict:
    """What becomes of a run whose attempt number ``attempt`` ended with ``outcome``;
    ``stop_reason`` is why the engine asked it to stop (None: it did not)."""
    attempts_left = attempt < max_attempts
    if isinstance(outcome, Failed) and stop_reason is not Reason.CANCELED:
        if outcome.retryable and attempts_left:
            return RetryAt(now + policy.retry.delay_s(attempt, rng), outcome.error)
        return Final(FAILED, Reason.FAILED, error=outcome.error)
    if stop_reason is Reason.TIMEOUT:
        budget = policy.max_duration_s
        timeout = ErrorInfo("Timeout", f"attempt exceeded max_duration of {budget} s")
        if attempts_left:
            return RetryAt(now + policy.retry.delay_s(attempt, rng), timeout)
        return Final(FAILED, Reason.TIMEOUT, error=timeout)
    if isinstance(outcome, Completed):
        return Final(COMPLETED, Reason.COMPLETED, result=outcome.result)
    if stop_reason is Reason.CANCELED:
        return Final(CANCELED, Reason.CANCELED, error=_error_of(outcome))
    return RunAgain() if attempts_left else Final(FAILED, Reason.INTERRUPTED, error=INTERRUPTED)


def _error_of(outcome: Outcome) -> ErrorInfo | None:
    return outcome.error if isinstance(outcome, Failed) else None
