"""TTL and debounce in the engine, on explicit time: the rules of runs not yet started."""

from __future__ import annotations

from engine_sim import BOOM, T0, Sim, limited, moves, spec, started

from keyq.core.engine import Engine
from keyq.core.limits import QueueLimit
from keyq.core.model import ChildResult, Failed, RunSpec, TaskPolicy, WaitChildren
from keyq.core.retry import Retry
from keyq.core.states import CANCELED, DELAYED, RunState

# --- ttl ------------------------------------------------------------------------------


def test_ttl__queued_run_held_by_its_key_limit_is_canceled_at_its_ttl() -> None:
    """A run that waits for a slot past its TTL ends CANCELED (ttl_expired) and never
    starts; the run ahead of it is untouched."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=1)))
    step = sim.submit(spec("a", key="k"), spec("b", key="k", expires_at=T0 + 60))
    assert started(step) == ["a"]
    assert sim.engine.next_deadline() == T0 + 60

    step = sim.tick(T0 + 59.999)
    assert step.transitions == ()
    step = sim.tick(T0 + 60)
    assert moves(step) == [("b", "queued", "canceled", "ttl_expired")]
    assert sim.stats() == (0, 0, 1, 0)

    step = sim.finish("a")  # the freed slot finds nothing to start
    assert started(step) == []
    assert "b" not in sim.engine
    assert sim.engine.next_deadline() is None


def test_ttl__delayed_run_expires_when_its_ttl_ends_before_its_delay() -> None:
    """A delay longer than the TTL: the run is canceled at the TTL, its delay timer gone."""
    sim = Sim()
    sim.submit(spec("d", state=DELAYED, available_at=T0 + 600, expires_at=T0 + 300))
    assert sim.engine.next_deadline() == T0 + 300
    step = sim.tick(T0 + 300)
    assert moves(step) == [("d", "delayed", "canceled", "ttl_expired")]
    assert sim.engine.next_deadline() is None


def test_ttl__expiry_and_delay_due_in_the_same_tick_cancel_without_queueing() -> None:
    """When the delay and the TTL end at the same instant, the TTL wins: one transition."""
    sim = Sim()
    sim.submit(spec("d", state=DELAYED, available_at=T0 + 10, expires_at=T0 + 10))
    step = sim.tick(T0 + 10)
    assert moves(step) == [("d", "delayed", "canceled", "ttl_expired")]
    assert started(step) == []


def test_ttl__a_started_run_is_never_expired_not_even_in_its_retry_backoff() -> None:
    """The TTL is about starting: once the first attempt started, a retry's backoff
    passing the TTL does not cancel it."""
    engine = Engine(
        policies={
            "t": TaskPolicy(
                Retry(max_attempts=2, backoff="fixed", min_delay=100, max_delay=100, jitter=0)
            )
        }
    )
    sim = Sim(engine)
    step = sim.submit(spec("r", expires_at=T0 + 5))
    assert started(step) == ["r"]
    step = sim.finish("r", Failed(BOOM))
    assert moves(step) == [("r", "running", "delayed", "retry")]
    assert sim.engine.next_deadline() == T0 + 100  # the backoff, not the TTL
    step = sim.tick(T0 + 100)
    assert started(step) == ["r"]
    assert step.start[0].attempt == 2


def test_ttl__expired_child_is_reported_to_its_waiting_parent_as_canceled() -> None:
    """A child that expires ends its parent's wait: the parent resumes with a CANCELED child."""
    sim = Sim()
    sim.submit(spec("p"))
    sim.engine.wait("p", WaitChildren(("c",)), sim.now)
    sim.submit(spec("c", parent_id="p", state=DELAYED, available_at=T0 + 50, expires_at=T0 + 20))
    step = sim.tick(T0 + 20)
    assert ("c", "delayed", "canceled", "ttl_expired") in moves(step)
    assert started(step) == ["p"]
    assert step.start[0].children == (ChildResult("c", CANCELED, None, None),)


