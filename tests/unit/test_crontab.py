"""Crontab expressions (UTC) read into arq's sets, and their next runs as arq reckons them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.crontab import CrontabError, parse_crontab

MON = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def at(day: datetime, hour: int, minute: int) -> datetime:
    """arq's run times carry its microsecond, 123456."""
    return day.replace(hour=hour, minute=minute, second=0, microsecond=123456)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("* * * * *", {}),
        ("5 * * * *", {"minute": {5}}),
        ("0,30 9-11 * * *", {"minute": {0, 30}, "hour": {9, 10, 11}}),
        ("*/15 * * * *", {"minute": {0, 15, 30, 45}}),
        ("10-40/10 * * * *", {"minute": {10, 20, 30, 40}}),
        ("50/5 */6 * * *", {"minute": {50, 55}, "hour": {0, 6, 12, 18}}),
        ("0 0 1,15 */3 *", {"minute": {0}, "hour": {0}, "day": {1, 15}, "month": {1, 4, 7, 10}}),
        # crontab: Sunday is 0 or 7, Monday 1; arq: Monday 0, Sunday 6.
        ("0 2 * * 1-5", {"minute": {0}, "hour": {2}, "weekday": {0, 1, 2, 3, 4}}),
        ("0 2 * * 0", {"minute": {0}, "hour": {2}, "weekday": {6}}),
        ("0 2 * * 7,6", {"minute": {0}, "hour": {2}, "weekday": {5, 6}}),
        ("0 2 * * */2", {"minute": {0}, "hour": {2}, "weekday": {6, 1, 3, 5}}),
    ],
)
def test_fields_become_arqs_sets(text: str, fields: dict[str, set[int]]) -> None:
    expected = dict.fromkeys(("month", "day", "weekday", "hour", "minute")) | fields
    assert parse_crontab(text).arq_options() == expected


def test_the_text_is_kept_with_single_spaces() -> None:
    assert parse_crontab("  5   *  * * * ").text == "5 * * * *"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * *", "5 fields expected (minute hour day-of-month month day-of-week), got 4"),
        ("0 0 0 0 0 0", "5 fields expected (minute hour day-of-month month day-of-week), got 6"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("x * * * *", "minute: 'x' is not a number (in 'x')"),
        ("1,,2 * * * *", "minute: '' is not a number (in '')"),
        ("* * * * mon", "day-of-week: 'mon' is not a number (in 'mon')"),
        ("-1 * * * *", "minute: '' is not a number (in '-1')"),
        ("*/0 * * * *", "minute: step 0 in '*/0'"),
        ("*/x * * * *", "minute: 'x' is not a number (in '*/x')"),
        ("30-10 * * * *", "minute: range 30-10 runs backwards"),
        (
            "0 0 1 * 1",
            "day-of-month and day-of-week are both restricted: crontab would run on either, "
            "arq only on days matching both; restrict one of them",
        ),
        ("0 0 30 2 *", "day-of-month 30 never falls in month 2"),
        ("0 0 31 4,6,9,11 *", "day-of-month 31 never falls in month 4,6,9,11"),
    ],
)
def test_bad_expressions_say_which_field_and_why(text: str, message: str) -> None:
    with pytest.raises(CrontabError) as caught:
        parse_crontab(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("5 * * * *", at(MON, 10, 0), at(MON, 10, 5)),
        ("5 * * * *", at(MON, 10, 5), at(MON, 11, 5)),  # strictly after now
        ("5 * * * *", at(MON, 23, 30), at(MON + timedelta(days=1), 0, 5)),
        ("*/15 * * * *", at(MON, 10, 16), at(MON, 10, 30)),
        ("0 2 * * *", at(MON, 2, 0) + timedelta(seconds=1), at(MON + timedelta(days=1), 2, 0)),
        # Saturday noon, weekdays at 09:00: Monday.
        ("0 9 * * 1-5", at(MON - timedelta(days=2), 12, 0), at(MON, 9, 0)),
        ("0 9 * * 0", at(MON, 12, 0), at(MON + timedelta(days=6), 9, 0)),
        ("0 0 1 * *", at(MON, 12, 0), datetime(2026, 12, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("0 0 29 2 *", at(MON, 0, 0), datetime(2028, 2, 29, 0, 0, 0, 123456, tzinfo=UTC)),
        ("30 23 31 12 *", at(MON, 0, 0), datetime(2026, 12, 31, 23, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_next_run_in_utc(text: str, now: datetime, expected: datetime) -> None:
    assert parse_crontab(text).next_run(now) == expected


def test_next_run_reads_now_in_utc_whatever_its_zone() -> None:
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 11, 23, 2, 30, tzinfo=paris)  # 01:30 UTC
    assert parse_crontab("0 2 * * *").next_run(now) == at(MON, 2, 0)
    assert parse_crontab("0 2 * * *").next_run(now).tzinfo == UTC


def test_a_second_of_the_minute() -> None:
    assert parse_crontab("0 2 * * *").next_run(at(MON, 1, 0), second=30) == at(MON, 2, 0).replace(
        second=30
    )
