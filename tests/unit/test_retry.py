"""Retry policy: how long a failed attempt waits before the next one."""

from __future__ import annotations

import random

import pytest

from keyq.core.retry import DEFAULT_RETRY, Retry
from keyq.errors import DefinitionError


def test_retry__exponential_doubles_from_min_delay() -> None:
    """Without jitter, exponential backoff waits min_delay * factor**(n-1)."""
    policy = Retry(min_delay=1, max_delay=1_000, factor=2, jitter=0)
    rng = random.Random(0)
    assert [policy.delay_s(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_retry__exponential_uses_the_factor() -> None:
    """The growth factor is configurable."""
    policy = Retry(min_delay=0.5, max_delay=1_000, factor=3, jitter=0)
    rng = random.Random(0)
    assert [policy.delay_s(n, rng) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_retry__exponential_is_capped_at_max_delay() -> None:
    """Backoff never exceeds max_delay, however many attempts failed."""
    policy = Retry(min_delay=1, max_delay=60, factor=2, jitter=0)
    rng = random.Random(0)
    assert [policy.delay_s(n, rng) for n in range(5, 10)] == [16, 32, 60, 60, 60]
    assert policy.delay_s(10_000, rng) == 60


def test_retry__fixed_always_waits_min_delay() -> None:
    """Fixed backoff waits the same time after every attempt."""
    policy = Retry(backoff="fixed", min_delay=7, max_delay=60, jitter=0)
    rng = random.Random(0)
    assert {policy.delay_s(n, rng) for n in range(1, 50)} == {7}


def test_retry__jitter_stays_within_its_fraction() -> None:
    """Jitter spreads each wait by at most the jitter fraction either way."""
    policy = Retry(backoff="fixed", min_delay=10, max_delay=60, jitter=0.1)
    rng = random.Random(1234)
    delays = [policy.delay_s(1, rng) for _ in range(2_000)]
    assert all(9 <= d <= 11 for d in delays)
    assert min(delays) < 9.2
    assert max(delays) > 10.8


def test_retry__jitter_never_pushes_past_max_delay() -> None:
    """At the cap, jitter can only shorten the wait, never lengthen it beyond max_delay."""
    policy = Retry(min_delay=1, max_delay=60, factor=2, jitter=0.2)
    rng = random.Random(99)
    delays = [policy.delay_s(20, rng) for _ in range(2_000)]
    assert all(48 <= d <= 60 for d in delays)
    assert len(set(delays)) > 100


def test_retry__jitter_is_reproducible_with_a_seeded_random() -> None:
    """The same seed gives the same delays, so tests can pin them."""
    policy = Retry(min_delay=1, max_delay=60, jitter=0.5)
    first = [policy.delay_s(n, random.Random(7)) for n in range(1, 8)]
    second = [policy.delay_s(n, random.Random(7)) for n in range(1, 8)]
    assert first == second


def test_retry__zero_min_delay_retries_at_once() -> None:
    """min_delay=0 retries immediately, even with jitter."""
    policy = Retry(min_delay=0, max_delay=10, jitter=0.5)
    assert policy.delay_s(1, random.Random(0)) == 0.0
    assert policy.delay_s(5, random.Random(0)) == 0.0


def test_retry__defaults_match_the_spec() -> None:
    """By default a run gets 3 attempts with exponential backoff."""
    assert DEFAULT_RETRY.max_attempts == 3
    assert DEFAULT_RETRY.backoff == "exponential"
    assert Retry() == DEFAULT_RETRY


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"backoff": "linear"}, "backoff"),
        ({"min_delay": -1}, "min_delay"),
        ({"min_delay": 10, "max_delay": 5}, "max_delay"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_retry__invalid_argument_names_the_field(kwargs: dict[str, object], field: str) -> None:
    """A bad Retry argument is refused at definition time with the field's name."""
    with pytest.raises(DefinitionError, match=field):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_retry__boundary_values_are_accepted() -> None:
    """One attempt, zero jitter, full jitter, factor 1 and equal delays are all valid."""
    flat = Retry(max_attempts=1, jitter=0, factor=1, min_delay=5, max_delay=5)
    assert [flat.delay_s(n, random.Random(0)) for n in (1, 2, 10)] == [5, 5, 5]
    wide = Retry(jitter=1)
    assert 0 <= wide.delay_s(1, random.Random(0)) <= 2 * wide.min_delay
