"""Cron expressions (storeml.models.schedule, computed by croniter): next runs, the Vixie rules
where croniter reads an expression otherwise, and the errors.

Expected times are worked out by hand from the calendar (2024-05-01 is a Wednesday); several
cases are ones croniter alone gets wrong, and say so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storeml.errors import ConfigError
from storeml.models.schedule import CronSchedule, next_run, parse_cron

WED = datetime(2024, 5, 1, 10, 3)  # Wednesday 1 May 2024, 10:03


def _d(day: str, clock: str = "00:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}")


def _runs(expression: str, after: datetime, count: int) -> list[datetime]:
    return parse_cron(expression).upcoming(after, count)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 3 * * *", [_d("2024-05-02", "03:00"), _d("2024-05-03", "03:00")]),  # daily
        ("@daily", [_d("2024-05-02"), _d("2024-05-03")]),
        ("@midnight", [_d("2024-05-02"), _d("2024-05-03")]),
        ("15 * * * *", [_d("2024-05-01", "10:15"), _d("2024-05-01", "11:15")]),  # hourly
        ("@hourly", [_d("2024-05-01", "11:00"), _d("2024-05-01", "12:00")]),
        ("30 8 * * mon", [_d("2024-05-06", "08:30"), _d("2024-05-13", "08:30")]),  # weekly
        ("@weekly", [_d("2024-05-05"), _d("2024-05-12")]),  # Sundays
        ("0 6 1 * *", [_d("2024-06-01", "06:00"), _d("2024-07-01", "06:00")]),  # monthly
        ("@monthly", [_d("2024-06-01"), _d("2024-07-01")]),
        ("@yearly", [_d("2025-01-01"), _d("2026-01-01")]),
        ("@Annually", [_d("2025-01-01"), _d("2026-01-01")]),
        (
            "*/20 9-10 * * mon-fri",
            [_d("2024-05-01", "10:20"), _d("2024-05-01", "10:40"), _d("2024-05-02", "09:00")],
        ),
        ("0 12 * JUL,jan Sun", [_d("2024-07-07", "12:00"), _d("2024-07-14", "12:00")]),
        ("0 0 1 jan-mar *", [_d("2025-01-01"), _d("2025-02-01"), _d("2025-03-01")]),
        ("0 0 1,15 */4 *", [_d("2024-05-15"), _d("2024-09-01"), _d("2024-09-15")]),
        # croniter's extensions: last day of the month, a wrapping range, nth weekday
        ("0 0 L * *", [_d("2024-05-31"), _d("2024-06-30"), _d("2024-07-31")]),
        ("0 22-1 * * *", [_d("2024-05-01", "22:00"), _d("2024-05-01", "23:00"), _d("2024-05-02")]),
        ("0 0 * * fri#2", [_d("2024-05-10"), _d("2024-06-14")]),
    ],
)
def test_known_next_runs(expression: str, expected: list[datetime]) -> None:
    assert _runs(expression, WED, len(expected)) == expected
    assert next_run(expression, WED) == expected[0]


def test_seconds_come_first_in_six_fields_and_five_fields_fire_at_second_zero() -> None:
    every_15s = parse_cron("*/15 * * * * *")
    assert every_15s.has_seconds
    assert every_15s.upcoming(_d("2024-05-01", "23:59:50"), 3) == [
        _d("2024-05-02", "00:00:00"),
        _d("2024-05-02", "00:00:15"),
        _d("2024-05-02", "00:00:30"),
    ]
    # seconds, minute, hour, day of month, month, day of week: 03:15:30 on Mondays
    assert next_run("30 15 3 * * mon", WED) == _d("2024-05-06", "03:15:30")
    assert next_run("10-12 0 0 * * *", _d("2024-05-02", "00:00:10")) == _d("2024-05-02", "00:00:11")
    assert not parse_cron("0 */5 * * * *").has_seconds  # a seconds field of 0 is five fields
    assert next_run("0 */5 * * * *", WED) == _d("2024-05-01", "10:05")
    assert not parse_cron("0 3 * * *").has_seconds
    assert next_run("0 3 * * *", _d("2024-05-01", "02:59:30")) == _d("2024-05-01", "03:00:00")


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # the 13th or any Friday
    assert _runs("0 0 13 * fri", WED, 4) == [
        _d("2024-05-03"),
        _d("2024-05-10"),
        _d("2024-05-13"),
        _d("2024-05-17"),
    ]
    # with seconds too
    assert _runs("0 0 0 13 * fri", WED, 3) == [_d("2024-05-03"), _d("2024-05-10"), _d("2024-05-13")]
    # a field covering every day makes the OR every day (croniter alone ANDs '5,*' with 'mon')
    assert _runs("0 0 5,* * mon", WED, 2) == [_d("2024-05-02"), _d("2024-05-03")]
    # the 30th of February never comes, Mondays in February do (croniter < 6.3 finds nothing)
    assert _runs("0 0 30 2 mon", WED, 2) == [_d("2025-02-03"), _d("2025-02-10")]


def test_a_day_field_starting_with_a_star_is_unrestricted_so_the_two_are_anded() -> None:
    # odd days that are Fridays (croniter's default would be every odd day and every Friday)
    assert _runs("0 0 */2 * fri", WED, 3) == [_d("2024-05-03"), _d("2024-05-17"), _d("2024-05-31")]
    # the 13th on a Sunday, Tuesday, Thursday or Saturday
    assert _runs("0 0 13 * */2", WED, 2) == [_d("2024-06-13"), _d("2024-07-13")]
    # '?' is croniter's "no value": Mondays
    assert _runs("0 0 ? * mon", WED, 2) == [_d("2024-05-06"), _d("2024-05-13")]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 * * 7", [_d("2024-05-05"), _d("2024-05-12")]),
        ("0 0 0 * * 7", [_d("2024-05-05"), _d("2024-05-12")]),  # croniter refuses 7 here
        ("0 0 * * 5-7", [_d("2024-05-03"), _d("2024-05-04"), _d("2024-05-05"), _d("2024-05-10")]),
        ("0 0 0 * * 6-7", [_d("2024-05-04"), _d("2024-05-05"), _d("2024-05-11")]),
        # Monday, Wednesday, Friday, Sunday
        (
            "0 0 0 * * 1-7/2",
            [_d("2024-05-03"), _d("2024-05-05"), _d("2024-05-06"), _d("2024-05-08")],
        ),
        # Wednesday, Friday, Sunday (croniter alone drops the Sunday)
        ("0 0 * * 3-7/2", [_d("2024-05-03"), _d("2024-05-05"), _d("2024-05-08")]),
        ("0 0 * * 7-7", [_d("2024-05-05"), _d("2024-05-12")]),
        ("0 0 * * 5/2", [_d("2024-05-03"), _d("2024-05-05"), _d("2024-05-10")]),  # 5, 7
        ("0 0 * * 0-7", [_d("2024-05-02"), _d("2024-05-03")]),
    ],
)
def test_day_of_week_7_is_sunday(expression: str, expected: list[datetime]) -> None:
    assert _runs(expression, WED, len(expected)) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # croniter reads an equal range, and a start at the field's top with a step, as every value
        ("5-5 * * * *", [_d("2024-05-01", "10:05"), _d("2024-05-01", "11:05")]),
        ("59/15 * * * *", [_d("2024-05-01", "10:59"), _d("2024-05-01", "11:59")]),
        ("0 23/6 * * *", [_d("2024-05-01", "23:00"), _d("2024-05-02", "23:00")]),
        ("0 0 1 dec/3 *", [_d("2024-12-01"), _d("2025-12-01")]),
        ("0 0 1 jun-jun/2 *", [_d("2024-06-01"), _d("2025-06-01")]),
        ("0 0 * * sat/2", [_d("2024-05-04"), _d("2024-05-11")]),
        ("0 0 * * mon-mon", [_d("2024-05-06"), _d("2024-05-13")]),
        ("59/20 0 0 * * *", [_d("2024-05-02", "00:00:59"), _d("2024-05-03", "00:00:59")]),
    ],
)
def test_single_values_croniter_would_read_as_the_whole_field(
    expression: str, expected: list[datetime]
) -> None:
    assert _runs(expression, WED, len(expected)) == expected


def test_february_29_waits_for_the_next_leap_year() -> None:
    assert _runs("0 0 29 2 *", _d("2024-03-01"), 2) == [_d("2028-02-29"), _d("2032-02-29")]
    assert next_run("0 0 29 2 *", _d("2028-02-28", "23:59:59")) == _d("2028-02-29")
    # Feb 29 that is a Sunday: 28 years after 2004
    assert next_run("0 0 29 2 */7", _d("2004-03-01")) == _d("2032-02-29")


def test_no_first_of_the_month_is_skipped_after_a_short_month() -> None:
    # croniter 5.0.1 gives Mar 11 (it jumps from Feb 22 to the "31st of February")
    assert _runs("0 0 */10 * *", _d("2025-02-22"), 4) == [
        _d("2025-03-01"),
        _d("2025-03-11"),
        _d("2025-03-21"),
        _d("2025-03-31"),
    ]
    assert next_run("0 0 1,30 * *", _d("2025-02-15")) == _d("2025-03-01")
    # the 1st or the 30th that is a Sunday: 1 Mar 2026, then 30 Aug 2026
    assert _runs("28 21 */29 * 0", _d("2026-02-01", "21:28"), 2) == [
        _d("2026-03-01", "21:28"),
        _d("2026-08-30", "21:28"),
    ]


def test_strictly_after_to_the_second() -> None:
    daily = parse_cron("0 3 * * *")
    assert daily.next_after(_d("2024-05-01", "03:00:00")) == _d("2024-05-02", "03:00")
    assert daily.next_after(datetime(2024, 5, 1, 2, 59, 59, 999999)) == _d("2024-05-01", "03:00")
    assert daily.next_after(datetime(2024, 5, 1, 3, 0, 0, 1)) == _d("2024-05-02", "03:00")
    every_5s = parse_cron("*/5 * * * * *")
    assert every_5s.next_after(_d("2024-05-01", "10:00:05")) == _d("2024-05-01", "10:00:10")
    found = every_5s.next_after(datetime(2024, 5, 1, 10, 0, 6, 500000))
    assert found == _d("2024-05-01", "10:00:10")
    assert found is not None and found.microsecond == 0


def test_naive_in_naive_out_and_aware_in_aware_out() -> None:
    daily = parse_cron("0 3 * * *")
    naive = daily.next_after(WED)
    assert naive == _d("2024-05-02", "03:00") and naive.tzinfo is None
    aware = daily.next_after(WED.replace(tzinfo=UTC))
    assert aware == datetime(2024, 5, 2, 3, 0, tzinfo=UTC) and aware.utcoffset() == timedelta(0)
    assert daily.upcoming(WED.replace(tzinfo=UTC), 2) == [
        datetime(2024, 5, 2, 3, 0, tzinfo=UTC),
        datetime(2024, 5, 3, 3, 0, tzinfo=UTC),
    ]
    assert parse_cron("@hourly").next_after(WED.replace(tzinfo=UTC)) == datetime(
        2024, 5, 1, 11, 0, tzinfo=UTC
    )


def test_the_expression_is_kept_as_written_with_whitespace_collapsed() -> None:
    schedule = parse_cron("  0   3 *  * *\t")
    assert isinstance(schedule, CronSchedule)
    assert schedule.expression == "0 3 * * *"
    assert parse_cron("@Daily").expression == "@Daily"


@pytest.mark.parametrize(
    "expression",
    ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 31 apr *", "0 0 31 2 */7", "0 0 30-31 feb *"],
)
def test_expressions_that_never_run_are_refused(expression: str) -> None:
    with pytest.raises(ConfigError, match="never runs") as caught:
        parse_cron(expression)
    assert repr(expression) in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 0 0 1 1 * 2030", "has 7 fields"),  # croniter's year field
        ("0 0 1 *", "has 4 fields"),
        ("daily", "has 1 fields"),
        ("@reboot", "not a known macro"),
    ],
)
def test_field_counts_other_than_5_or_6_are_refused(expression: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_cron(expression)


@pytest.mark.parametrize(
    ("expression", "field", "bad"),
    [
        ("61 * * * * *", "second", "61"),
        ("60 * * * *", "minute", "60"),
        ("0 25 * * *", "hour", "25"),
        ("0 0 32 * *", "day of month", "32"),
        ("0 0 0 * *", "day of month", "0"),
        ("0 0 0 0 * *", "day of month", "0"),  # croniter reads this as the 1st
        ("0 0 * 13 *", "month", "13"),
        ("0 0 * 0-5 *", "month", "0-5"),
        ("0 0 * foo *", "month", "foo"),
        ("0 0 * * 8", "day of week", "8"),
        ("*/0 * * * *", "minute", "*/0"),
        ("1,,2 * * * *", "minute", "1,,2"),
        ("0 -1 * * *", "hour", "-1"),
    ],
)
def test_a_bad_field_is_named_with_croniters_reason(expression: str, field: str, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cron(expression)
    message = str(caught.value)
    assert repr(expression) in message
    assert f"the {field} field {bad!r} is refused by croniter: " in message
    reason = message.split("is refused by croniter: ", 1)[1]
    assert reason.split(" (")[0].strip(), message  # croniter said why


@pytest.mark.parametrize("expression", ["H * * * *", "0 R * * *", "0 0 H(1-15) * *"])
def test_hashed_and_random_values_are_refused(expression: str) -> None:
    with pytest.raises(ConfigError, match=r"hashed or random value \(H, R\)"):
        parse_cron(expression)


def test_upcoming_stops_early_only_when_nothing_is_left() -> None:
    schedule = parse_cron("0 0 29 2 *")
    assert schedule.upcoming(_d("2024-03-01"), 3) == [
        _d("2028-02-29"),
        _d("2032-02-29"),
        _d("2036-02-29"),
    ]
    assert schedule.upcoming(_d("2024-03-01"), 0) == []
