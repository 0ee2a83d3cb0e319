"""Rate limits in the pure core: at most N starts in any window, per key or per queue.

Time is explicit: every start is observed in the engine's steps, and a held run is
looked at again by a timer the engine asks for (``next_deadline``), never polled.
"""

from __future__ import annotations

import pytest
from engine_sim import BOOM, T0, Sim, limited, spec, started

from keyq.core import recovery
from keyq.core.engine import Engine
from keyq.core.limits import KeyRule, Limits, QueueLimit
from keyq.core.model import CountedStart, Failed, TaskPolicy
from keyq.core.ratelimit import Rate, StartLogs, parse_rate
from keyq.core.retry import Retry
from keyq.core.states import QUEUED
from keyq.errors import SlotError

# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/1m", Rate(100, 60)),
        ("10/s", Rate(10, 1)),
        (" 5 / 30s ", Rate(5, 30)),
        ("3/1h30m", Rate(3, 5400)),
        ("2/0.5s", Rate(2, 0.5)),
        ("none", None),
        ("None", None),
        (None, None),
    ],
)
def test_rate__parses_what_users_write(text: str | None, rate: Rate | None) -> None:
    assert parse_rate(text, field="rate_limit") == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100", "rate_limit: expected a rate such as 100/1m"),
        ("fast", "rate_limit: expected a rate such as 100/1m"),
        ("0/1m", "rate_limit: the count must be 1 to 1,000,000, got 0"),
        ("5/0s", "rate_limit: the window must be longer than 0"),
        ("5/soon", "rate_limit: expected a rate .* got '5/soon' \\('soon' is not a window"),
        (100, "rate_limit: expected a rate such as 100/1m"),
    ],
)
def test_rate__refuses_anything_else_naming_the_field(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text, field="rate_limit")


def test_rate__prints_as_written() -> None:
    assert [str(Rate(100, 60)), str(Rate(10, 1)), str(Rate(5, 90)), str(Rate(1, 86400))] == [
        "100/1m",
        "10/1s",
        "5/90s",
        "1/1d",
    ]


# --- the sliding window -----------------------------------------------------------------------


def test_window__any_window_holds_at_most_the_count() -> None:
    """2 per 10 s: starts at 0 and 4 hold the third until 10, the fourth until 14."""
    logs, rate = StartLogs(), Rate(2, 10)
    assert logs.next_start("b", rate, 0.0) is None
    logs.record("b", rate, 0.0)
    logs.record("b", rate, 4.0)
    assert logs.next_start("b", rate, 9.99) == 10.0
    assert logs.next_start("b", rate, 10.0) is None
    logs.record("b", rate, 10.0)
    assert logs.next_start("b", rate, 10.0) == 14.0
    assert logs.count_in_window("b", rate, 10.0) == 2  # (0, 10]: 4 and 10


def test_window__an_idle_log_is_forgotten_after_a_window() -> None:
    logs, rate = StartLogs(), Rate(1, 10)
    logs.record("a", rate, 0.0)
    logs.record("b", rate, 5.0)
    logs.forget_idle(10.0, lambda log: 10.0)
    assert len(logs) == 1
    logs.forget_idle(15.0, lambda log: 10.0)
    assert len(logs) == 0


def test_window__a_longer_window_keeps_a_log_longer() -> None:
    """A rate changed to a longer window after the last start keeps its log until then."""
    logs = StartLogs()
    logs.record("a", Rate(1, 2), 0.0)
    logs.forget_idle(3.0, lambda log: 5.0)
    assert logs.next_start("a", Rate(1, 5), 3.0) == 5.0
    logs.forget_idle(5.0, lambda log: 5.0)
    assert len(logs) == 0


def test_window__past_starts_read_back_out_of_order_stay_sorted() -> None:
    logs, rate = StartLogs(), Rate(2, 10)
    for at in (3.0, 1.0, 2.0):
        logs.record("b", rate, at)
    assert logs.next_start("b", rate, 5.0) == 12.0  # the last two are 2 and 3; 2 leaves at 12


# --- the engine ------------------------------------------------------------------------------


def test_engine__a_key_rate_holds_each_key_apart() -> None:
    """2 starts per 10 s per key: A's backlog never holds B back, and freed slots do
    not start more before the window allows."""
    sim = Sim(limited(q=QueueLimit(rate=Rate(2, 10))))
    step = sim.submit(*(spec(f"{k}{i}", key=k) for k in "AB" for i in range(4)))
    assert sorted(started(step)) == ["A0", "A1", "B0", "B1"]
    assert len(step.counted_starts) == 4
    for run_id in ("A0", "A1", "B0", "B1"):
        assert started(sim.finish(run_id)) == []  # the slots are free, the rate is not
    assert sim.stats() == (4, 0, 0, 0)
    assert sim.engine.next_deadline() == T0 + 10
    assert started(sim.tick(T0 + 9.9)) == []
    assert sorted(started(sim.tick(T0 + 10))) == ["A2", "A3", "B2", "B3"]


