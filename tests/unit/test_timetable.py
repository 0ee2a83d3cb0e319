"""The timetable: which due ticks fire, by misfire policy, without I/O."""

from __future__ import annotations

import pytest

from keyq.cadence import Every
from keyq.core.timetable import GRACE_S, Entry, Fire, Timetable

MINUTE = Every(60.0)


def table(misfire: str = "latest", since: float = 0.0, max_catch_up: int = 100) -> Timetable:
    t = Timetable()
    entry = Entry("s", MINUTE.next_after, MINUTE.at_or_before, misfire, max_catch_up, since)
    t.configure([entry])
    return t


def fired(t: Timetable, now: float) -> list[float]:
    return [f.tick for f in t.due(now)]


def test_on_time__each_tick_fires_once_whatever_the_policy() -> None:
    for misfire in ("latest", "all", "skip"):
        t = table(misfire)
        assert t.next_deadline() == 60.0
        assert fired(t, 59.9) == []
        assert fired(t, 60.0) == [60.0]
        assert fired(t, 60.5) == []  # claimed: never again
        assert fired(t, 120.2) == [120.0]


def test_missed__latest_fires_one_run_for_the_latest_missed_tick() -> None:
    t = table("latest")
    assert fired(t, 10 * 60 + 5 * 60 + 30) == [15 * 60.0]
    assert t.next_deadline() == 16 * 60.0


def test_missed__all_fires_each_missed_tick_oldest_first() -> None:
    t = table("all")
    assert fired(t, 5 * 60 + 1) == [60.0, 120.0, 180.0, 240.0, 300.0]


def test_missed__all_keeps_the_most_recent_max_catch_up() -> None:
    t = table("all", max_catch_up=3)
    assert fired(t, 10 * 60 + 1) == [420.0, 480.0, 540.0, 600.0]  # 3 missed, then on time


def test_missed__skip_fires_only_an_on_time_tick() -> None:
    t = table("skip")
    assert fired(t, 5 * 60 + 1) == [300.0]  # 300 is 1 s late: on time; 60..240 skipped
    hourly = Every(3600.0)
    t = Timetable()
    t.configure([Entry("h", hourly.next_after, hourly.at_or_before, "skip")])
    assert fired(t, 2 * 3600 + GRACE_S) == []  # a minute late: missed too
    assert fired(t, 3 * 3600) == [3 * 3600.0]


def test_fires_carry_the_previous_claimed_tick() -> None:
    t = table("all")
    assert t.due(3 * 60 + 1) == [
        Fire("s", 60.0, None),
        Fire("s", 120.0, 60.0),
        Fire("s", 180.0, 120.0),
    ]


def test_since__ticks_before_it_are_not_due() -> None:
    t = table("all", since=600.0)
    assert fired(t, 630.0) == []
    assert fired(t, 660.0) == [660.0]


def test_paused__never_armed() -> None:
    t = Timetable()
    t.configure([Entry("s", MINUTE.next_after, MINUTE.at_or_before, paused=True)])
    assert t.next_deadline() is None
    assert fired(t, 10_000.0) == []


def test_refused__a_tick_not_stored_fires_again() -> None:
    t = table()
    (fire,) = t.due(60.0)
    t.refused(fire)
    assert fired(t, 60.1) == [60.0]


@pytest.mark.parametrize("n", [1, 100, 10_000])
def test_many_schedules__only_due_ones_are_looked_at(n: int) -> None:
    """10,000 schedules: a tick between their deadlines pops nothing."""
    t = Timetable()
    t.configure(
        Entry(f"s{i}", Every(60.0 + i).next_after, Every(60.0 + i).at_or_before) for i in range(n)
    )
    assert t.due(59.0) == []
    assert [f.schedule_id for f in t.due(60.0)] == ["s0"]
    assert len(t) == n
