"""Three-level slot accounting: key, queue, environment.

A *bucket* is one ``(queue, concurrency_key)`` pair; runs without a key share the
queue's ``None`` bucket. A run may start only if all three levels have room:

1. key:         running in the bucket        < the key's limit (the queue's
                ``concurrency_limit``, or a per-key override; None = unbounded)
2. queue:       running in the queue          < min(base, queue's ``total_limit``)
3. environment: running everywhere            < burst = floor(base * burst_factor)

Slots are borrowed by run id (as trio's CapacityLimiter does): a double acquire
or a release of a slot that was never acquired is a bug and raises
:class:`SlotError`. Lowering a limit never preempts: it only holds new starts
back until the count is under it.

Rate limits (:mod:`keyq.core.ratelimit`) are checked at the same two levels: a
bucket's ``rate`` (the queue's, or a key's override) and the queue's
``total_rate``. They depend on time, so the engine advances the limits to
``now`` before it asks (:meth:`Limits.advance`); a check that a rate refuses
sets a timer for when it would pass (:meth:`Limits.rates_passed`), so what it
held back is looked at again then, never polled.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from keyq.core.model import RunId
from keyq.core.ratelimit import Rate, StartLogs
from keyq.core.timers import Deadlines
from keyq.errors import SlotError

Key = str | None


@dataclass(frozen=True, slots=True)
class QueueLimit:
    """A queue's limits: ``concurrency_limit`` and ``rate`` per key, ``total_limit`` and
    ``total_rate`` over all keys."""

    concurrency_limit: int | None = None
    total_limit: int | None = None
    rate: Rate | None = None
    total_rate: Rate | None = None


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One key's own settings in a queue: ``limit`` None is the queue's; ``rate`` is
    the key's own when ``own_rate`` (None then: no rate limit for this key)."""

    limit: int | None = None
    paused: bool = False
    rate: Rate | None = None
    own_rate: bool = False


@dataclass(slots=True)
class _QueueSlots:
    limit: QueueLimit = field(default_factory=QueueLimit)
    paused: bool = False
    running: int = 0
    running_by_key: dict[Key, int] = field(default_factory=dict)
    key_limits: dict[Key, int] = field(default_factory=dict)
    paused_keys: set[Key] = field(default_factory=set)
    key_rates: dict[Key, Rate | None] = field(default_factory=dict)