def test_engine__a_held_run_is_queued_holds_no_slot_and_other_queues_go_on() -> None:
    sim = Sim(limited(q=QueueLimit(rate=Rate(1, 60))))
    sim.submit(spec("a", queue="q"), spec("b", queue="q"))
    assert sim.engine.state_of("b") is QUEUED
    assert sim.engine.limits.running == 1
    assert started(sim.submit(spec("c", queue="other"))) == ["c"]


def test_engine__without_keys_the_rate_is_the_queues() -> None:
    sim = Sim(limited(q=QueueLimit(rate=Rate(3, 60))))
    step = sim.submit(*(spec(f"r{i}") for i in range(5)))
    assert started(step) == ["r0", "r1", "r2"]


def test_engine__a_total_rate_caps_the_queue_over_every_key() -> None:
    """rate_limit_total 3 per 10 s over keys that have no rate of their own."""
    sim = Sim(limited(q=QueueLimit(total_rate=Rate(3, 10))))
    step = sim.submit(*(spec(f"{k}{i}", key=k) for k in "ABCD" for i in range(2)))
    assert len(started(step)) == 3
    assert sim.engine.next_deadline() == T0 + 10
    assert len(started(sim.tick(T0 + 10))) == 3


def test_engine__a_key_can_have_its_own_rate_or_none() -> None:
    """A paying key lifts the queue's rate; another gets a tighter one."""
    engine = limited()
    engine.configure_limits(
        {"q": (QueueLimit(rate=Rate(2, 60)), False)},
        {
            ("q", "vip"): KeyRule(own_rate=True),  # its own rate: none
            ("q", "slow"): KeyRule(rate=Rate(1, 3600), own_rate=True),
            ("q", "free"): KeyRule(limit=5),  # a limit of its own, the queue's rate
        },
    )
    sim = Sim(engine)
    keys = ("vip", "slow", "free")
    step = sim.submit(*(spec(f"{k}{i}", key=k) for k in keys for i in range(3)))
    assert sorted(started(step)) == ["free0", "free1", "slow0", "vip0", "vip1", "vip2"]
    assert sim.engine.next_deadline() == T0 + 60
    assert started(sim.tick(T0 + 60)) == ["free2"]


def test_engine__a_retry_counts_as_a_start() -> None:
    """The second attempt of a failed run waits for the window, not only its backoff."""
    policy = TaskPolicy(retry=Retry(backoff="fixed", min_delay=1, jitter=0))
    limits = Limits()
    limits.set_queue("q", QueueLimit(rate=Rate(1, 30)))
    sim = Sim(Engine(limits, {"t": policy}))
    sim.submit(spec("r"))
    sim.finish("r", Failed(BOOM))
    assert started(sim.tick(T0 + 1)) == []  # backoff over, window not
    assert sim.engine.next_deadline() == T0 + 30
    assert started(sim.tick(T0 + 30)) == ["r"]


def test_engine__lifting_a_rate_starts_what_it_held_at_once() -> None:
    sim = Sim(limited(q=QueueLimit(rate=Rate(1, 3600))))
    sim.submit(spec("a"), spec("b"))
    sim.engine.configure_limits({"q": (QueueLimit(), False)}, {})
    assert started(sim.tick()) == ["b"]


def test_engine__after_a_restart_the_window_is_as_full_as_before() -> None:
    """Starts read back from the store hold new runs: a restart grants no fresh burst."""
    sim = Sim(limited(q=QueueLimit(rate=Rate(2, 60))))
    recovery.remember_starts(
        sim.engine, [CountedStart("q", "A", T0 - 50), CountedStart("q", "A", T0 - 10)]
    )
    step = sim.submit(spec("a1", key="A"), spec("b1", key="B"))
    assert started(step) == ["b1"]
    assert sim.engine.next_deadline() == T0 + 10  # 60 s after the older of the two
    assert started(sim.tick(T0 + 10)) == ["a1"]


def test_engine__a_rate_never_lets_acquire_past_it() -> None:
    """The second check: acquire refuses a start the rate does not allow."""
    limits = Limits()
    limits.set_queue("q", QueueLimit(rate=Rate(1, 10)))
    limits.advance(T0)
    assert limits.acquire("a", "q", None) is True
    with pytest.raises(SlotError, match="at its rate"):
        limits.acquire("b", "q", None)
    assert limits.running == 1
    assert not limits.holds("b")


def test_engine__no_timer_is_left_when_nothing_waits() -> None:
    sim = Sim(limited(q=QueueLimit(rate=Rate(1, 60))))
    sim.submit(spec("a"), spec("b"))
    sim.engine.cancel("b", sim.now)
    sim.finish("a")
    assert sim.engine.next_deadline() is None
    assert len(sim.engine) == 0


def test_engine__a_longer_window_set_later_holds_and_then_starts_the_run() -> None:
    """Found by the property test: the log of the old, shorter window must not be
    forgotten while the new window still counts its start."""
    sim = Sim(limited(q=QueueLimit(rate=Rate(1, 2))))
    sim.submit(spec("a"), spec("b"))
    sim.engine.configure_limits({"q": (QueueLimit(rate=Rate(1, 5)), False)}, {})
    assert started(sim.tick()) == []
    assert started(sim.tick(T0 + 3)) == []  # the old window is over, the new one is not
    assert sim.engine.next_deadline() == T0 + 5
    assert started(sim.tick(T0 + 5)) == ["b"]
