"""Crontab expressions in UTC, read into the sets arq's `cron()` takes.

Five fields, `minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`, a
step `*/n` or `a-b/n`, or a comma-separated list of those. Day of week 0 (or 7) is Sunday, as in
crontab; arq counts from Monday, which `arq_options()` converts to. Next runs are reckoned by
arq's own `next_cron`, so what `etl schedules` shows is when the worker enqueues.

crontab runs a job when *either* a restricted day of month or a restricted day of week matches,
while arq needs both: an expression restricting both (neither field starting with `*`) is refused
rather than run on other days than it says.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime

from arq.cron import next_cron

# name, lowest, highest value accepted; `*` spans lowest..highest (day of week: 0-6).
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_LEAP_YEAR = 2000  # days_in(2, _LEAP_YEAR) is 29: a Feb 29 schedule runs every leap year


class CrontabError(ValueError):
    """A crontab expression that cannot be read; the text says which field and why."""


@dataclass(frozen=True, slots=True)
class Crontab:
    """A parsed expression: each field's values, or None where the field is `*`."""

    text: str
    minute: frozenset[int] | None
    hour: frozenset[int] | None
    day: frozenset[int] | None
    month: frozenset[int] | None
    weekday: frozenset[int] | None
    """Crontab's numbering: 0 is Sunday (a 7 is read as 0)."""

    def arq_options(self) -> dict[str, set[int] | None]:
        """Keyword arguments for arq's `cron()` and `next_cron()` (weekday: Monday is 0)."""
        weekday = None if self.weekday is None else {(day - 1) % 7 for day in self.weekday}
        return {
            "month": _plain(self.month),
            "day": _plain(self.day),
            "weekday": weekday,
            "hour": _plain(self.hour),
            "minute": _plain(self.minute),
        }

    def next_run(self, now: datetime, *, second: int = 0) -> datetime:
        """The first run after `now`, in UTC, as arq reckons it (arq's microsecond included)."""
        return next_cron(now.astimezone(UTC), **self.arq_options(), second=second)  # type: ignore[arg-type]


def _plain(values: frozenset[int] | None) -> set[int] | None:
    # arq accepts a set, list or tuple, not a frozenset.
    return None if values is None else set(values)


def parse_crontab(text: str) -> Crontab:
    """`text` read as a five-field expression; CrontabError naming the field otherwise."""
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise CrontabError(
            f"{len(_FIELDS)} fields expected (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    values = [
        _parse_field(part, name=name, low=low, high=high)
        for part, (name, low, high) in zip(parts, _FIELDS, strict=True)
    ]
    minute, hour, day, month, weekday = values
    if weekday is not None:
        weekday = frozenset(value % 7 for value in weekday)
    if not parts[2].startswith("*") and not parts[4].startswith("*"):
        raise CrontabError(
            "day-of-month and day-of-week are both restricted: crontab would run on either, "
            "arq only on days matching both; restrict one of them"
        )
    if day is not None and not _some_date(day, month):
        raise CrontabError(f"day-of-month {parts[2]} never falls in month {parts[3]}")
    return Crontab(
        text=" ".join(parts), minute=minute, hour=hour, day=day, month=month, weekday=weekday
    )


def _some_date(days: frozenset[int], months: frozenset[int] | None) -> bool:
    return any(
        day <= calendar.monthrange(_LEAP_YEAR, month)[1]
        for month in (months or range(1, 13))
        for day in days
    )


def _parse_field(text: str, *, name: str, low: int, high: int) -> frozenset[int] | None:
    """One field's values, or None for `*`."""
    if text == "*":
        return None
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(item, name=name, low=low, high=high)
    return frozenset(values)


def _parse_item(item: str, *, name: str, low: int, high: int) -> set[int]:
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step = _number(step_text, name=name, item=item)
        if step == 0:
            raise CrontabError(f"{name}: step 0 in {item!r}")
    if span == "*":
        # Day of week: `*` is Sunday to Saturday; 7 is only another name for Sunday.
        first, last = low, min(high, 6) if name == "day-of-week" else high
    elif "-" in span:
        start, _, end = span.partition("-")
        first, last = _number(start, name=name, item=item), _number(end, name=name, item=item)
        if first > last:
            raise CrontabError(f"{name}: range {span} runs backwards")
    else:
        first = last = _number(span, name=name, item=item)
        if slash:
            last = high  # `5/15`: from 5 on, as cron reads it
    for value in (first, last):
        if not low <= value <= high:
            raise CrontabError(f"{name}: {value} is out of range {low}-{high}")
    return set(range(first, last + 1, step))


def _number(text: str, *, name: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CrontabError(f"{name}: {text!r} is not a number (in {item!r})")
    return int(text)
