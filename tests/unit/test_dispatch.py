"""Who runs next: priority, round-robin across queues and keys, FIFO per key."""

from __future__ import annotations

from collections import Counter

import pytest

from keyq.core.dispatch import Dispatcher, Popped
from keyq.core.limits import Key, Limits, QueueLimit
from keyq.core.model import RESUME_PRIORITY


class CountingLimits(Limits):
    """Limits that count how often the dispatcher asks about each bucket and queue."""

    def __init__(self, concurrency: int = 200, burst_factor: float = 2.0) -> None:
        super().__init__(concurrency, burst_factor)
        self.bucket_checks: Counter[tuple[str, Key]] = Counter()
        self.queue_checks: Counter[str] = Counter()
        self._counting = True

    def bucket_has_room(self, queue: str, key: Key) -> bool:
        if self._counting:
            self.bucket_checks[(queue, key)] += 1
        return super().bucket_has_room(queue, key)

    def queue_has_room(self, queue: str) -> bool:
        if self._counting:
            self.queue_checks[queue] += 1
        return super().queue_has_room(queue)

    def acquire(self, run_id: str, queue: str, key: Key) -> None:
        # acquire re-checks every level itself; count only the dispatcher's questions
        self._counting = False
        try:
            super().acquire(run_id, queue, key)
        finally:
            self._counting = True


def _start(d: Dispatcher, limits: Limits) -> Popped | None:
    """Pop the next run and take its slot, as the engine does."""
    popped = d.pop(limits)
    if popped is not None:
        limits.acquire(popped.run_id, popped.queue, popped.key)
    return popped


def _start_all(d: Dispatcher, limits: Limits, n: int | None = None) -> list[str]:
    started: list[str] = []
    while n is None or len(started) < n:
        popped = _start(d, limits)
        if popped is None:
            break
        started.append(popped.run_id)
    return started


def _finish(d: Dispatcher, limits: Limits, run_id: str, queue: str, key: Key) -> None:
    """Release a slot and tell the dispatcher, as the engine does when an attempt ends."""
    limits.release(run_id)
    d.unblocked(queue, key, limits)


def test_dispatch__empty_pops_nothing() -> None:
    """With nothing queued, pop returns None."""
    assert Dispatcher().pop(Limits()) is None


def test_dispatch__lower_priority_number_first() -> None:
    """Priority 1 runs before 5, and 5 before 10, whatever the push order."""
    d, limits = Dispatcher(), Limits()
    d.push("p5", "q", "A", 5)
    d.push("p10", "q", "A", 10)
    d.push("p1", "q", "B", 1)
    d.push("p5b", "q", "C", 5)
    d.push("p1b", "r", None, 1)
    assert _start_all(d, limits) == ["p1", "p1b", "p5", "p5b", "p10"]


def test_dispatch__popped_reports_bucket_and_priority() -> None:
    """pop says which queue, key and priority the run came from."""
    d = Dispatcher()
    d.push("r1", "q", "A", 3)
    assert d.pop(Limits()) == Popped("r1", "q", "A", 3)
    assert len(d) == 0
    assert "r1" not in d


def test_dispatch__fifo_within_a_key() -> None:
    """Runs of one key and priority start in the order they were queued."""
    d, limits = Dispatcher(), Limits()
    ids = [f"r{i}" for i in range(20)]
    for run_id in ids:
        d.push(run_id, "q", "A", 5)
    assert _start_all(d, limits) == ids


def test_dispatch__round_robin_across_keys() -> None:
    """Keys of one queue take turns, one run each per round."""
    d, limits = Dispatcher(), Limits()
    for key in "ABC":
        for i in range(3):
            d.push(f"{key}{i}", "q", key, 5)
    assert _start_all(d, limits) == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "C2"]