def test_ttl__a_recovered_run_past_its_ttl_expires_on_the_first_tick() -> None:
    """After a restart, a run whose TTL ran out while the daemon was down is canceled
    before anything could start it."""
    sim = Sim()
    sim.now = T0 + 3600
    step = sim.submit(spec("old", expires_at=T0 + 60), spec("fresh"))
    assert moves(step)[0] == ("old", "queued", "canceled", "ttl_expired")
    assert started(step) == ["fresh"]


# --- debounce ---------------------------------------------------------------------------


def _debounced(run_id: str = "d", *, until: float = T0 + 50) -> RunSpec:
    return spec(
        run_id,
        task="sync",
        state=DELAYED,
        available_at=T0 + 5,
        debounce_key="user-1",
        debounce_until=until,
    )


def test_debounce__a_later_trigger_replaces_the_payload_and_pushes_the_start() -> None:
    """While the run is DELAYED, a trigger with its key folds in: same run, the new
    payload, the start moved to the trigger's time; the timeline says debounced."""
    sim = Sim()
    sim.submit(_debounced())
    sim.tick(T0 + 3)
    assert sim.engine.debounce("sync", "user-1", '{"n": 2}', T0 + 8, sim.now) == "d"
    step = sim.tick()
    assert moves(step) == [("d", "delayed", "delayed", "debounced")]
    assert step.transitions[0].payload == '{"n": 2}'
    assert step.transitions[0].available_at == T0 + 8

    assert started(sim.tick(T0 + 5)) == []  # the old start time passes
    step = sim.tick(T0 + 8)
    assert started(step) == ["d"]
    assert step.start[0].payload == '{"n": 2}'


def test_debounce__the_start_is_never_pushed_past_debounce_max() -> None:
    """Triggers keep coming: the start is capped at the first trigger + debounce_max."""
    sim = Sim()
    sim.submit(_debounced(until=T0 + 12))
    for at in (T0 + 4, T0 + 8, T0 + 11):
        sim.tick(at)
        assert sim.engine.debounce("sync", "user-1", '"x"', at + 5, sim.now) == "d"
    assert sim.engine.next_deadline() == T0 + 12
    assert started(sim.tick(T0 + 12)) == ["d"]


def test_debounce__once_started_the_next_trigger_makes_a_new_run() -> None:
    """The key no longer names the run once its delay is over (queued, then running)."""
    sim = Sim(limited(q=QueueLimit(concurrency_limit=0)))
    sim.submit(_debounced())
    step = sim.tick(T0 + 5)
    assert moves(step) == [("d", "delayed", "queued", "delay_over")]  # held: limit 0
    assert sim.engine.debounce("sync", "user-1", '"x"', T0 + 10, sim.now) is None


def test_debounce__keys_are_scoped_to_their_task_and_canceled_runs_free_theirs() -> None:
    """Another task's trigger with the same key is not folded in; a canceled run's key
    names nothing."""
    sim = Sim()
    sim.submit(_debounced())
    assert sim.engine.debounce("other-task", "user-1", '"x"', T0 + 9, sim.now) is None
    sim.engine.cancel("d", sim.now)
    sim.tick()
    assert sim.engine.debounce("sync", "user-1", '"x"', T0 + 9, sim.now) is None


def test_debounce__a_retrying_run_is_not_debounced() -> None:
    """A run waiting out a retry backoff is DELAYED but has started: a new run is made."""
    engine = Engine(
        policies={
            "sync": TaskPolicy(Retry(max_attempts=2, backoff="fixed", min_delay=100, max_delay=100))
        }
    )
    sim = Sim(engine)
    sim.submit(_debounced())
    assert started(sim.tick(T0 + 5)) == ["d"]
    sim.finish("d", Failed(BOOM))
    assert sim.engine.state_of("d") is RunState.DELAYED
    assert sim.engine.debounce("sync", "user-1", '"x"', T0 + 9, sim.now) is None