class Limits:
    """Counts of RUNNING runs per bucket, per queue and in total, against their limits."""

    def __init__(self, concurrency: int = 200, burst_factor: float = 2.0) -> None:
        self._base = concurrency
        self._burst = math.floor(concurrency * burst_factor)
        self._queues: dict[str, _QueueSlots] = {}
        self._holders: dict[RunId, tuple[_QueueSlots, Key]] = {}
        self._now = 0.0
        self._starts = StartLogs()
        # (queue, key, key_wide): a rate refused a start of that bucket (key_wide) or
        # of the whole queue; due when that start would be allowed
        self._rate_waits: Deadlines[tuple[str, Key, bool]] = Deadlines()

    # --- configuration ----------------------------------------------------------

    @property
    def base(self) -> int:
        return self._base

    @property
    def burst(self) -> int:
        return self._burst

    def set_environment(self, concurrency: int, burst_factor: float) -> None:
        """Change the environment base and burst limits."""
        self._base = concurrency
        self._burst = math.floor(concurrency * burst_factor)

    def set_queue(self, queue: str, limit: QueueLimit) -> None:
        """Set a queue's per-key and total limits."""
        self._slots(queue).limit = limit

    def queue_limit(self, queue: str) -> QueueLimit:
        slots = self._queues.get(queue)
        return slots.limit if slots is not None else QueueLimit()

    def set_key_limit(self, queue: str, key: Key, limit: int | None) -> None:
        """Override one key's limit in a queue; None removes the override."""
        slots = self._slots(queue)
        if limit is None:
            slots.key_limits.pop(key, None)
        else:
            slots.key_limits[key] = limit

    def set_key_rate(self, queue: str, key: Key, rate: Rate | None, *, own: bool = True) -> None:
        """Give one key its own rate (None: none at all); ``own=False`` drops it."""
        slots = self._slots(queue)
        if own:
            slots.key_rates[key] = rate
        else:
            slots.key_rates.pop(key, None)

    def configure(
        self,
        queues: Mapping[str, tuple[QueueLimit, bool]],
        keys: Mapping[tuple[str, Key], KeyRule],
    ) -> None:
        """Replace every queue and key setting at once: a queue or key not given goes
        back to no limit and not paused (its counts are kept)."""
        for name in self.queue_names():
            if name not in queues:
                self.set_queue(name, QueueLimit())
                self.set_queue_paused(name, False)
        for name, (limit, paused) in queues.items():
            self.set_queue(name, limit)
            self.set_queue_paused(name, paused)
        self.clear_key_settings()
        for (queue, key), rule in keys.items():
            self.set_key_limit(queue, key, rule.limit)
            self.set_key_paused(queue, key, rule.paused)
            self.set_key_rate(queue, key, rule.rate, own=rule.own_rate)

    def clear_key_settings(self) -> None:
        """Drop every per-key limit, pause and rate."""
        for slots in self._queues.values():
            slots.key_limits.clear()
            slots.paused_keys.clear()
            slots.key_rates.clear()

    def set_queue_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume a whole queue: a paused queue starts nothing."""
        self._slots(queue).paused = paused

    def set_key_paused(self, queue: str, key: Key, paused: bool) -> None:
        """Pause or resume one key of a queue."""
        slots = self._slots(queue)
        if paused:
            slots.paused_keys.add(key)
        else:
            slots.paused_keys.discard(key)

    def queue_paused(self, queue: str) -> bool:
        slots = self._queues.get(queue)
        return slots is not None and slots.paused

    def key_paused(self, queue: str, key: Key) -> bool:
        slots = self._queues.get(queue)
        return slots is not None and key in slots.paused_keys

    # --- limits ------------------------------------------------------------------

    def key_limit(self, queue: str, key: Key) -> int | None:
        """The limit of one bucket: a key override, else the queue's concurrency_limit."""
        slots = self._queues.get(queue)
        if slots is None:
            return None
        override = slots.key_limits.get(key)
        return override if override is not None else slots.limit.concurrency_limit

    def queue_cap(self, queue: str) -> int:
        """The most runs of ``queue`` that may run at once over all its keys."""
        slots = self._queues.get(queue)
        total = slots.limit.total_limit if slots is not None else None
        return self._base if total is None else min(total, self._base)

    # --- room --------------------------------------------------------------------

    def env_has_room(self) -> bool:
        return len(self._holders) < self._burst

    def queue_has_room(self, queue: str) -> bool:
        slots = self._queues.get(queue)
        if slots is None:
            return self._base > 0
        if slots.paused or slots.running >= self.queue_cap(queue):
            return False
        total = slots.limit.total_rate
        return total is None or self._rate_allows(queue, None, False, total)

    def bucket_has_room(self, queue: str, key: Key) -> bool:
        slots = self._queues.get(queue)
        if slots is None:
            return True
        if key in slots.paused_keys:
            return False
        limit = self.key_limit(queue, key)
        if limit is not None and slots.running_by_key.get(key, 0) >= limit:
            return False
        if not slots.key_rates and slots.limit.rate is None:
            return True  # not rated: the common case
        rate = _bucket_rate(slots, key)
        return rate is None or self._rate_allows(queue, key, True, rate)

    def can_start(self, queue: str, key: Key) -> bool:
        """True when a run of this bucket could start without breaking any level."""
        return (
            self.env_has_room() and self.queue_has_room(queue) and self.bucket_has_room(queue, key)
        )

    # --- borrowing ---------------------------------------------------------------

    def acquire(self, run_id: RunId, queue: str, key: Key) -> bool:
        """Take one slot at every level for ``run_id``; True if a rate counted the start
        (the engine has it stored, so that a restart remembers it).

        Refuses (SlotError) rather than exceed a limit or a rate: the dispatcher
        checks first, and this second check is what makes "never over a limit"
        hold even if the dispatcher had a bug.
        """
        if run_id in self._holders:
            raise SlotError(f"run {run_id} already holds a slot")
        if not self.env_has_room():
            raise SlotError(f"run {run_id}: environment limit {self._burst} reached")
        if not self.queue_has_room(queue):
            raise SlotError(f"run {run_id}: queue {queue!r} is paused or at its limit")
        if not self.bucket_has_room(queue, key):
            raise SlotError(
                f"run {run_id}: key {key!r} of queue {queue!r} is paused, full or at its rate"
            )
        slots = self._slots(queue)
        slots.running += 1
        slots.running_by_key[key] = slots.running_by_key.get(key, 0) + 1
        self._holders[run_id] = (slots, key)
        limit = slots.limit
        if limit.rate is None and limit.total_rate is None and not slots.key_rates:
            return False  # not rated: the common case
        return self._count_start(slots, queue, key, self._now)

    def release(self, run_id: RunId) -> None:
        """Give back the slot ``run_id`` holds at every level."""
        try:
            slots, key = self._holders.pop(run_id)
        except KeyError:
            raise SlotError(f"run {run_id} holds no slot to release") from None
        slots.running -= 1
        left = slots.running_by_key[key] - 1
        if left:
            slots.running_by_key[key] = left
        else:
            del slots.running_by_key[key]  # keep memory bounded by active keys

    def holds(self, run_id: RunId) -> bool:
        return run_id in self._holders

    # --- counts ------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._holders)

    def running_in_queue(self, queue: str) -> int:
        """Runs holding a slot in ``queue``, over all its keys."""
        slots = self._queues.get(queue)
        return slots.running if slots is not None else 0

    def running_in_bucket(self, queue: str, key: Key) -> int:
        """Runs holding a slot in one ``(queue, key)`` bucket."""
        slots = self._queues.get(queue)
        return slots.running_by_key.get(key, 0) if slots is not None else 0

    def queue_names(self) -> list[str]:
        return list(self._queues)

    # --- rates -------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """The time rates are judged at from now on (the engine's ``now``)."""
        if now > self._now:
            self._now = now
        if len(self._starts):
            self._starts.forget_idle(self._now, self._window_of)

    def rates_passed(self, now: float) -> list[tuple[str, Key, bool]]:
        """Buckets (key_wide) and queues whose refused start a rate now allows."""
        return self._rate_waits.pop_due(now)

    def next_rate_pass(self) -> float | None:
        """When a start a rate refused will be allowed, or None."""
        return self._rate_waits.next_deadline()

    def remember_start(self, queue: str, key: Key, at: float) -> None:
        """A start counted before a restart, read back so no fresh burst is granted."""
        self._count_start(self._slots(queue), queue, key, at)

    def rates(self, queue: str, key: Key) -> tuple[Rate | None, Rate | None]:
        """The bucket's rate and the queue's total rate (None: not rate-limited)."""
        slots = self._queues.get(queue)
        if slots is None:
            return None, None
        return _bucket_rate(slots, key), slots.limit.total_rate

    def rate_use(self, queue: str, key: Key, key_wide: bool) -> tuple[int, float | None]:
        """Starts in the current window, and when the next start is allowed (None: now)."""
        rate, total = self.rates(queue, key)
        chosen = rate if key_wide else total
        if chosen is None:
            return 0, None
        log = (queue, key) if key_wide else (queue,)
        return (
            self._starts.count_in_window(log, chosen, self._now),
            self._starts.next_start(log, chosen, self._now),
        )

    def _window_of(self, log: Hashable) -> float | None:
        """The window a start log is kept for now: (queue, key) or (queue,) for the total."""
        assert isinstance(log, tuple)
        queue, key_wide = log[0], len(log) == 2
        rate, total = self.rates(queue, log[1] if key_wide else None)
        chosen = rate if key_wide else total
        return chosen.window_s if chosen is not None else None

    def _rate_allows(self, queue: str, key: Key, key_wide: bool, rate: Rate) -> bool:
        at = self._starts.next_start((queue, key) if key_wide else (queue,), rate, self._now)
        if at is None:
            return True
        self._rate_waits.push((queue, key, key_wide), at)
        return False

    def _count_start(self, slots: _QueueSlots, queue: str, key: Key, at: float) -> bool:
        rate, total = _bucket_rate(slots, key), slots.limit.total_rate
        if rate is not None:
            self._starts.record((queue, key), rate, at)
        if total is not None:
            self._starts.record((queue,), total, at)
        return rate is not None or total is not None

    def _slots(self, queue: str) -> _QueueSlots:
        slots = self._queues.get(queue)
        if slots is None:
            slots = self._queues[queue] = _QueueSlots()
        return slots


def _bucket_rate(slots: _QueueSlots, key: Key) -> Rate | None:
    if slots.key_rates and key in slots.key_rates:
        return slots.key_rates[key]
    return slots.limit.rate
