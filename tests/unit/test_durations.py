"""Human durations: parsing what users type (30s, 5m, 2h, 7d) and printing them back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyq.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7_200.0),
        ("24h", 86_400.0),
        ("7d", 604_800.0),
        ("1w", 604_800.0),
        ("1.5h", 5_400.0),
        ("1h30m", 5_400.0),
        ("1d2h3m4s", 93_784.0),
        (" 5m ", 300.0),
        (timedelta(minutes=5), 300.0),
        (timedelta(milliseconds=1500), 1.5),
    ],
)
def test_parse_duration__accepts_seconds_units_and_timedeltas(
    value: object, seconds: float
) -> None:
    """Numbers are seconds; strings may use ms/s/m/h/d/w, combined; timedeltas are converted."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "soon", "5 m", "5M", "5x", "m", "-5s", "5m-", "1h 30m", "1,5h", None, [5], True, False],
)
def test_parse_duration__refuses_what_is_not_a_duration(value: object) -> None:
    """Text that is not a duration, and non-numbers, raise ValueError naming the field."""
    with pytest.raises(ValueError, match=r"^retention\.completed: ") as info:
        parse_duration(value, field="retention.completed")
    assert repr(value.strip() if isinstance(value, str) else value) in str(info.value)


@pytest.mark.parametrize("value", [-1, -0.5, "-3", timedelta(seconds=-1), "nan", "inf", 1e400])
def test_parse_duration__refuses_negative_and_non_finite(value: object) -> None:
    """A duration must be a finite number of seconds >= 0."""
    with pytest.raises(ValueError, match=r"^delay: must be a finite duration >= 0"):
        parse_duration(value, field="delay")


def test_parse_duration__default_field_name() -> None:
    """Without a field name the message still says what was expected."""
    with pytest.raises(ValueError, match=r"^duration: "):
        parse_duration("later")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.85, "850ms"),
        (4.5, "4.5s"),
        (12, "12s"),
        (59, "59s"),
        (60, "1m00s"),
        (245, "4m05s"),
        (3_600, "1h00m"),
        (12_000, "3h20m"),
        (47 * 3_600, "47h00m"),
        (2 * 86_400 + 4 * 3_600, "2d4h"),
    ],
)
def test_format_duration__short_human_form(seconds: float, text: str) -> None:
    """Durations print compactly, with the unit that a reader expects at each scale."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["850ms", "12s", "4m05s", "3h20m", "2d4h"])
def test_format_duration__round_trips_through_parse(text: str) -> None:
    """What keyq prints as a duration, keyq also accepts as one."""
    assert format_duration(parse_duration(text)) == text
