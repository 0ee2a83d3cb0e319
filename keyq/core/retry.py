"""Retry policy: how long a failed attempt waits before the next one.

Pure: jitter comes from a ``random.Random`` the caller passes in, so tests pin it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from keyq.core import bounds
from keyq.errors import DefinitionError

Backoff = Literal["exponential", "fixed"]


@dataclass(frozen=True, slots=True)
class Retry:
    """How many attempts a run gets and how long it waits between them.

    ``exponential``: the wait after attempt *n* is ``min_delay * factor**(n-1)``,
    capped at ``max_delay``. ``fixed``: always ``min_delay``. ``jitter`` spreads
    each wait by up to that fraction either way, so retries of many runs that
    failed together do not all return at the same instant.
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    min_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        try:
            bounds.integer("Retry.max_attempts", self.max_attempts, 1, bounds.MAX_ATTEMPTS)
            for name in ("min_delay", "max_delay"):
                bounds.number(f"Retry.{name}", getattr(self, name), 0, bounds.MAX_DURATION_S)
            bounds.number("Retry.factor", self.factor, 1, 1000)
            bounds.number("Retry.jitter", self.jitter, 0, 1)
        except bounds.BoundError as exc:
            raise DefinitionError(str(exc)) from None
        if self.backoff not in ("exponential", "fixed"):
            raise DefinitionError(
                f"Retry.backoff must be 'exponential' or 'fixed', got {self.backoff!r}"
            )
        if not 0 <= self.min_delay <= self.max_delay:
            raise DefinitionError(
                f"Retry delays need 0 <= min_delay <= max_delay, got "
                f"min_delay={self.min_delay}, max_delay={self.max_delay}"
            )

    def delay_s(self, failed_attempt: int, rng: random.Random) -> float:
        """Seconds to wait after ``failed_attempt`` (1-based) before the next one."""
        if self.backoff == "fixed":
            base = self.min_delay
        else:
            exponent = min(failed_attempt - 1, 64)  # avoid float overflow on long runs
            base = min(self.max_delay, self.min_delay * self.factor**exponent)
        if self.jitter and base:
            base *= 1 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.max_delay))


DEFAULT_RETRY = Retry()
