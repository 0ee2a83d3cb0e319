"""Who runs next: priority, then round-robin across queues and keys, then FIFO.

The ready set is three nested levels, all O(1) to serve:

* one *ring of queues* per priority level (0 = resuming runs, then 1..10);
* in each queue, one *ring of buckets* (concurrency keys) per priority level;
* in each bucket, one FIFO lane per priority level.

``pop`` takes the lowest priority level with a non-empty ring, the queue at the
front of that ring and the bucket at the front of the queue's ring, serves the
oldest run of that lane, and rotates both the queue and the bucket to the back
of their rings. A key with 10,000 queued runs is therefore served once per
round, like a key with one.

Blocked entries are *parked* lazily: when ``pop`` meets a bucket at its key
limit (or paused), it takes the bucket out of its queue's rings; when it meets
a queue at its cap, it takes the queue out of the top rings. ``unblocked``
puts them back when a slot frees or a limit rises. Each park is paid for by an
earlier unpark, so the cost of choosing does not grow with the backlog or the
number of keys. Cancelled runs are removed lazily too (``discard``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from keyq.core.limits import Key, Limits
from keyq.core.model import MAX_PRIORITY, RunId

LEVELS = MAX_PRIORITY + 1  # 0 (resume) .. 10


@dataclass(slots=True, eq=False)
class _Bucket:
    key: Key
    lanes: dict[int, deque[RunId]] = field(default_factory=dict)
    size: int = 0  # live queued runs
    parked: bool = False


@dataclass(slots=True, eq=False)
class _Queue:
    name: str
    rings: list[OrderedDict[Key, _Bucket]] = field(
        default_factory=lambda: [OrderedDict() for _ in range(LEVELS)]
    )
    buckets: dict[Key, _Bucket] = field(default_factory=dict)
    # dicts, not sets: re-admission order must not depend on string hashing
    parked_buckets: dict[Key, None] = field(default_factory=dict)
    parked: bool = False


@dataclass(slots=True)  # not frozen: one per start, and a frozen __init__ costs 4x
class Popped:
    """The run chosen to start, with the bucket it came from."""

    run_id: RunId
    queue: str
    key: Key
    priority: int


class Dispatcher:
    """The set of QUEUED runs, and the policy that picks the next one to start."""

    def __init__(self) -> None:
        self._rings: list[OrderedDict[str, _Queue]] = [OrderedDict() for _ in range(LEVELS)]
        self._queues: dict[str, _Queue] = {}
        self._where: dict[RunId, _Bucket] = {}
        self._parked_queues: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, run_id: RunId) -> bool:
        return run_id in self._where

    # --- adding and removing ------------------------------------------------------

    def push(self, run_id: RunId, queue: str, key: Key, priority: int) -> None:
        """Add a QUEUED run at the back of its bucket's lane for ``priority``."""
        if run_id in self._where:
            raise ValueError(f"run {run_id} is already queued")
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue(queue)
        b = q.buckets.get(key)
        if b is None:
            b = q.buckets[key] = _Bucket(key)
        lane = b.lanes.get(priority)
        if lane is None:
            lane = b.lanes[priority] = deque()
        lane.append(run_id)
        b.size += 1
        self._where[run_id] = b
        if not b.parked and key not in q.rings[priority]:
            q.rings[priority][key] = b
            if not q.parked and queue not in self._rings[priority]:
                self._rings[priority][queue] = q

    def discard(self, run_id: RunId) -> bool:
        """Remove a queued run (cancel); its lane entry is dropped lazily by pop."""
        b = self._where.pop(run_id, None)
        if b is None:
            return False
        b.size -= 1
        return True

    # --- choosing -------------------------------------------------------------------

    def pop(self, limits: Limits) -> Popped | None:
        """Remove and return the next run that can start within ``limits``, or None."""
        if not limits.env_has_room():
            return None
        for priority, ring in enumerate(self._rings):
            while ring:
                q = next(iter(ring.values()))
                if not limits.queue_has_room(q.name):
                    self._park_queue(q)
                    continue
                popped = self._pop_from_queue(q, priority, limits)
                if popped is not None:
                    return popped
        return None

    def _pop_from_queue(self, q: _Queue, priority: int, limits: Limits) -> Popped | None:
        ring = q.rings[priority]
        while ring:
            b = next(iter(ring.values()))
            if not limits.bucket_has_room(q.name, b.key):
                self._park_bucket(q, b)
                continue
            run_id = self._pop_live(b, priority)
            if run_id is None:
                del ring[b.key]
                self._forget_if_empty(q, b)
                continue
            if priority in b.lanes:
                ring.move_to_end(b.key)
            else:
                del ring[b.key]
                self._forget_if_empty(q, b)
            self._rotate_or_drop(q, priority)
            return Popped(run_id, q.name, b.key, priority)
        self._rings[priority].pop(q.name, None)
        return None

    def _pop_live(self, b: _Bucket, priority: int) -> RunId | None:
        """Pop the oldest live run of one lane, dropping cancelled entries on the way."""
        lane = b.lanes.get(priority)
        while lane:
            run_id = lane.popleft()
            if self._where.get(run_id) is b:
                del self._where[run_id]
                b.size -= 1
                if not lane:
                    del b.lanes[priority]
                return run_id
        b.lanes.pop(priority, None)
        return None

    def _rotate_or_drop(self, q: _Queue, priority: int) -> None:
        if q.rings[priority]:
            self._rings[priority].move_to_end(q.name)
        else:
            del self._rings[priority][q.name]

    def _forget_if_empty(self, q: _Queue, b: _Bucket) -> None:
        # Buckets come and go with keys; dropping empty ones keeps memory bounded.
        if not b.lanes:
            q.buckets.pop(b.key, None)
            q.parked_buckets.pop(b.key, None)

    # --- parking ----------------------------------------------------------------------

    def _park_bucket(self, q: _Queue, b: _Bucket) -> None:
        b.parked = True
        q.parked_buckets[b.key] = None
        for priority in b.lanes:
            ring = q.rings[priority]
            ring.pop(b.key, None)
            if not ring:
                self._rings[priority].pop(q.name, None)

    def _park_queue(self, q: _Queue) -> None:
        q.parked = True
        self._parked_queues[q.name] = None
        for ring in self._rings:
            ring.pop(q.name, None)

    def unblocked(self, queue: str, key: Key, limits: Limits) -> None:
        """A slot of ``(queue, key)`` was freed: re-admit the bucket and queue if they have room."""
        q = self._queues.get(queue)
        if q is None:
            return
        b = q.buckets.get(key)
        if b is not None and b.parked and limits.bucket_has_room(queue, key):
            self._unpark_bucket(q, b)
        if q.parked and limits.queue_has_room(queue):
            self._unpark_queue(q)

    def queue_unblocked(self, queue: str, limits: Limits) -> None:
        """The queue as a whole may have room again (its total rate passed)."""
        q = self._queues.get(queue)
        if q is not None and q.parked and limits.queue_has_room(queue):
            self._unpark_queue(q)

    def rates_passed(self, now: float, limits: Limits) -> None:
        """Re-admit the buckets and queues whose rate-limited start is now allowed."""
        for queue, key, key_wide in limits.rates_passed(now):
            if key_wide:
                self.unblocked(queue, key, limits)
            else:
                self.queue_unblocked(queue, limits)

    def limits_changed(self, limits: Limits) -> None:
        """Limits were raised or something resumed: re-admit everything that now has room.

        This walks parked entries only, and runs on an operator's action, not per run.
        """
        for q in self._queues.values():
            for key in list(q.parked_buckets):
                if limits.bucket_has_room(q.name, key):
                    self._unpark_bucket(q, q.buckets[key])
        for name in list(self._parked_queues):
            if limits.queue_has_room(name):
                self._unpark_queue(self._queues[name])

    def _unpark_bucket(self, q: _Queue, b: _Bucket) -> None:
        b.parked = False
        q.parked_buckets.pop(b.key, None)
        for priority in b.lanes:
            q.rings[priority][b.key] = b
            if not q.parked and q.name not in self._rings[priority]:
                self._rings[priority][q.name] = q

    def _unpark_queue(self, q: _Queue) -> None:
        q.parked = False
        self._parked_queues.pop(q.name, None)
        for priority, ring in enumerate(q.rings):
            if ring and q.name not in self._rings[priority]:
                self._rings[priority][q.name] = q

    # --- inspection ----------------------------------------------------------------------

    def queued_in(self, queue: str, key: Key) -> int:
        """Live queued runs of one bucket."""
        q = self._queues.get(queue)
        b = q.buckets.get(key) if q is not None else None
        return b.size if b is not None else 0
