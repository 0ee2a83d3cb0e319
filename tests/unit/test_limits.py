"""Three-level slot accounting: key, queue and environment limits."""

from __future__ import annotations

import pytest

from keyq.core.limits import Limits, QueueLimit
from keyq.errors import SlotError


def _fill(limits: Limits, queue: str, key: str | None, n: int, prefix: str = "r") -> list[str]:
    ids = [f"{prefix}-{queue}-{key}-{i}" for i in range(n)]
    for run_id in ids:
        limits.acquire(run_id, queue, key)
    return ids


def test_limits__each_key_has_its_own_limit() -> None:
    """User A at its limit never blocks user B of the same queue."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=2))
    _fill(limits, "q", "A", 2)
    assert not limits.can_start("q", "A")
    assert limits.can_start("q", "B")
    limits.acquire("b1", "q", "B")
    assert limits.running_in_bucket("q", "A") == 2
    assert limits.running_in_bucket("q", "B") == 1
    assert limits.running_in_queue("q") == 3
    assert limits.running == 3


def test_limits__unkeyed_runs_share_the_none_bucket() -> None:
    """Runs without a concurrency key share one bucket: the queue's limit applies to all."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=2))
    limits.acquire("r1", "q", None)
    assert limits.can_start("q", None)
    limits.acquire("r2", "q", None)
    assert not limits.can_start("q", None)
    assert (limits.running_in_bucket("q", None), limits.running_in_queue("q")) == (2, 2)


def test_limits__queue_total_limit_caps_the_sum_over_keys() -> None:
    """total_limit bounds a queue over all its keys, even when each key has room."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=2, total_limit=3))
    limits.acquire("a1", "q", "A")
    limits.acquire("b1", "q", "B")
    limits.acquire("c1", "q", "C")
    assert limits.bucket_has_room("q", "D")
    assert not limits.queue_has_room("q")
    assert not limits.can_start("q", "D")
    assert limits.can_start("other", "D")


def test_limits__total_limit_is_capped_by_the_base() -> None:
    """A queue can never run more than the environment base, whatever its total_limit."""
    limits = Limits(concurrency=5, burst_factor=2.0)
    limits.set_queue("q", QueueLimit(total_limit=50))
    assert limits.queue_cap("q") == 5
    limits.set_queue("r", QueueLimit(total_limit=3))
    assert limits.queue_cap("r") == 3
    assert limits.queue_cap("unknown") == 5


def test_limits__queue_without_total_limit_is_capped_at_base() -> None:
    """Every queue is bounded by the base limit, even unkeyed and unconfigured."""
    limits = Limits(concurrency=3, burst_factor=3.0)
    _fill(limits, "q", None, 3)
    assert not limits.can_start("q", None)
    assert not limits.can_start("q", "other-key")
    assert limits.can_start("r", None)


def test_limits__environment_burst_caps_all_queues() -> None:
    """All running runs together never exceed floor(base * burst_factor)."""
    limits = Limits(concurrency=2, burst_factor=1.5)
    assert (limits.base, limits.burst) == (2, 3)
    limits.acquire("a", "q1", None)
    limits.acquire("b", "q1", None)
    limits.acquire("c", "q2", None)
    assert not limits.env_has_room()
    assert not limits.can_start("q3", None)
    assert (limits.running, limits.burst, limits.base) == (3, 3, 2)
    assert (limits.running_in_queue("q1"), limits.running_in_queue("q2")) == (2, 1)


def test_limits__set_environment_changes_base_and_burst() -> None:
    """A config reload changes both the base and the burst limit."""
    limits = Limits()
    assert (limits.base, limits.burst) == (200, 400)
    limits.set_environment(10, 2.5)
    assert (limits.base, limits.burst) == (10, 25)


def test_limits__key_override_replaces_queue_limit_for_one_key() -> None:
    """A per-key limit applies to that key only; removing it restores the queue's."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    limits.set_key_limit("q", "vip", 3)
    assert limits.key_limit("q", "vip") == 3
    assert limits.key_limit("q", "pleb") == 1
    _fill(limits, "q", "vip", 3)
    assert not limits.can_start("q", "vip")
    limits.set_key_limit("q", "vip", None)
    assert limits.key_limit("q", "vip") == 1


