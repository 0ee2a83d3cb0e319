"""Cadences: cron fields by croniter, wall times placed by keyq's DST rule, intervals."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

import keyq
from keyq.cadence import Cron, Every, parse_every

PARIS = ZoneInfo("Europe/Paris")


def local(*parts: int) -> float:
    return datetime(*parts, tzinfo=PARIS).timestamp()  # type: ignore[misc]


def ticks(cadence: Cron | Every, start: float, n: int) -> list[float]:
    out, t = [], start
    for _ in range(n):
        t = cadence.next_after(t)
        out.append(t)
    return out


def test_cron__spring_forward_a_missing_wall_time_fires_once_at_the_gap_end() -> None:
    """02:30 does not exist in Paris on 2026-03-29: it fires at 03:00 CEST, once."""
    got = ticks(Cron("30 2 * * *", "Europe/Paris"), local(2026, 3, 28, 12, 0), 3)
    assert got == [local(2026, 3, 29, 3, 0), local(2026, 3, 30, 2, 30), local(2026, 3, 31, 2, 30)]


def test_cron__several_missing_wall_times_fire_once_together() -> None:
    got = ticks(Cron("*/20 * * * *", "Europe/Paris"), local(2026, 3, 29, 1, 30), 4)
    assert got == [local(2026, 3, 29, h, m) for h, m in ((1, 40), (3, 0), (3, 20), (3, 40))]


def test_cron__fall_back_a_repeated_wall_time_fires_once() -> None:
    """02:30 happens twice in Paris on 2026-10-25: it fires at the first, only."""
    cron = Cron("30 2 * * *", "Europe/Paris")
    got = ticks(cron, local(2026, 10, 24, 12, 0), 2)
    first_0230 = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=0).timestamp()
    assert got == [first_0230, local(2026, 10, 26, 2, 30)]
    assert got[1] - got[0] == 25 * 3600  # that day has 25 hours


def test_cron__a_repeated_hour_is_not_fired_twice() -> None:
    cron = Cron("0 * * * *", "Europe/Paris")
    got = ticks(cron, local(2026, 10, 25, 0, 30), 3)
    # 01:00, 02:00 (first), then 03:00: the second 02:00 does not fire
    assert [g - got[0] for g in got] == [0, 3600, 3 * 3600]


def test_cron__six_fields_take_a_leading_seconds_field() -> None:
    assert ticks(Cron("*/10 * * * * *"), 1_000_000.0, 3) == [1_000_010.0, 1_000_020.0, 1_000_030.0]


def test_cron__at_or_before_is_the_latest_tick() -> None:
    cron = Cron("*/5 * * * *")
    assert cron.at_or_before(600.0) == 600.0
    assert cron.at_or_before(899.0) == 600.0


def test_every__is_aligned_to_the_epoch() -> None:
    every = parse_every("30s")
    assert every.next_after(100.0) == 120.0
    assert every.next_after(120.0) == 150.0
    assert every.at_or_before(149.9) == 120.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "schedule 's': cron: '61 * * * *' is not a valid cron expression"),
        ({"cron": "* * * *"}, "cron: '* * * *' has 4 fields"),
        ({"cron": "* * * * * * *"}, "has 7 fields"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "every": "5s"}, "give one, not both"),
        ({}, "give cron"),
        ({"every": "0.5s"}, "every: must be at least 1s"),
        ({"every": "soon"}, "every: 'soon' is not a duration"),
        ({"every": "1m", "misfire": "twice"}, "misfire: expected one of latest, all, skip"),
        ({"every": "1m", "max_catch_up": 0}, "max_catch_up must be from 1"),
        ({"every": "1m", "payload": {1, 2}}, "payload"),
    ],
)
def test_schedule__a_bad_definition_names_the_field_and_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(keyq.DefinitionError, match="schedule 's'") as info:
        keyq.Schedule("s", **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_task__cron_and_schedules_register_schedules(registry: keyq.Registry) -> None:
    hourly = keyq.Schedule("report-hourly", every="1h", payload={"k": 1})

    @registry.task(id="report", cron="0 3 * * *", tz="Europe/Paris", schedules=[hourly])
    async def report(payload: object, ctx: keyq.Context) -> None: ...

    assert sorted(registry.schedules) == ["report", "report-hourly"]
    assert {s.task for s in registry.schedules.values()} == {"report"}
    with pytest.raises(keyq.DefinitionError, match="tz: unknown time zone"):
        registry.task(id="bad", cron="0 3 * * *", tz="Nowhere/Atall")(report.fn)


def test_config__schedules_tables_are_checked_by_key() -> None:
    config = keyq.parse_config(
        '[[schedules]]\nid = "nightly"\ntask = "report"\ncron = "0 3 * * *"\n'
        'tz = "Europe/Paris"\npayload = {kind = "daily"}\nmisfire = "all"\n'
    )
    (nightly,) = config.schedules
    assert (nightly.task, nightly.payload, nightly.misfire) == ("report", {"kind": "daily"}, "all")
    with pytest.raises(
        keyq.ConfigError, match=r"schedules\[0\]: schedule 'x': cron: '99 \* \* \* \*'"
    ):
        keyq.parse_config('[[schedules]]\nid = "x"\ntask = "t"\ncron = "99 * * * *"\n')
    with pytest.raises(keyq.ConfigError, match=r"schedules\[0\]\.task: required"):
        keyq.parse_config('[[schedules]]\nid = "x"\nevery = "1m"\n')
    with pytest.raises(keyq.ConfigError, match=r"schedules\[0\]\.when: unknown key"):
        keyq.parse_config('[[schedules]]\nid = "x"\ntask = "t"\nwhen = "now"\n')