def test_dispatch__big_backlog_does_not_starve_later_keys() -> None:
    """A key with 1000 queued runs cannot delay 10 later keys by more than one round."""
    d, limits = Dispatcher(), Limits(concurrency=10_000, burst_factor=1.0)
    for i in range(1_000):
        d.push(f"big-{i}", "q", "big", 5)
    assert _start_all(d, limits, 3) == ["big-0", "big-1", "big-2"]
    small = [f"small-{k}" for k in range(10)]
    for run_id in small:
        d.push(run_id, "q", run_id, 5)
    next_round = _start_all(d, limits, 11)
    assert set(small) <= set(next_round)
    assert sum(r.startswith("big-") for r in next_round) == 1
    assert d.queued_in("q", "big") == 1_000 - 4


def test_dispatch__round_robin_across_queues() -> None:
    """Queues take turns too: a deep queue does not starve a shallow one."""
    d, limits = Dispatcher(), Limits()
    for i in range(100):
        d.push(f"a{i}", "deep", None, 5)
    for i in range(3):
        d.push(f"b{i}", "shallow", None, 5)
    assert _start_all(d, limits, 8) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"]


def test_dispatch__resume_lane_goes_first() -> None:
    """A run resuming after a wait (lane 0) starts before fresh runs of the same key."""
    d, limits = Dispatcher(), Limits()
    d.push("fresh1", "q", "A", 1)
    d.push("fresh2", "q", "A", 1)
    d.push("resumer", "q", "A", RESUME_PRIORITY)
    d.push("other-queue", "r", None, 1)
    assert _start_all(d, limits) == ["resumer", "fresh1", "other-queue", "fresh2"]


def test_dispatch__bucket_at_limit_is_skipped_for_other_keys() -> None:
    """A key at its limit does not block the keys behind it."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    d.push("A1", "q", "A", 5)
    d.push("A2", "q", "A", 5)
    d.push("B1", "q", "B", 5)
    d.push("B2", "q", "B", 5)
    assert _start_all(d, limits) == ["A1", "B1"]
    assert d.queued_in("q", "A") == 1
    assert d.queued_in("q", "B") == 1


def test_dispatch__parked_bucket_comes_back_after_unblocked() -> None:
    """When a slot of a full key frees, its next run becomes startable again."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    d.push("A1", "q", "A", 5)
    d.push("A2", "q", "A", 5)
    assert _start_all(d, limits) == ["A1"]
    assert d.pop(limits) is None
    _finish(d, limits, "A1", "q", "A")
    assert _start_all(d, limits) == ["A2"]


def test_dispatch__parked_bucket_waits_for_unblocked() -> None:
    """Parking is lazy: the engine must call `unblocked` after releasing a slot."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    d.push("A1", "q", "A", 5)
    d.push("A2", "q", "A", 5)
    _start_all(d, limits)
    assert d.pop(limits) is None  # parks the bucket
    limits.release("A1")
    assert d.pop(limits) is None
    d.unblocked("q", "A", limits)
    assert _start_all(d, limits) == ["A2"]


def test_dispatch__push_to_parked_bucket_waits_for_unpark() -> None:
    """A new run of a parked key waits too, and starts when the key frees."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    d.push("A1", "q", "A", 5)
    d.push("A2", "q", "A", 5)
    _start_all(d, limits)
    d.push("A3", "q", "A", 1)
    d.push("B1", "q", "B", 9)
    assert _start_all(d, limits) == ["B1"]
    _finish(d, limits, "A1", "q", "A")
    assert _start_all(d, limits) == ["A3"]


def test_dispatch__parked_queue_comes_back() -> None:
    """A queue at its total limit is skipped; it comes back when one of its slots frees."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=5, total_limit=1))
    d.push("A1", "q", "A", 5)
    d.push("B1", "q", "B", 5)
    d.push("R1", "r", None, 5)
    assert _start_all(d, limits) == ["A1", "R1"]
    d.push("R2", "r", None, 5)
    assert _start_all(d, limits) == ["R2"]
    _finish(d, limits, "A1", "q", "A")
    assert _start_all(d, limits) == ["B1"]


def test_dispatch__limits_changed_readmits_after_raise() -> None:
    """Raising a key limit lets the waiting runs of that key start."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    for i in range(4):
        d.push(f"A{i}", "q", "A", 5)
    assert _start_all(d, limits) == ["A0"]
    limits.set_queue("q", QueueLimit(concurrency_limit=3))
    d.limits_changed(limits)
    assert _start_all(d, limits) == ["A1", "A2"]


