"""Deadlines: the heap behind delays, backoff, wait deadlines and max_duration."""

from __future__ import annotations

from keyq.core.timers import Deadlines

T0 = 1_234_567_890.25


def test_timers__empty_has_no_deadline() -> None:
    """With nothing scheduled there is nothing to wake up for."""
    d: Deadlines[str] = Deadlines()
    assert d.next_deadline() is None
    assert d.pop_due(T0 + 1e9) == []
    assert len(d) == 0


def test_timers__pop_due_returns_earliest_first() -> None:
    """Due keys come out in deadline order, whatever the push order."""
    d: Deadlines[str] = Deadlines()
    d.push("c", T0 + 3)
    d.push("a", T0 + 1)
    d.push("b", T0 + 2)
    assert d.next_deadline() == T0 + 1
    assert d.pop_due(T0 + 10) == ["a", "b", "c"]
    assert len(d) == 0


def test_timers__equal_deadlines_pop_in_push_order() -> None:
    """Keys sharing one instant come out first-pushed first."""
    d: Deadlines[str] = Deadlines()
    for key in ["x", "y", "z"]:
        d.push(key, T0)
    assert d.pop_due(T0) == ["x", "y", "z"]


def test_timers__deadline_equal_to_now_is_due() -> None:
    """A deadline at exactly `now` fires; one an instant later does not."""
    d: Deadlines[str] = Deadlines()
    d.push("now", T0 + 5)
    d.push("later", T0 + 5.001)
    assert d.pop_due(T0 + 4.999) == []
    assert d.pop_due(T0 + 5) == ["now"]
    assert d.next_deadline() == T0 + 5.001
    assert "later" in d
    assert "now" not in d


def test_timers__push_replaces_existing_deadline() -> None:
    """Pushing a key again moves its deadline instead of adding a second one."""
    d: Deadlines[str] = Deadlines()
    d.push("a", T0 + 1)
    d.push("a", T0 + 10)
    assert len(d) == 1
    assert d.next_deadline() == T0 + 10
    assert d.pop_due(T0 + 5) == []
    assert d.pop_due(T0 + 10) == ["a"]
    assert d.pop_due(T0 + 100) == []


def test_timers__push_can_move_deadline_earlier() -> None:
    """Replacing with an earlier instant fires at the earlier instant, once."""
    d: Deadlines[str] = Deadlines()
    d.push("a", T0 + 10)
    d.push("a", T0 + 1)
    assert d.pop_due(T0 + 1) == ["a"]
    assert d.pop_due(T0 + 10) == []
    assert d.next_deadline() is None


def test_timers__cancel_forgets_the_key() -> None:
    """A cancelled deadline never fires."""
    d: Deadlines[str] = Deadlines()
    d.push("a", T0 + 1)
    d.push("b", T0 + 2)
    d.cancel("a")
    assert "a" not in d
    assert len(d) == 1
    assert d.pop_due(T0 + 10) == ["b"]


def test_timers__cancel_unknown_key_is_a_no_op() -> None:
    """Cancelling a key that has no deadline (or already fired) does nothing."""
    d: Deadlines[str] = Deadlines()
    d.cancel("ghost")
    d.push("a", T0)
    assert d.pop_due(T0) == ["a"]
    d.cancel("a")
    assert len(d) == 0
    assert d.next_deadline() is None


def test_timers__next_deadline_skips_cancelled_entries() -> None:
    """After cancels, the next deadline is the earliest live one."""
    d: Deadlines[str] = Deadlines()
    for i in range(5):
        d.push(f"k{i}", T0 + i)
    d.cancel("k0")
    d.cancel("k1")
    d.cancel("k3")
    assert d.next_deadline() == T0 + 2
    assert d.pop_due(T0 + 2) == ["k2"]
    assert d.next_deadline() == T0 + 4
    d.cancel("k4")
    assert d.next_deadline() is None


def test_timers__cancel_then_push_again_fires_once() -> None:
    """A key cancelled and rescheduled fires at its new time, exactly once."""
    d: Deadlines[str] = Deadlines()
    d.push("a", T0 + 1)
    d.cancel("a")
    d.push("a", T0 + 3)
    assert d.pop_due(T0 + 2) == []
    assert d.pop_due(T0 + 3) == ["a"]
    assert d.pop_due(T0 + 3) == []


def test_timers__many_replacements_keep_one_live_entry() -> None:
    """Rescheduling one key thousands of times leaves one deadline, the last one."""
    d: Deadlines[str] = Deadlines()
    for i in range(5_000):
        d.push("a", T0 + 5_000 - i)
    assert len(d) == 1
    assert d.next_deadline() == T0 + 1
    assert d.pop_due(T0 + 10_000) == ["a"]
