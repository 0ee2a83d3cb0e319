"""Engine scenarios on explicit time, read like h11's test_state.py: act, then assert it all.

Every tick is followed by ``engine.audit() == []`` (no leaked slot, no idle slot
with a startable run, state counts agree).
"""

from __future__ import annotations

import random

import pytest
from engine_sim import BOOM, T0, Sim, limited, moves, spec, started

from keyq.core import recovery
from keyq.core.engine import Engine
from keyq.core.limits import KeyRule, Limits, QueueLimit
from keyq.core.model import (
    Cancelled,
    ChildResult,
    Completed,
    ErrorInfo,
    Failed,
    TaskPolicy,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.core.retry import Retry
from keyq.core.states import (
    CANCELED,
    COMPLETED,
    DELAYED,
    FAILED,
    FINAL,
    QUEUED,
    RUNNING,
    WAITING,
    RunState,
)
from keyq.errors import RunStateError

# --- limits ---------------------------------------------------------------------------


def test_engine__per_key_limit_holds_each_key_separately() -> None:
    """With limit 2 per key, A's backlog never blocks B, and a freed A slot goes to A."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=2)))
    step = sim.submit(*(spec(f"{k}{i}", key=k) for k in "AB" for i in range(3)))
    assert started(step) == ["A0", "B0", "A1", "B1"]
    assert all(s.attempt == 1 and not s.resumed for s in step.start)
    assert sim.stats() == (2, 0, 4, 0)
    assert sim.engine.queued_in("q", "A") == 1
    assert sim.engine.limits.running_in_bucket("q", "A") == 2

    step = sim.finish("A0")
    assert moves(step) == [
        ("A0", "running", "completed", "completed"),
        ("A2", "queued", "running", "started"),
    ]
    assert step.transitions[0].result == '{"ok": true}'
    assert sim.stats() == (1, 0, 4, 0)
    assert "A0" not in sim.engine
    assert sim.engine.state_of("B2") is QUEUED


def test_engine__queue_total_limit_caps_all_keys() -> None:
    """total_limit bounds the queue over its keys; keys still take turns."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=2, total_limit=3)))
    step = sim.submit(*(spec(f"{k}{i}", key=k) for k in "ABC" for i in range(2)))
    assert started(step) == ["A0", "B0", "C0"]
    assert sim.engine.limits.running_in_queue("q") == 3
    assert started(sim.finish("B0")) == ["A1"]
    assert started(sim.finish("C0")) == ["B1"]
    assert sim.stats() == (1, 0, 3, 0)


def test_engine__environment_burst_caps_every_queue() -> None:
    """All queues together never run more than base * burst_factor; each queue at most base."""
    sim = Sim(limited(concurrency=2, burst_factor=1.5))
    step = sim.submit(*(spec(f"{q}{i}", queue=q) for q in ("x", "y") for i in range(3)))
    assert started(step) == ["x0", "y0", "x1"]
    assert sim.engine.statistics().running == 3
    assert sim.engine.statistics().burst_limit == 3
    assert started(sim.finish("y0")) == ["y1"]
    assert started(sim.finish("x0")) == ["x2"]  # queues alternate: x0 y0 x1 y1 x2
    assert sim.stats() == (1, 0, 3, 0)


def test_engine__lowering_a_limit_does_not_preempt() -> None:
    """A lowered limit leaves running runs alone and only holds new starts back."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=3)))
    sim.submit(*(spec(f"r{i}") for i in range(5)))
    sim.engine.configure_limits({"q": (QueueLimit(concurrency_limit=1), False)}, {})
    step = sim.tick()
    assert not step
    assert sim.stats() == (2, 0, 3, 0)
    assert started(sim.finish("r0")) == []
    assert started(sim.finish("r1")) == []
    assert started(sim.finish("r2")) == ["r3"]


def test_engine__pause_and_resume_queue_and_key() -> None:
    """Paused queues and keys start nothing; resuming starts their runs at once."""
    sim = Sim()
    unpaused, paused = (QueueLimit(), False), (QueueLimit(), True)
    sim.engine.configure_limits({"q": paused}, {("r", "A"): KeyRule(None, True)})
    step = sim.submit(spec("q1"), spec("rA", queue="r", key="A"), spec("rB", queue="r", key="B"))
    assert started(step) == ["rB"]
    sim.engine.configure_limits({"q": unpaused}, {("r", "A"): KeyRule(None, True)})
    assert started(sim.tick()) == ["q1"]
    sim.engine.configure_limits({"q": unpaused}, {})
    assert started(sim.tick()) == ["rA"]


def test_engine__key_override_raises_one_key() -> None:
    """keys set-limit lets one key run more than the queue's per-key limit."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(*(spec(f"{k}{i}", key=k) for k in "AB" for i in range(3)))
    one = {"q": (QueueLimit(concurrency_limit=1), False)}
    sim.engine.configure_limits(one, {("q", "B"): KeyRule(3)})
    assert started(sim.tick()) == ["B1", "B2"]
    sim.engine.configure_limits(one, {})
    assert sim.stats() == (2, 0, 4, 0)


# --- order ----------------------------------------------------------------------------


def test_engine__priority_lower_number_first() -> None:
    """When a slot frees, the lowest priority number among the queued runs starts."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    assert started(sim.submit(spec("first"))) == ["first"]
    sim.submit(spec("p5", priority=5), spec("p10", priority=10), spec("p1", priority=1))
    assert started(sim.finish("first")) == ["p1"]
    assert started(sim.finish("p1")) == ["p5"]
    assert started(sim.finish("p5")) == ["p10"]


def test_engine__fifo_within_a_key() -> None:
    """Runs of one key start in the order they were submitted."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(*(spec(f"r{i}", key="A") for i in range(4)))
    order = ["r0"] + [started(sim.finish(f"r{i}"))[0] for i in range(3)]
    assert order == ["r0", "r1", "r2", "r3"]


# --- delays and retries ---------------------------------------------------------------


def test_engine__delayed_run_waits_for_its_time() -> None:
    """A delayed run is DELAYED until available_at, then QUEUED and RUNNING at that instant."""
    sim = Sim()
    step = sim.submit(spec("d", state=DELAYED, available_at=T0 + 30))
    assert not step
    assert sim.stats() == (0, 1, 0, 0)
    assert sim.engine.next_deadline() == T0 + 30
    assert not sim.tick(T0 + 29.999)
    step = sim.tick(T0 + 30)
    assert moves(step) == [
        ("d", "delayed", "queued", "delay_over"),
        ("d", "queued", "running", "started"),
    ]
    assert [t.at for t in step.transitions] == [T0 + 30, T0 + 30]
    assert step.start[0].attempt == 1
    assert sim.engine.next_deadline() is None


def test_engine__delayed_run_holds_no_slot() -> None:
    """A DELAYED run does not count against its key's limit."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    step = sim.submit(spec("d", key="A", state=DELAYED, available_at=T0 + 5), spec("n", key="A"))
    assert started(step) == ["n"]
    assert moves(sim.tick(T0 + 5)) == [("d", "delayed", "queued", "delay_over")]
    assert sim.engine.state_of("d") is QUEUED
    assert started(sim.finish("n")) == ["d"]


def test_engine__retry_backs_off_then_fails_keeping_the_error() -> None:
    """A failing run waits out its backoff DELAYED (reason retry), then FAILS after max_attempts."""
    retry = Retry(max_attempts=3, min_delay=2, factor=2, max_delay=60, jitter=0)
    engine = Engine(policies={"t": TaskPolicy(retry=retry)}, rng=random.Random(0))
    engine.limits.set_queue("q", QueueLimit(concurrency_limit=1))
    sim = Sim(engine)
    sim.submit(spec("r", key="A", max_attempts=3), spec("other", key="A"))

    sim.now = T0 + 1
    step = sim.finish("r", Failed(BOOM))
    assert moves(step) == [
        ("r", "running", "delayed", "retry"),
        ("other", "queued", "running", "started"),
    ]
    retry_t = step.transitions[0]
    assert (retry_t.error, retry_t.attempt, retry_t.available_at) == (BOOM, 1, T0 + 3)
    assert sim.engine.next_deadline() == T0 + 3
    assert sim.stats() == (0, 1, 1, 0)

    step = sim.tick(T0 + 3)
    assert moves(step) == [("r", "delayed", "queued", "delay_over")]  # "other" holds the key
    step = sim.finish("other")
    assert step.start[0].run_id == "r"
    assert step.start[0].attempt == 2

    second = ErrorInfo("KeyError", "again")
    step = sim.finish("r", Failed(second))
    assert step.transitions[0].available_at == sim.now + 4
    step = sim.tick(sim.now + 4)
    assert step.start[0].attempt == 3

    step = sim.finish("r", Failed(BOOM))
    assert moves(step) == [("r", "running", "failed", "failed")]
    assert (step.transitions[0].error, step.transitions[0].attempt) == (BOOM, 3)
    assert "r" not in sim.engine
    assert sim.engine.next_deadline() is None
    assert [r for _, _, r in sim.timeline("r")] == [
        "started", "retry", "delay_over", "started", "retry", "delay_over", "started", "failed",
    ]  # fmt: skip


def test_engine__non_retryable_failure_fails_at_once() -> None:
    """A failure marked not retryable ends the run even with attempts left."""
    sim = Sim()
    sim.submit(spec("r", max_attempts=5))
    step = sim.finish("r", Failed(BOOM, retryable=False))
    assert moves(step) == [("r", "running", "failed", "failed")]


def test_engine__retry_jitter_comes_from_the_injected_random() -> None:
    """Two engines with the same seed schedule the same retry instant."""
    retry = Retry(min_delay=10, max_delay=60, jitter=0.5)
    at = []
    for _ in range(2):
        sim = Sim(Engine(policies={"t": TaskPolicy(retry=retry)}, rng=random.Random(42)))
        sim.submit(spec("r"))
        at.append(sim.finish("r", Failed(BOOM)).transitions[0].available_at)
    assert at[0] == at[1]
    assert at[0] is not None
    assert T0 + 5 <= at[0] <= T0 + 15


# --- max_duration ---------------------------------------------------------------------


def test_engine__max_duration_cancels_then_retries() -> None:
    """At the deadline the attempt is cancelled, and its Cancelled outcome counts as a failure."""
    policy = TaskPolicy(retry=Retry(min_delay=1, jitter=0), max_duration_s=10)
    sim = Sim(Engine(policies={"t": policy}, rng=random.Random(0)))
    sim.submit(spec("r", max_attempts=2))
    assert sim.engine.next_deadline() == T0 + 10
    assert not sim.tick(T0 + 9.5)
    step = sim.tick(T0 + 10)
    assert (step.cancel, step.transitions, step.start) == (("r",), (), ())
    assert sim.engine.state_of("r") is RUNNING  # holds its slot until the attempt stops
    assert not sim.tick(T0 + 11)  # the cancel is asked once

    step = sim.finish("r", Cancelled())
    assert moves(step) == [("r", "running", "delayed", "retry")]
    error = step.transitions[0].error
    assert error is not None
    assert error.type == "Timeout"
    step = sim.tick(sim.now + 1)
    assert step.start[0].attempt == 2
    assert sim.engine.next_deadline() == sim.now + 10


def test_engine__max_duration_on_last_attempt_fails_with_timeout() -> None:
    """A timed-out last attempt ends the run FAILED with reason timeout."""
    sim = Sim(Engine(policies={"t": TaskPolicy(max_duration_s=5)}))
    sim.submit(spec("r", max_attempts=1))
    assert sim.tick(T0 + 5).cancel == ("r",)
    step = sim.finish("r", Cancelled())
    assert moves(step) == [("r", "running", "failed", "timeout")]
    assert step.transitions[0].error is not None
    assert step.transitions[0].error.type == "Timeout"


def test_engine__max_duration_counts_running_time_only() -> None:
    """Time spent WAITING does not use up the attempt's max_duration."""
    sim = Sim(Engine(policies={"t": TaskPolicy(max_duration_s=10)}))
    sim.submit(spec("r"))
    sim.now = T0 + 6
    sim.engine.wait("r", WaitUntil(T0 + 100), sim.now)
    sim.tick()
    assert sim.engine.next_deadline() == T0 + 100
    step = sim.tick(T0 + 100)
    assert step.start[0].resumed
    assert sim.engine.next_deadline() == T0 + 104
    assert not sim.tick(T0 + 103.9)
    assert sim.tick(T0 + 104).cancel == ("r",)


def test_engine__finishing_before_the_deadline_clears_it() -> None:
    """An attempt that ends in time leaves no pending timeout behind."""
    sim = Sim(Engine(policies={"t": TaskPolicy(max_duration_s=10)}))
    sim.submit(spec("r"))
    sim.finish("r")
    assert sim.engine.next_deadline() is None
    assert not sim.tick(T0 + 1_000)


# --- cancel ---------------------------------------------------------------------------


def test_engine__cancel_queued_is_immediate() -> None:
    """Cancelling a queued run ends it at once; it never starts."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("a"), spec("b"), spec("c"))
    sim.engine.cancel("b", sim.now)
    step = sim.tick()
    assert moves(step) == [("b", "queued", "canceled", "canceled")]
    assert step.cancel == ()
    assert started(sim.finish("a")) == ["c"]
    assert sim.stats() == (0, 0, 1, 0)


def test_engine__cancel_delayed_is_immediate() -> None:
    """Cancelling a delayed run ends it at once and forgets its timer."""
    sim = Sim()
    sim.submit(spec("d", state=DELAYED, available_at=T0 + 60))
    sim.engine.cancel("d", sim.now)
    assert moves(sim.tick()) == [("d", "delayed", "canceled", "canceled")]
    assert sim.engine.next_deadline() is None
    assert not sim.tick(T0 + 60)


def test_engine__cancel_waiting_is_immediate_and_stops_the_coroutine() -> None:
    """Cancelling a waiting run ends it at once and asks the shell to drop its suspended attempt."""
    sim = Sim()
    sim.submit(spec("w"))
    sim.engine.wait("w", WaitUntil(T0 + 60), sim.now)
    sim.tick()
    sim.engine.cancel("w", sim.now)
    step = sim.tick()
    assert moves(step) == [("w", "waiting", "canceled", "canceled")]
    assert step.cancel == ("w",)
    assert sim.engine.next_deadline() is None
    assert not sim.finish("w", Cancelled())  # the stopped coroutine's report is ignored


def test_engine__cancel_running_waits_for_the_attempt_to_stop() -> None:
    """A running run is asked to stop; it becomes CANCELED when its attempt reports Cancelled."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("r", max_attempts=3), spec("next"))
    sim.engine.cancel("r", sim.now)
    step = sim.tick()
    assert (step.cancel, step.transitions) == (("r",), ())
    assert sim.engine.state_of("r") is RUNNING
    sim.engine.cancel("r", sim.now)
    assert not sim.tick()  # asking twice sends one cancel
    step = sim.finish("r", Cancelled())
    assert moves(step) == [
        ("r", "running", "canceled", "canceled"),
        ("next", "queued", "running", "started"),
    ]


def test_engine__withdrawn_runs_are_forgotten_and_free_their_slots() -> None:
    """Runs whose insert failed are withdrawn as if never triggered: a started one gives its
    slot to the next run, a delayed one forgets its timer, and nothing of them is recorded."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    step = sim.submit(spec("a"), spec("b"), spec("d", state=DELAYED, available_at=T0 + 60))
    assert started(step) == ["a"]
    recovery.withdraw(sim.engine, ["a", "d", "unknown"])
    step = sim.tick()
    assert moves(step) == [("b", "queued", "running", "started")]
    assert ("a" in sim.engine, "d" in sim.engine) == (False, False)
    assert sim.engine.next_deadline() is None
    assert sim.stats() == (0, 0, 1, 0)


@pytest.mark.parametrize("state", [QUEUED, DELAYED, RUNNING, WAITING])
def test_engine__an_abandoned_run_fails_as_unrecordable_and_holds_nothing(
    state: RunState,
) -> None:
    """A run whose change the database refused for good is failed (reason unrecordable) from
    whatever state it is in; a running or waiting attempt is asked to stop."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("r"), spec("next"))
    if state is QUEUED:
        sim.submit(spec("x"))
    elif state is DELAYED:
        sim.submit(spec("x", state=DELAYED, available_at=T0 + 60))
    elif state is WAITING:
        sim.engine.wait("r", WaitUntil(T0 + 60), sim.now)
        sim.tick()
    run_id = "x" if state in (QUEUED, DELAYED) else "r"
    assert sim.engine.state_of(run_id) is state
    assert recovery.abandon(sim.engine, run_id, sim.now, BOOM) is True
    step = sim.tick()
    assert (run_id, state.value, "failed", "unrecordable") in moves(step)
    assert (run_id in step.cancel) == (state in (RUNNING, WAITING))
    assert run_id not in sim.engine
    assert recovery.abandon(sim.engine, run_id, sim.now, BOOM) is False


def test_engine__cancel_of_a_final_or_unknown_run_raises() -> None:
    """Cancelling a run the engine no longer holds is refused."""
    sim = Sim()
    sim.submit(spec("r"))
    sim.finish("r")
    with pytest.raises(RunStateError, match="run r is not active"):
        sim.engine.cancel("r", sim.now)
    with pytest.raises(RunStateError, match="ghost"):
        sim.engine.cancel("ghost", sim.now)


def test_engine__completed_despite_cancel_stays_completed() -> None:
    """An attempt that returned before the cancel landed keeps its result."""
    sim = Sim()
    sim.submit(spec("r"))
    sim.engine.cancel("r", sim.now)
    sim.tick()
    assert moves(sim.finish("r", Completed("1"))) == [("r", "running", "completed", "completed")]


# --- waits ----------------------------------------------------------------------------


def test_engine__wait_until_gives_the_slot_back_and_resumes_first() -> None:
    """A waiting run frees its slot; at its time it resumes ahead of fresh runs of its key."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("w", key="A"), spec("a2", key="A"))
    sim.now = T0 + 1
    sim.engine.wait("w", WaitUntil(T0 + 60), sim.now)
    step = sim.tick()
    assert moves(step) == [
        ("w", "running", "waiting", "wait"),
        ("a2", "queued", "running", "started"),
    ]
    assert step.transitions[0].wait == WaitUntil(T0 + 60)
    assert sim.stats() == (0, 0, 1, 1)
    assert sim.engine.next_deadline() == T0 + 60

    step = sim.tick(T0 + 60)
    assert moves(step) == [("w", "waiting", "queued", "wait_done")]  # a2 holds the key
    sim.submit(spec("a3", key="A", priority=1))
    step = sim.finish("a2")
    assert moves(step)[1] == ("w", "queued", "running", "resumed")
    assert step.start[0].resumed
    assert step.start[0].attempt == 1
    assert sim.engine.state_of("a3") is QUEUED
    assert started(sim.finish("w")) == ["a3"]
    assert sim.timeline("w") == [
        ("queued", "running", "started"),
        ("running", "waiting", "wait"),
        ("waiting", "queued", "wait_done"),
        ("queued", "running", "resumed"),
        ("running", "completed", "completed"),
    ]


def test_engine__parent_and_child_on_limit_one_queue_do_not_deadlock() -> None:
    """A parent waiting on its child frees the only slot: the child runs, the parent resumes."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("parent"))
    step = sim.submit(spec("child", parent_id="parent"))
    assert started(step) == []
    sim.engine.wait("parent", WaitChildren(("child",)), sim.now)
    step = sim.tick()
    assert moves(step) == [
        ("parent", "running", "waiting", "wait"),
        ("child", "queued", "running", "started"),
    ]
    step = sim.finish("child", Completed('{"x": 1}'))
    assert moves(step) == [
        ("child", "running", "completed", "completed"),
        ("parent", "waiting", "queued", "children_done"),
        ("parent", "queued", "running", "resumed"),
    ]
    assert step.start[0].resumed
    assert step.start[0].children == (ChildResult("child", COMPLETED, '{"x": 1}', None),)


def test_engine__children_results_arrive_in_wait_order() -> None:
    """StartRun.children lists every waited child, in the order the wait named them."""
    sim = Sim()
    sim.submit(spec("p", queue="parents"))
    sim.submit(spec("c1", parent_id="p"), spec("c2", parent_id="p"), spec("c3", parent_id="p"))
    sim.engine.wait("p", WaitChildren(("c3", "c1", "c2")), sim.now)
    sim.tick()
    sim.finish("c1", Completed("1"))
    sim.finish("c2", Failed(BOOM, retryable=False))
    sim.engine.cancel("c3", sim.now)
    step = sim.tick()
    assert step.cancel == ("c3",)
    step = sim.finish("c3", Cancelled())
    assert step.start[0].children == (
        ChildResult("c3", CANCELED, None, None),
        ChildResult("c1", COMPLETED, "1", None),
        ChildResult("c2", FAILED, None, BOOM),
    )


def test_engine__child_finished_before_parent_waits_still_resumes_it() -> None:
    """A child that ends before its parent reaches the wait resumes the parent at once."""
    sim = Sim()
    sim.submit(spec("p", queue="parents"), spec("c", queue="children", parent_id="p"))
    sim.finish("c", Completed("42"))
    sim.engine.wait("p", WaitChildren(("c",)), sim.now)
    step = sim.tick()
    assert moves(step) == [
        ("p", "running", "waiting", "wait"),
        ("p", "waiting", "queued", "children_done"),
        ("p", "queued", "running", "resumed"),
    ]
    assert step.start[0].children == (ChildResult("c", COMPLETED, "42", None),)


def test_engine__parent_waits_for_every_child() -> None:
    """The parent stays WAITING until the last of its children is final."""
    sim = Sim()
    sim.submit(spec("p", queue="parents"))
    sim.submit(spec("c1", parent_id="p"), spec("c2", parent_id="p"))
    sim.engine.wait("p", WaitChildren(("c1", "c2")), sim.now)
    sim.tick()
    sim.finish("c1")
    assert sim.engine.state_of("p") is WAITING
    sim.finish("c2", Failed(BOOM))  # retried: not final yet
    assert sim.engine.state_of("p") is WAITING
    assert sim.engine.state_of("c2") is DELAYED
    while sim.engine.state_of("c2") is not None:
        step = sim.tick(sim.engine.next_deadline() or sim.now)
        if "c2" in started(step):
            sim.finish("c2", Completed("2"))
    assert sim.engine.state_of("p") is RUNNING


# --- recovery and shutdown ------------------------------------------------------------


def test_engine__recover_running_run_is_requeued_as_interrupted() -> None:
    """A run that was RUNNING at a crash is QUEUED again as an interrupted attempt."""
    sim = Sim()
    recovery.recover(sim.engine, [spec("r", state=RUNNING, attempt=1, max_attempts=3)], sim.now)
    step = sim.tick()
    assert moves(step) == [
        ("r", "running", "queued", "interrupted"),
        ("r", "queued", "running", "restarted"),
    ]
    assert step.start[0].attempt == 2
    assert not step.start[0].resumed


def test_engine__recover_waiting_run_keeps_waiting_then_resumes() -> None:
    """A run WAITING at a crash waits on, holding no slot, and resumes in its attempt."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    stored = spec("w", state=WAITING, attempt=1, wait=WaitUntil(T0 + 600))
    recovery.recover(sim.engine, [stored, spec("other")], sim.now)
    step = sim.tick()
    assert started(step) == ["other"]  # the waiting run holds no slot
    assert sim.engine.state_of("w") is WAITING
    sim.finish("other")
    step = sim.tick(T0 + 600)
    assert moves(step) == [
        ("w", "waiting", "queued", "wait_done"),
        ("w", "queued", "running", "resumed"),
    ]
    assert step.start[0].resumed
    assert step.start[0].attempt == 1


def test_engine__recover_run_queued_to_resume_resumes_first() -> None:
    """A run whose wait had ended but had not restarted resumes ahead of fresh runs."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    fresh = spec("fresh")
    resumer = spec("r", state=QUEUED, attempt=1, max_attempts=1, wait=WaitUntil(T0))
    recovery.recover(sim.engine, [fresh, resumer], sim.now)
    step = sim.tick()
    assert moves(step) == [("r", "queued", "running", "resumed")]
    assert step.start[0].resumed
    assert step.start[0].attempt == 1


def test_engine__recover_parent_waiting_on_children() -> None:
    """Active children resume their recovered parent when final; children that ended
    before the crash are reported back for the shell to read, then resume it too."""
    sim = Sim()
    parent = spec("p", state=WAITING, attempt=1, wait=WaitChildren(("gone", "c")))
    recovered = recovery.recover(sim.engine, [parent, spec("c", parent_id="p")], sim.now)
    assert recovered.children == {"p": ["gone"]}
    sim.tick()
    sim.finish("c")
    assert sim.engine.state_of("p") is WAITING
    gone = ChildResult("gone", COMPLETED, "1", None)
    sim.engine.waits.hear("p", {"gone": gone}, sim.now)
    step = sim.tick()
    assert moves(step) == [
        ("p", "waiting", "queued", "children_done"),
        ("p", "queued", "running", "resumed"),
    ]


@pytest.mark.parametrize("state", [RUNNING, WAITING])
def test_engine__recover_without_attempts_left_fails(state: RunState) -> None:
    """An interrupted last attempt ends the run FAILED, with the interruption as its error."""
    sim = Sim()
    recovery.recover(sim.engine, [spec("r", state=state, attempt=2, max_attempts=2)], sim.now)
    step = sim.tick()
    assert moves(step) == [("r", state.value, "failed", "interrupted")]
    error = step.transitions[0].error
    assert error is not None
    assert error.type == "Interrupted"
    assert "r" not in sim.engine


def test_engine__recover_queued_and_delayed_runs_are_adopted_as_is() -> None:
    """Runs that were only QUEUED or DELAYED come back unchanged, with no new transition."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=0)))
    recovery.recover(
        sim.engine, [spec("q1"), spec("d1", state=DELAYED, available_at=T0 + 5)], sim.now
    )
    assert not sim.tick()
    assert sim.stats() == (1, 1, 0, 0)
    assert moves(sim.tick(T0 + 5)) == [("d1", "delayed", "queued", "delay_over")]


# --- tokens and parents ----------------------------------------------------------------


def test_engine__token_completion_resumes_every_waiter() -> None:
    """Runs waiting on one token hold no slot and all resume when it is completed."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("a"))
    assert sim.engine.wait("a", WaitForToken("tok", None), sim.now)
    sim.tick()
    sim.submit(spec("b"))
    sim.engine.wait("b", WaitForToken("tok", None), sim.now)
    sim.tick()
    assert sim.stats() == (0, 0, 0, 2)
    sim.engine.waits.token_done("tok", sim.now)
    step = sim.tick()
    assert moves(step)[:2] == [
        ("a", "waiting", "queued", "token_completed"),
        ("b", "waiting", "queued", "token_completed"),
    ]
    assert started(step) == ["a"]
    sim.engine.waits.token_done("tok", sim.now)  # a late duplicate changes nothing
    assert not sim.tick()


def test_engine__token_timeout_resumes_with_its_reason() -> None:
    """At the token's timeout the run resumes (reason token_timeout); a completion after
    that is ignored."""
    sim = Sim()
    sim.submit(spec("a"))
    sim.engine.wait("a", WaitForToken("tok", T0 + 30), sim.now)
    sim.tick()
    assert sim.engine.next_deadline() == T0 + 30
    step = sim.tick(T0 + 30)
    assert moves(step)[0] == ("a", "waiting", "queued", "token_timeout")
    assert step.transitions[0].wait == WaitForToken("tok", T0 + 30)
    sim.engine.waits.token_done("tok", sim.now)
    assert not sim.tick()


def test_engine__recover_reports_waited_tokens() -> None:
    """Recovery lists the tokens waiting runs wait on: they may have been completed
    while the daemon was down."""
    sim = Sim()
    stored = spec("w", state=WAITING, attempt=1, wait=WaitForToken("tok", None))
    assert recovery.recover(sim.engine, [stored], sim.now).tokens == ["tok"]
    sim.engine.waits.token_done("tok", sim.now)
    assert moves(sim.tick())[0] == ("w", "waiting", "queued", "token_completed")


def test_engine__cancel_parent_cancels_its_active_children_and_theirs() -> None:
    """Cancelling a waiting parent cancels its queued and waiting children, and theirs;
    a running child is asked to stop and ends CANCELED; a final child stays as it was."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=2)))
    sim.submit(spec("p"))
    sim.engine.wait("p", WaitChildren(("done", "run", "wait", "queued")), sim.now)
    sim.submit(spec("done", parent_id="p"), spec("run", parent_id="p"))
    sim.finish("done")
    sim.submit(spec("wait", parent_id="p"))
    sim.engine.wait("wait", WaitChildren(("grandchild",)), sim.now)
    sim.submit(spec("grandchild", parent_id="wait"), spec("queued", parent_id="p"))
    assert sim.engine.state_of("queued") is QUEUED
    sim.engine.cancel("p", sim.now)
    step = sim.tick()
    assert sorted(step.cancel) == ["grandchild", "p", "run", "wait"]  # running and suspended
    ended = {t.run_id: t.to for t in step.transitions if t.to in FINAL}
    assert ended == {"wait": CANCELED, "queued": CANCELED, "p": CANCELED}
    sim.finish("run", Cancelled())
    sim.finish("grandchild", Cancelled())
    assert sim.timeline("run")[-1] == ("running", "canceled", "canceled")
    assert sim.timeline("done")[-1][1] == "completed"
    assert len(sim.engine) == 0


def test_engine__wait_refused_while_the_attempt_is_being_stopped() -> None:
    """A wait that reaches the engine after a cancel was asked for changes nothing."""
    sim = Sim()
    sim.submit(spec("a"))
    sim.engine.cancel("a", sim.now)
    assert sim.engine.wait("a", WaitUntil(T0 + 5), sim.now) is False
    assert sim.engine.state_of("a") is RUNNING


def test_engine__interrupt_all_requeues_running_attempts() -> None:
    """At shutdown every running attempt is asked to stop; stopped ones are re-queued."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("a", key="A", max_attempts=2), spec("b", key="B", max_attempts=1))
    sim.engine.interrupt_all(sim.now)
    step = sim.tick()
    assert sorted(step.cancel) == ["a", "b"]
    assert step.transitions == ()
    sim.engine.finished("a", Cancelled(), sim.now)
    step = sim.finish("b", Cancelled())
    assert moves(step) == [
        ("a", "running", "queued", "interrupted"),
        ("b", "running", "failed", "interrupted"),
        ("a", "queued", "running", "restarted"),
    ]
    assert step.start[0].attempt == 2


def test_engine__interrupt_all_does_not_override_a_user_cancel() -> None:
    """A run already being cancelled by a user still ends CANCELED after interrupt_all."""
    sim = Sim()
    sim.submit(spec("r"))
    sim.engine.cancel("r", sim.now)
    sim.engine.interrupt_all(sim.now)
    assert sim.tick().cancel == ("r",)
    assert moves(sim.finish("r", Cancelled())) == [("r", "running", "canceled", "canceled")]


# --- refusals -------------------------------------------------------------------------


def test_engine__illegal_calls_raise_and_change_nothing() -> None:
    """Reporting an attempt or a wait for a run that is not RUNNING raises and changes nothing."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("running"), spec("queued"))
    before = (sim.stats(), sim.engine.state_of("queued"), sim.engine.next_deadline())
    with pytest.raises(RunStateError, match="queued"):
        sim.engine.finished("queued", Completed("1"), sim.now)
    with pytest.raises(RunStateError, match="expected running"):
        sim.engine.wait("queued", WaitUntil(T0 + 5), sim.now)
    with pytest.raises(RunStateError, match="not active"):
        sim.engine.wait("ghost", WaitUntil(T0 + 5), sim.now)
    with pytest.raises(RunStateError, match="running"):
        sim.engine.submit(spec("bad", state=RUNNING))
    assert not sim.tick()
    assert (sim.stats(), sim.engine.state_of("queued"), sim.engine.next_deadline()) == before
    assert "bad" not in sim.engine


def test_engine__submit_twice_is_ignored() -> None:
    """Submitting a run the engine already holds returns False and queues nothing more."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=0)))
    s = spec("r")
    assert sim.engine.submit(s) is True
    assert sim.engine.submit(s) is False
    assert sim.stats() == (1, 0, 0, 0)
    assert len(sim.engine) == 1


def test_engine__finished_for_a_run_no_longer_held_is_ignored() -> None:
    """A late outcome for a run that is already final changes nothing."""
    sim = Sim()
    sim.submit(spec("r"))
    sim.finish("r")
    assert not sim.finish("r", Failed(BOOM))


def test_engine__every_final_transition_is_recorded_once() -> None:
    """After a mixed workload each run has exactly one final transition, its last one."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    sim.submit(spec("a"), spec("b", max_attempts=1), spec("c"))
    sim.finish("a")
    sim.finish("b", Failed(BOOM))
    sim.engine.cancel("c", sim.now)
    sim.finish("c", Cancelled())
    for run_id in "abc":
        finals = [t for t in sim.history if t.run_id == run_id and t.to in FINAL]
        assert len(finals) == 1
        assert [t for t in sim.history if t.run_id == run_id][-1] is finals[0]
    assert len(sim.engine) == 0


# --- waiting on runs that are not one's own children --------------------------------


def test_engine__known_results_of_final_children_resume_at_once() -> None:
    """Children already final before the wait (read from the store) resume the waiter at once."""
    sim = Sim()
    sim.submit(spec("p"))
    old = ChildResult("old", COMPLETED, '"cached"', None)
    assert sim.engine.waits.unresolved("p", ("old",)) == ["old"]
    sim.engine.wait("p", WaitChildren(("old",)), sim.now, known={"old": old})
    step = sim.tick()
    assert moves(step)[-1] == ("p", "queued", "running", "resumed")
    assert step.start[0].children == (old,)


def test_engine__unresolved_children_lists_only_unknown_ones() -> None:
    """The engine names the children it cannot follow: not active and not reported."""
    sim = Sim(limited(kids=QueueLimit(concurrency_limit=0)))
    sim.submit(spec("p"), spec("active", queue="kids", parent_id="p"), spec("done", parent_id="p"))
    sim.finish("done")
    assert sim.engine.waits.unresolved("p", ("active", "done", "ghost")) == ["ghost"]
    assert sim.engine.waits.unresolved("nobody", ("active", "ghost")) == ["ghost"]


def test_engine__waiting_on_someone_elses_run_resumes_both_waiters() -> None:
    """A run waiting on another parent's child is resumed too when that child ends."""
    sim = Sim()
    sim.submit(spec("p", queue="a"), spec("w", queue="b"))
    sim.submit(spec("c", queue="c", parent_id="p"))
    sim.engine.wait("w", WaitChildren(("c",)), sim.now)
    sim.engine.wait("p", WaitChildren(("c",)), sim.now)
    sim.tick()
    assert sim.stats() == (0, 0, 1, 2)
    step = sim.finish("c", Completed("7"))
    assert sorted(started(step)) == ["p", "w"]
    expected = (ChildResult("c", COMPLETED, "7", None),)
    assert all(s.children == expected for s in step.start)


def test_engine__mixed_known_and_active_children() -> None:
    """A wait on one final and one active child resumes when the active one ends."""
    sim = Sim()
    sim.submit(spec("p"), spec("c", queue="kids", parent_id="p"))
    old = ChildResult("old", FAILED, None, BOOM)
    sim.engine.wait("p", WaitChildren(("old", "c")), sim.now, known={"old": old})
    sim.tick()
    assert sim.engine.state_of("p") is WAITING
    step = sim.finish("c", Completed("1"))
    assert step.start[0].children == (old, ChildResult("c", COMPLETED, "1", None))


# --- draining and bulk limit changes ----------------------------------------------------


def test_engine__hold_starts_starts_nothing_new() -> None:
    """While draining, running attempts finish but nothing new starts, not even resumes."""
    sim = Sim()
    sim.submit(spec("r1"), spec("w"))
    sim.engine.wait("w", WaitUntil(T0 + 1), sim.now)
    sim.tick()
    sim.engine.hold_starts()
    sim.check_audit = False  # see test_engine__audit_is_clean_while_draining
    step = sim.submit(spec("fresh"))
    assert started(step) == []
    assert moves(sim.finish("r1")) == [("r1", "running", "completed", "completed")]
    assert moves(sim.tick(T0 + 1)) == [("w", "waiting", "queued", "wait_done")]
    assert sim.stats() == (2, 0, 0, 0)


def test_engine__configure_limits_sets_everything_at_once() -> None:
    """A reload replaces queue limits, pauses and key settings, and re-admits at once."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1), r=QueueLimit(concurrency_limit=1)))
    sim.submit(*(spec(f"q{i}", key="A") for i in range(3)))
    sim.submit(*(spec(f"r{i}", queue="r", key="B") for i in range(3)))
    sim.engine.configure_limits(
        {"q": (QueueLimit(concurrency_limit=3), False), "r": (QueueLimit(1), True)},
        {("q", "A"): KeyRule(2), ("r", "B"): KeyRule()},
    )
    assert started(sim.tick()) == ["q1"]
    assert sim.engine.limits.queue_paused("r")
    assert sim.engine.limits.key_limit("q", "A") == 2
    # A second reload that no longer mentions q: q is back to no limit at all.
    sim.engine.configure_limits({"r": (QueueLimit(3), False)}, {})
    assert started(sim.tick()) == ["q2", "r1", "r2"]
    assert sim.engine.limits.queue_limit("q") == QueueLimit()
    assert sim.engine.limits.key_limit("q", "A") is None


# --- races between cancels, timeouts, waits and outcomes ------------------------------


def test_engine__a_wait_that_races_a_cancel_is_ignored() -> None:
    """A wait reported after a cancel was requested keeps the slot; the cancel decides the run."""
    sim = Sim()
    sim.submit(spec("r"))
    sim.engine.cancel("r", sim.now)
    assert sim.tick().cancel == ("r",)
    # the attempt reached its waitpoint before the cancel landed
    sim.engine.wait("r", WaitUntil(T0 + 5), sim.now)
    assert sim.engine.state_of("r") is RUNNING
    assert sim.engine.limits.holds("r")
    step = sim.finish("r", Cancelled())
    assert [(t.to, t.reason) for t in step.transitions] == [(CANCELED, "canceled")]
    assert sim.engine.state_of("r") is None


def test_engine__a_wait_that_races_a_timeout_is_ignored() -> None:
    """A wait reported after max_duration fired does not escape the timeout."""
    sim = Sim(Engine(policies={"t": TaskPolicy(max_duration_s=10)}))
    sim.submit(spec("r", max_attempts=1))
    assert sim.tick(T0 + 10).cancel == ("r",)
    sim.engine.wait("r", WaitUntil(T0 + 20), sim.now)  # the wait lost the race
    assert sim.engine.state_of("r") is RUNNING
    step = sim.finish("r", Cancelled())
    assert [(t.to, t.reason) for t in step.transitions] == [(FAILED, "timeout")]


def test_engine__user_cancel_is_not_undone_by_a_retry() -> None:
    """A run the user cancelled is not retried when its attempt fails before the cancel lands."""
    sim = Sim()
    sim.submit(spec("r", max_attempts=3))
    sim.engine.cancel("r", sim.now)
    sim.tick()
    step = sim.finish("r", Failed(BOOM))
    assert sim.engine.state_of("r") is None
    assert [t.to for t in step.transitions] == [CANCELED]


def test_engine__audit_is_clean_while_draining() -> None:
    """While starts are held for a drain, audit reports no problem for runs left queued."""
    sim = Sim()
    sim.submit(spec("r1"))
    sim.engine.hold_starts()
    sim.check_audit = False
    sim.submit(spec("fresh"))
    assert sim.engine.state_of("fresh") is QUEUED
    assert sim.engine.audit() == []


def test_engine__cancel_of_a_run_queued_to_resume_stops_its_coroutine() -> None:
    """A run whose wait is over but has no slot yet is canceled and its coroutine stopped."""
    sim = Sim(Engine(Limits(concurrency=1, burst_factor=1.0)))
    sim.submit(spec("w"))
    sim.engine.wait("w", WaitUntil(T0 + 5), sim.now)
    assert started(sim.submit(spec("busy"))) == ["busy"]
    sim.tick(T0 + 5)  # "w" is queued to resume, but the only slot is taken
    assert sim.engine.state_of("w") is QUEUED
    sim.engine.cancel("w", sim.now)
    step = sim.tick()
    assert step.cancel == ("w",)
    assert [(t.run_id, t.to) for t in step.transitions] == [("w", CANCELED)]