def test_dispatch__limits_changed_readmits_after_key_override() -> None:
    """A per-key override raising one key's limit re-admits that key only."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    for key in "AB":
        for i in range(3):
            d.push(f"{key}{i}", "q", key, 5)
    assert _start_all(d, limits) == ["A0", "B0"]
    limits.set_key_limit("q", "B", 3)
    d.limits_changed(limits)
    assert _start_all(d, limits) == ["B1", "B2"]


def test_dispatch__limits_changed_readmits_after_queue_resume() -> None:
    """A paused queue starts nothing; resuming it lets its runs start."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue_paused("q", True)
    d.push("q1", "q", None, 5)
    d.push("r1", "r", None, 5)
    assert _start_all(d, limits) == ["r1"]
    limits.set_queue_paused("q", False)
    d.limits_changed(limits)
    assert _start_all(d, limits) == ["q1"]


def test_dispatch__limits_changed_readmits_after_key_resume() -> None:
    """A paused key starts nothing while other keys go on; resuming it lets it start."""
    d, limits = Dispatcher(), Limits()
    limits.set_key_paused("q", "A", True)
    d.push("A1", "q", "A", 5)
    d.push("B1", "q", "B", 5)
    assert _start_all(d, limits) == ["B1"]
    limits.set_key_paused("q", "A", False)
    d.limits_changed(limits)
    assert _start_all(d, limits) == ["A1"]


def test_dispatch__limits_changed_readmits_after_environment_raise() -> None:
    """A queue held at the base limit starts more runs after the base is raised."""
    d, limits = Dispatcher(), Limits(concurrency=1, burst_factor=4.0)
    for i in range(3):
        d.push(f"q{i}", "q", None, 5)
    assert _start_all(d, limits) == ["q0"]
    limits.set_environment(3, 1.0)
    d.limits_changed(limits)
    assert _start_all(d, limits) == ["q1", "q2"]


def test_dispatch__environment_full_pops_nothing() -> None:
    """When the environment is at its burst limit nothing starts, in any queue."""
    d, limits = Dispatcher(), Limits(concurrency=2, burst_factor=1.0)
    for q in "abc":
        d.push(f"{q}1", q, None, 5)
    assert _start_all(d, limits) == ["a1", "b1"]
    assert d.pop(limits) is None
    _finish(d, limits, "a1", "a", None)
    assert _start_all(d, limits) == ["c1"]


def test_dispatch__discard_removes_queued_runs() -> None:
    """A cancelled queued run is never started and stops counting as queued."""
    d, limits = Dispatcher(), Limits()
    for i in range(3):
        d.push(f"r{i}", "q", "A", 5)
    assert d.discard("r1") is True
    assert "r1" not in d
    assert len(d) == 2
    assert d.queued_in("q", "A") == 2
    assert d.discard("r1") is False
    assert d.discard("never-queued") is False
    assert _start_all(d, limits) == ["r0", "r2"]
    assert (len(d), d.queued_in("q", "A")) == (0, 0)


def test_dispatch__discard_everything_in_a_parked_bucket() -> None:
    """Cancelling every run of a parked key leaves nothing to start when it unparks."""
    d, limits = Dispatcher(), Limits()
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    for i in range(3):
        d.push(f"A{i}", "q", "A", 5)
    _start_all(d, limits)
    assert d.pop(limits) is None
    d.discard("A1")
    d.discard("A2")
    assert d.queued_in("q", "A") == 0
    _finish(d, limits, "A0", "q", "A")
    assert d.pop(limits) is None
    assert len(d) == 0


def test_dispatch__duplicate_push_is_refused() -> None:
    """A run can be queued once; a second push is a bug and raises."""
    d = Dispatcher()
    d.push("r1", "q", "A", 5)
    with pytest.raises(ValueError, match="run r1 is already queued"):
        d.push("r1", "q", "B", 1)
    assert len(d) == 1