def test_limits__key_override_can_be_lower_than_queue_limit() -> None:
    """An override of 0 keeps a key from starting at all."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=5))
    limits.set_key_limit("q", "abuser", 0)
    assert not limits.can_start("q", "abuser")
    with pytest.raises(SlotError):
        limits.acquire("r", "q", "abuser")


def test_limits__unconfigured_queue_is_unbounded_per_key() -> None:
    """A queue without concurrency_limit is bounded only by base and burst."""
    limits = Limits(concurrency=50)
    assert limits.key_limit("q", "A") is None
    _fill(limits, "q", "A", 40)
    assert limits.can_start("q", "A")


def test_limits__paused_queue_starts_nothing() -> None:
    """Pausing a queue stops every key from starting; resuming restores it."""
    limits = Limits()
    limits.set_queue_paused("q", True)
    assert limits.queue_paused("q")
    assert not limits.can_start("q", "A")
    assert not limits.can_start("q", None)
    assert limits.can_start("r", "A")
    limits.set_queue_paused("q", False)
    assert not limits.queue_paused("q")
    assert limits.can_start("q", "A")


def test_limits__paused_key_starts_nothing() -> None:
    """Pausing one key stops that key only."""
    limits = Limits()
    limits.set_key_paused("q", "A", True)
    assert limits.key_paused("q", "A")
    assert not limits.can_start("q", "A")
    assert limits.can_start("q", "B")
    limits.set_key_paused("q", "A", False)
    assert not limits.key_paused("q", "A")
    assert limits.can_start("q", "A")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda lim: _fill(lim, "o1", None, 2) + _fill(lim, "o2", None, 1), "environment limit 3"),
        (lambda lim: _fill(lim, "q", "B", 1) + _fill(lim, "q", "C", 1), "queue 'q'"),
        (lambda lim: lim.set_queue_paused("q", True), "queue 'q' is paused"),
        (lambda lim: _fill(lim, "q", "A", 1, "x"), "key 'A' of queue 'q'"),
        (lambda lim: lim.set_key_paused("q", "A", True), "key 'A' of queue 'q' is paused"),
    ],
    ids=["environment", "queue-cap", "queue-paused", "key-full", "key-paused"],
)
def test_limits__acquire_refuses_beyond_any_level(setup: object, match: str) -> None:
    """acquire raises SlotError instead of exceeding any limit, and counts stay put."""
    limits = Limits(concurrency=2, burst_factor=1.5)
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    setup(limits)  # type: ignore[operator]
    before = _counts(limits)
    with pytest.raises(SlotError, match=match):
        limits.acquire("new", "q", "A")
    assert not limits.holds("new")
    assert _counts(limits) == before


def test_limits__double_acquire_raises() -> None:
    """A run cannot borrow two slots: the second acquire is a bug and raises."""
    limits = Limits()
    limits.acquire("r1", "q", "A")
    with pytest.raises(SlotError, match="r1 already holds a slot"):
        limits.acquire("r1", "q", "B")
    assert limits.running == 1
    assert limits.running_in_bucket("q", "B") == 0


def test_limits__foreign_release_raises() -> None:
    """Releasing a slot the run never took raises and changes nothing."""
    limits = Limits()
    limits.acquire("r1", "q", "A")
    with pytest.raises(SlotError, match="r2 holds no slot"):
        limits.release("r2")
    assert limits.running == 1


def test_limits__double_release_raises() -> None:
    """A slot can be given back only once."""
    limits = Limits()
    limits.acquire("r1", "q", "A")
    limits.release("r1")
    with pytest.raises(SlotError, match="r1 holds no slot"):
        limits.release("r1")
    assert limits.running == 0


def test_limits__release_frees_every_level() -> None:
    """Releasing gives the slot back to the key, the queue and the environment."""
    limits = Limits(concurrency=1, burst_factor=1.0)
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    limits.acquire("r1", "q", "A")
    assert not limits.can_start("q", "A")
    limits.release("r1")
    assert limits.can_start("q", "A")
    assert not limits.holds("r1")
    assert _counts(limits) == (0, 0, 0)


def test_limits__lowering_a_limit_does_not_preempt() -> None:
    """Running runs keep their slots; new starts wait until the count is under the new limit."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=3))
    ids = _fill(limits, "q", "A", 3)
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    assert all(limits.holds(r) for r in ids)
    assert limits.running_in_bucket("q", "A") == 3
    assert not limits.can_start("q", "A")
    limits.release(ids[0])
    assert not limits.can_start("q", "A")
    limits.release(ids[1])
    assert not limits.can_start("q", "A")
    limits.release(ids[2])
    assert limits.can_start("q", "A")


def test_limits__lowering_environment_does_not_preempt() -> None:
    """A lower environment burst holds starts back without touching running runs."""
    limits = Limits(concurrency=10, burst_factor=1.0)
    ids = [f"r{i}" for i in range(6)]
    for i, run_id in enumerate(ids):
        limits.acquire(run_id, f"q{i}", None)
    limits.set_environment(2, 2.0)
    assert limits.running == 6
    assert not limits.env_has_room()
    assert limits.burst == 4
    for run_id in ids[:2]:
        limits.release(run_id)
    assert not limits.env_has_room()
    limits.release(ids[2])
    assert limits.env_has_room()


def test_limits__set_queue_keeps_running_counts() -> None:
    """Changing a queue's limits keeps the slots already taken in that queue."""
    limits = Limits()
    limits.acquire("a", "q", "A")
    limits.set_queue("q", QueueLimit(concurrency_limit=1, total_limit=10))
    assert limits.queue_limit("q") == QueueLimit(1, 10)
    assert limits.running_in_queue("q") == 1
    assert not limits.can_start("q", "A")
    limits.release("a")
    assert limits.can_start("q", "A")


def _counts(limits: Limits) -> tuple[int, int, int]:
    """Slots held in total, in queue "q", and in its key "A"."""
    return limits.running, limits.running_in_queue("q"), limits.running_in_bucket("q", "A")
