"""Random operation sequences against the Engine, checked by an independent model.

The machine plays the shell: it submits runs, reports outcomes and waits, cancels,
changes limits and moves time. After every rule it checks the invariants; at the
end it drives everything to completion and checks that no run was lost.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from keyq.core.engine import Engine
from keyq.core.limits import Key, KeyRule, Limits, QueueLimit
from keyq.core.model import (
    Cancelled,
    ChildResult,
    Completed,
    ErrorInfo,
    Failed,
    RunSpec,
    StartRun,
    Step,
    TaskPolicy,
    Transition,
    WaitChildren,
    WaitUntil,
)
from keyq.core.ratelimit import Rate
from keyq.core.retry import Retry
from keyq.core.states import CANCELED, COMPLETED, DELAYED, FAILED, FINAL, QUEUED, RUNNING, RunState

T0 = 1_234_567_890.25
QUEUES = ("q0", "q1", "q2")
KEYS: tuple[Key, ...] = ("k0", "k1", "k2", "k3", None)
POLICIES = {
    "fast": TaskPolicy(retry=Retry(min_delay=1, max_delay=8, jitter=0.2)),
    "slow": TaskPolicy(retry=Retry(backoff="fixed", min_delay=3, jitter=0), max_duration_s=20),
}
BOOM = ErrorInfo("RuntimeError", "boom")

RATES = [Rate(1, 5), Rate(2, 10), Rate(3, 2.5)]
queue_limits = st.builds(
    QueueLimit,
    concurrency_limit=st.sampled_from([None, 0, 1, 2, 3]),
    total_limit=st.sampled_from([None, 1, 2, 4]),
    rate=st.sampled_from([None, None, *RATES]),
    total_rate=st.sampled_from([None, None, None, Rate(3, 10)]),
)


class EngineMachine(RuleBasedStateMachine):
    """Drives an Engine like the daemon would, keeping its own model of every run."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.base, self.burst_factor = 4, 1.5
        limits = Limits(self.base, self.burst_factor)
        self.engine = Engine(limits=limits, policies=POLICIES, rng=random.Random(0))
        # the limits in force, as the machine set them
        self.queue_limit: dict[str, QueueLimit] = {q: QueueLimit() for q in QUEUES}
        self.key_limit: dict[tuple[str, Key], int] = {}
        self.paused_queues: set[str] = set()
        self.paused_keys: set[tuple[str, Key]] = set()
        self.key_rate: dict[tuple[str, Key], Rate | None] = {}  # a key's own rate
        # every start, and from which of them each queue's rates are as they are: a
        # changed rate counts from the change (starts before it may count less, never more)
        self.starts: list[tuple[str, Key, float]] = []
        self.rates_since: dict[str, int] = dict.fromkeys(QUEUES, 0)
        # the runs, as the transitions describe them
        self.specs: dict[str, RunSpec] = {}
        self.state: dict[str, RunState] = {}
        self.finals: Counter[str] = Counter()
        self.running: dict[str, tuple[str, Key]] = {}
        self.spawned: dict[str, list[str]] = {}
        self.awaiting: dict[str, tuple[str, ...]] = {}
        self.cancel_asked: set[str] = set()
        self.watched: set[str] = set()  # runs others wait on; they never wait on runs themselves
        self.violations: list[str] = []
        self.clean = True

    # --- helpers -------------------------------------------------------------------

    def _new_spec(self, data: st.DataObject, parent: str | None = None) -> RunSpec:
        run_id = f"r{len(self.specs)}"
        delay = data.draw(st.one_of(st.none(), st.integers(0, 30)), label="delay")
        if parent is not None:
            delay = None
        spec = RunSpec(
            id=run_id,
            seq=len(self.specs),
            task=data.draw(st.sampled_from(sorted(POLICIES)), label="task"),
            queue=data.draw(st.sampled_from(QUEUES), label="queue"),
            concurrency_key=data.draw(st.sampled_from(KEYS), label="key"),
            priority=data.draw(st.integers(1, 10), label="priority"),
            payload="{}",
            max_attempts=data.draw(st.integers(1, 3), label="max_attempts"),
            state=QUEUED if delay is None else DELAYED,
            available_at=self.now + (delay or 0),
            created_at=self.now,
            parent_id=parent,
        )
        self.specs[run_id] = spec
        self.state[run_id] = spec.state
        assert self.engine.submit(spec) is True
        return spec

    def _tick(self) -> Step:
        step = self.engine.tick(self.now)
        self._observe(step)
        return step

    def _observe(self, step: Step) -> None:
        for t in step.transitions:
            self._observe_transition(t)
        starts = [t.run_id for t in step.transitions if t.to is RUNNING]
        assert [s.run_id for s in step.start] == starts
        for start in step.start:
            self._observe_start(start)
        for run_id in step.cancel:
            assert self.state[run_id] in (RUNNING, CANCELED), f"cancel of {run_id} that is idle"
            self.cancel_asked.add(run_id)

    def _observe_transition(self, t: Transition) -> None:
        assert self.finals[t.run_id] == 0, f"{t.run_id} moved after it was final: {t}"
        assert t.from_ is self.state[t.run_id], f"{t} but the run was {self.state[t.run_id]}"
        assert t.at == self.now
        spec = self.specs[t.run_id]
        assert (t.task, t.queue, t.concurrency_key) == (spec.task, spec.queue, spec.concurrency_key)
        if t.from_ is RUNNING:
            del self.running[t.run_id]
            self.cancel_asked.discard(t.run_id)
        if t.to is RUNNING:
            self._check_start_allowed(t.run_id)
            spec = self.specs[t.run_id]
            self.running[t.run_id] = (spec.queue, spec.concurrency_key)
        self.state[t.run_id] = t.to
        if t.to in FINAL:
            self.finals[t.run_id] += 1

    def _check_start_allowed(self, run_id: str) -> None:
        """Record a violation if this start breaks a limit in force right now."""
        spec = self.specs[run_id]
        queue, key = spec.queue, spec.concurrency_key
        in_bucket = sum(1 for qk in self.running.values() if qk == (queue, key))
        in_queue = sum(1 for q, _ in self.running.values() if q == queue)
        limit = self.queue_limit[queue]
        key_limit = self.key_limit.get((queue, key), limit.concurrency_limit)
        cap = self.base if limit.total_limit is None else min(limit.total_limit, self.base)
        burst = math.floor(self.base * self.burst_factor)
        rate = self.key_rate.get((queue, key), limit.rate)
        problems = {
            f"rate {rate}": rate is not None
            and self._started_within(queue, key, rate) >= rate.count,
            f"total rate {limit.total_rate}": limit.total_rate is not None
            and self._started_within(queue, None, limit.total_rate, key_wide=False)
            >= limit.total_rate.count,
            "queue paused": queue in self.paused_queues,
            "key paused": (queue, key) in self.paused_keys,
            f"key limit {key_limit}": key_limit is not None and in_bucket >= key_limit,
            f"queue cap {cap}": in_queue >= cap,
            f"burst {burst}": len(self.running) >= burst,
        }
        self.violations += [f"{run_id} started past {p}" for p, bad in problems.items() if bad]
        self.starts.append((queue, key, self.now))

    def _started_within(self, queue: str, key: Key, rate: Rate, key_wide: bool = True) -> int:
        """Starts of the bucket (or of the whole queue) in the window ending now, counted
        from the last change of the queue's rates."""
        window_start = self.now - rate.window_s
        return sum(
            1
            for q, k, at in self.starts[self.rates_since[queue] :]
            if q == queue and (not key_wide or k == key) and at > window_start
        )

    def _observe_start(self, start: StartRun) -> None:
        spec = self.specs[start.run_id]
        assert (start.queue, start.concurrency_key, start.task) == (
            spec.queue,
            spec.concurrency_key,
            spec.task,
        )
        assert 1 <= start.attempt <= spec.max_attempts
        waited = self.awaiting.pop(start.run_id, ()) if start.resumed else ()
        assert [c.run_id for c in start.children] == list(waited)
        for child in start.children:
            assert child.status is self.state[child.run_id]
            assert child.status in FINAL

    def _begin(self) -> None:
        self.clean = False

    def _active(self) -> list[str]:
        return sorted(r for r, s in self.state.items() if s not in FINAL)

    def _waiters(self) -> list[str]:
        """Running runs that may wait on other runs without risking a wait cycle."""
        return sorted(r for r in self.running if r not in self.watched)

    def _wait_targets(self, waiter: str) -> list[str]:
        """Runs a waiter may wait on: final ones, or ones not yet running (never a waiting one)."""
        ok = (QUEUED, DELAYED, COMPLETED, FAILED, CANCELED)
        return sorted(r for r, s in self.state.items() if r != waiter and s in ok)

    # --- rules ----------------------------------------------------------------------

    @initialize(limits=st.fixed_dictionaries({q: queue_limits for q in QUEUES}))
    def configure(self, limits: dict[str, QueueLimit]) -> None:
        self._begin()
        self.engine.configure_limits({q: (limit, False) for q, limit in limits.items()}, {})
        self.queue_limit.update(limits)
        self._tick()

    @rule(data=st.data(), n=st.integers(1, 3))
    def submit(self, data: st.DataObject, n: int) -> None:
        self._begin()
        for _ in range(n):
            self._new_spec(data)
        self._tick()

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        self._begin()
        run_id = data.draw(st.sampled_from(sorted(self.running)), label="run")
        outcome = data.draw(
            st.sampled_from(
                [Completed('"done"'), Failed(BOOM), Failed(BOOM, retryable=False), Cancelled()]
            ),
            label="outcome",
        )
        stopping = run_id in self.cancel_asked  # a timeout may overrule the outcome
        self.engine.finished(run_id, outcome, self.now)
        step = self._tick()
        first = step.transitions[0]
        assert (first.run_id, first.from_) == (run_id, RUNNING)
        if isinstance(outcome, Completed) and stopping:
            # a timeout wins: the attempt failed (and is retried if attempts are left)
            timed_out = first.error is not None and first.error.type == "Timeout"
            assert first.to is COMPLETED or timed_out
        elif isinstance(outcome, Completed):
            assert (first.to, first.result) == (COMPLETED, '"done"')
        elif isinstance(outcome, Failed) and not outcome.retryable:
            assert first.to is FAILED or (stopping and first.to is CANCELED)  # a cancel wins

    @precondition(lambda self: self.cancel_asked & set(self.running))
    @rule(data=st.data())
    def honour_cancel(self, data: st.DataObject) -> None:
        self._begin()
        run_id = data.draw(st.sampled_from(sorted(self.cancel_asked & set(self.running))))
        self.engine.finished(run_id, Cancelled(), self.now)
        self._tick()

    @precondition(lambda self: self.running)
    @rule(data=st.data(), seconds=st.integers(0, 30))
    def wait_until(self, data: st.DataObject, seconds: int) -> None:
        self._begin()
        run_id = data.draw(st.sampled_from(sorted(self.running)), label="run")
        self.engine.wait(run_id, WaitUntil(self.now + seconds), self.now)
        self._tick()

    @precondition(lambda self: self._waiters())
    @rule(data=st.data(), n=st.integers(1, 2), wait_now=st.booleans())
    def spawn_children(self, data: st.DataObject, n: int, wait_now: bool) -> None:
        self._begin()
        parent = data.draw(st.sampled_from(self._waiters()), label="parent")
        children = [self._new_spec(data, parent=parent).id for _ in range(n)]
        self.spawned.setdefault(parent, []).extend(children)
        if wait_now:
            self._wait_children(parent)
        self._tick()

    @precondition(lambda self: any(p in self.spawned for p in self._waiters()))
    @rule(data=st.data())
    def wait_children(self, data: st.DataObject) -> None:
        self._begin()
        parent = data.draw(st.sampled_from([p for p in self._waiters() if p in self.spawned]))
        self._wait_children(parent)
        self._tick()

    @precondition(lambda self: any(self._wait_targets(w) for w in self._waiters()))
    @rule(data=st.data())
    def wait_on_other_runs(self, data: st.DataObject) -> None:
        """trigger_and_wait whose idempotency key matched runs that are not new children."""
        self._begin()
        waiter = data.draw(
            st.sampled_from([w for w in self._waiters() if self._wait_targets(w)]), label="waiter"
        )
        targets = tuple(
            data.draw(
                st.lists(
                    st.sampled_from(self._wait_targets(waiter)), min_size=1, max_size=2, unique=True
                ),
                label="targets",
            )
        )
        final = {
            t: ChildResult(t, self.state[t], None, None) for t in targets if self.state[t] in FINAL
        }
        unresolved = self.engine.waits.unresolved(waiter, targets)
        assert set(unresolved) <= set(final)
        known = {t: final[t] for t in unresolved}
        if self.engine.wait(waiter, WaitChildren(targets), self.now, known):
            self.watched.update(t for t in targets if t not in final)
            self.awaiting[waiter] = targets
        else:  # the attempt is being stopped: its outcome decides, the wait never began
            assert waiter in self.cancel_asked
        self._tick()

    def _wait_children(self, parent: str) -> None:
        children = tuple(self.spawned.pop(parent))
        # as the shell does: children the engine cannot follow are read from the store
        unresolved = self.engine.waits.unresolved(parent, children)
        assert all(self.state[c] in FINAL for c in unresolved)
        known = {c: ChildResult(c, self.state[c], None, None) for c in unresolved}
        if self.engine.wait(parent, WaitChildren(children), self.now, known):
            self.awaiting[parent] = children
        else:  # the attempt is being stopped: its outcome decides, the wait never began
            assert parent in self.cancel_asked

    @precondition(lambda self: self._active())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._begin()
        run_id = data.draw(st.sampled_from(self._active()), label="run")
        was = self.state[run_id]
        self.engine.cancel(run_id, self.now)
        step = self._tick()
        if was is not RUNNING:  # it ends now, after its active children (cancelled first,
            # which may resume a waiting parent on its way to CANCELED)
            ends = [t.to for t in step.transitions if t.run_id == run_id]
            assert ends[-1] is CANCELED
            assert ends.count(CANCELED) == 1

    @precondition(lambda self: self.finals)
    @rule(data=st.data())
    def late_report(self, data: st.DataObject) -> None:
        self._begin()
        run_id = data.draw(st.sampled_from(sorted(self.finals)), label="run")
        self.engine.finished(run_id, Cancelled(), self.now)
        assert all(t.run_id != run_id for t in self._tick().transitions)

    @rule()
    def interrupt_all(self) -> None:
        self._begin()
        self.engine.interrupt_all(self.now)
        self._tick()

    @rule(queue=st.sampled_from(QUEUES), limit=queue_limits)
    def set_queue_limit(self, queue: str, limit: QueueLimit) -> None:
        self._begin()
        self.queue_limit[queue] = limit
        self.rates_since[queue] = len(self.starts)
        self._apply_settings()
        self._tick()

    @rule(
        queue=st.sampled_from(QUEUES),
        key=st.sampled_from(KEYS),
        rate=st.sampled_from(["inherit", None, *RATES]),
    )
    def set_key_rate(self, queue: str, key: Key, rate: Rate | str | None) -> None:
        self._begin()
        if isinstance(rate, str):
            self.key_rate.pop((queue, key), None)
        else:
            self.key_rate[(queue, key)] = rate
        self.rates_since[queue] = len(self.starts)
        self._apply_settings()
        self._tick()

    @rule(base=st.integers(0, 6), burst_factor=st.sampled_from([1.0, 1.5, 2.0]))
    def set_environment(self, base: int, burst_factor: float) -> None:
        self._begin()
        self.base, self.burst_factor = base, burst_factor
        self.engine.set_environment(base, burst_factor)
        self._tick()

    @rule(
        queue=st.sampled_from(QUEUES),
        key=st.sampled_from(KEYS),
        limit=st.sampled_from([None, None, 0, 1, 2, 3]),
    )
    def set_key_limit(self, queue: str, key: Key, limit: int | None) -> None:
        self._begin()
        if limit is None:
            self.key_limit.pop((queue, key), None)
        else:
            self.key_limit[(queue, key)] = limit
        self._apply_settings()
        self._tick()

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause_queue(self, queue: str, paused: bool) -> None:
        self._begin()
        (self.paused_queues.add if paused else self.paused_queues.discard)(queue)
        self._apply_settings()
        self._tick()

    @rule(queue=st.sampled_from(QUEUES), key=st.sampled_from(KEYS), paused=st.booleans())
    def pause_key(self, queue: str, key: Key, paused: bool) -> None:
        self._begin()
        (self.paused_keys.add if paused else self.paused_keys.discard)((queue, key))
        self._apply_settings()
        self._tick()

    @rule(seconds=st.sampled_from([0, 0.5, 1, 3, 7.25, 20, 45]))
    def advance(self, seconds: float) -> None:
        self._begin()
        self.now += seconds
        self._tick()

    @precondition(lambda self: self.engine.next_deadline() is not None)
    @rule()
    def advance_to_next_deadline(self) -> None:
        self._begin()
        deadline = self.engine.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self._tick()

    def _apply_settings(self) -> None:
        """Every queue's and key's setting at once, as the daemon applies a reload."""
        queues = {q: (self.queue_limit[q], q in self.paused_queues) for q in QUEUES}
        keys = {
            k: KeyRule(
                self.key_limit.get(k),
                k in self.paused_keys,
                self.key_rate.get(k),
                own_rate=k in self.key_rate,
            )
            for k in set(self.key_limit) | self.paused_keys | set(self.key_rate)
        }
        self.engine.configure_limits(queues, keys)

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def engine_agrees_with_the_model(self) -> None:
        assert self.engine.audit() == []
        assert self.violations == []
        for run_id, state in self.state.items():
            expected = None if state in FINAL else state
            assert self.engine.state_of(run_id) is expected, run_id
        counts = Counter(s for s in self.state.values() if s not in FINAL)
        stats = self.engine.statistics()
        assert (stats.queued, stats.delayed, stats.running, stats.waiting) == (
            counts[QUEUED],
            counts[DELAYED],
            counts[RUNNING],
            counts[RunState.WAITING],
        )
        assert self.engine.limits.running == len(self.running)
        assert all(n <= 1 for n in self.finals.values())
        self.clean = True

    def teardown(self) -> None:
        if not self.clean:
            return  # a rule or invariant already failed; do not mask its error
        self._drive_to_completion()
        assert len(self.engine) == 0
        assert self.engine.next_deadline() is None
        lost = [r for r in self.specs if self.finals[r] != 1]
        assert lost == [], f"runs without exactly one final transition: {lost}"
        assert self.violations == []

    def _drive_to_completion(self) -> None:
        self.base, self.burst_factor = 10_000, 1.0
        self.engine.set_environment(self.base, self.burst_factor)
        self.queue_limit = {q: QueueLimit() for q in QUEUES}
        self.paused_queues.clear()
        self.key_limit.clear()
        self.paused_keys.clear()
        self.key_rate.clear()
        self._apply_settings()
        for _ in range(200):
            if not len(self.engine):
                return
            self.now += 10_000
            self._tick()
            for run_id in sorted(self.running):
                self.engine.finished(run_id, Completed("null"), self.now)
            self._tick()
            assert self.engine.audit() == []


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_engine__random_operations_keep_every_invariant() -> None:
    """Whatever happens, no start breaks a limit and every run ends exactly once."""
    run_state_machine_as_test(EngineMachine, settings=SETTINGS)