def test_dispatch__run_can_be_queued_again_after_pop() -> None:
    """A run popped to start can be queued again later (retry, resume)."""
    d, limits = Dispatcher(), Limits()
    d.push("r1", "q", "A", 5)
    assert _start_all(d, limits) == ["r1"]
    _finish(d, limits, "r1", "q", "A")
    d.push("r1", "q", "A", RESUME_PRIORITY)
    assert d.pop(limits) == Popped("r1", "q", "A", RESUME_PRIORITY)


def test_dispatch__queued_in_counts_live_runs_per_bucket() -> None:
    """queued_in() counts each bucket's live queued runs over every priority, for stats."""
    d = Dispatcher()
    d.push("a1", "q", "A", 5)
    d.push("a2", "q", "A", 1)
    d.push("n1", "q", None, 5)
    d.push("r1", "r", "A", 5)
    d.discard("r1")
    counts = [d.queued_in(q, k) for q, k in [("q", "A"), ("q", None), ("r", "A"), ("q", "B")]]
    assert counts == [2, 1, 0, 0]


def test_dispatch__blocked_backlog_is_not_touched_again() -> None:
    """Once a full key with 10,000 queued runs is parked, pops for other keys never look at it."""
    d, limits = Dispatcher(), CountingLimits(concurrency=1_000, burst_factor=1.0)
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    for i in range(10_000):
        d.push(f"A{i}", "q", "A", 5)
    for i in range(50):
        d.push(f"B{i}", "q", "B", 5)
    assert _start_all(d, limits, 2) == ["A0", "B0"]
    limits.set_queue("q", QueueLimit(concurrency_limit=1_000))
    limits.set_key_limit("q", "A", 1)
    d.limits_changed(limits)
    _start_all(d, limits, 1)  # meets A at its limit and parks it
    checks_on_a = limits.bucket_checks[("q", "A")]
    started = _start_all(d, limits)
    assert started == [f"B{i}" for i in range(2, 50)]
    assert limits.bucket_checks[("q", "A")] == checks_on_a
    assert d.queued_in("q", "A") == 9_999


def test_dispatch__cost_of_a_pop_does_not_grow_with_backlog() -> None:
    """Choosing the next run asks the same number of limit questions with 10 or 10,000 queued."""

    def checks_for_one_pop(backlog: int) -> int:
        d, limits = Dispatcher(), CountingLimits()
        limits.set_queue("q", QueueLimit(concurrency_limit=1))
        for i in range(backlog):
            d.push(f"A{i}", "q", "A", 5)
        d.push("B0", "q", "B", 5)
        d.push("B1", "q", "B", 5)
        _start_all(d, limits, 2)  # A0 and B0 run; both keys are now full
        assert d.pop(limits) is None  # parks both
        _finish(d, limits, "B0", "q", "B")
        limits.bucket_checks.clear()
        limits.queue_checks.clear()
        assert _start(d, limits) == Popped("B1", "q", "B", 5)
        return sum(limits.bucket_checks.values()) + sum(limits.queue_checks.values())

    assert checks_for_one_pop(10) == checks_for_one_pop(10_000)


def test_dispatch__many_full_keys_are_parked_once() -> None:
    """With thousands of keys at their limit, each is examined once, then never again."""
    keys = 5_000
    d, limits = Dispatcher(), CountingLimits(concurrency=100_000, burst_factor=1.0)
    limits.set_queue("q", QueueLimit(concurrency_limit=1))
    for k in range(keys):
        d.push(f"k{k}-0", "q", f"k{k}", 5)
        d.push(f"k{k}-1", "q", f"k{k}", 5)
    assert len(_start_all(d, limits)) == keys  # one per key; then every key parks
    assert set(limits.bucket_checks.values()) == {2}  # once to start, once to park
    limits.bucket_checks.clear()
    d.push("new-0", "q", "new", 5)
    assert _start_all(d, limits) == ["new-0"]
    assert set(limits.bucket_checks) == {("q", "new")}
