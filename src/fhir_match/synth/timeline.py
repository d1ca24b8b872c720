"""Dates as FHIR records write them, and the span of days a partial date stands for."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

__all__ = ["TIME_ZONE", "age_at", "iso", "shift", "span", "stamp", "years_before"]

TIME_ZONE = "+08:00"
"""Every timestamp carries the same offset, so "the latest by time" and "the date as written"
never depend on a time-zone conversion."""


def iso(day: date) -> str:
    return day.isoformat()


def shift(day: date, days: int) -> date:
    return day + timedelta(days=days)


def stamp(day: date, minute: int) -> str:
    """A dateTime on ``day`` at ``minute`` past midnight, with seconds and offset (so that it is
    also a valid instant)."""
    return f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{TIME_ZONE}"


def span(text: str) -> tuple[date, date]:
    """The first and last day a FHIR date or dateTime may mean: ``2019`` is the whole year,
    ``2019-04`` the whole month, a full date (or a dateTime, read as written) one day."""
    head = text[:10]
    if len(head) == 4:
        year = int(head)
        return date(year, 1, 1), date(year, 12, 31)
    if len(head) == 7:
        year, month = int(head[:4]), int(head[5:7])
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    day = date.fromisoformat(head)
    return day, day


def years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` earlier (28 February for a 29 February that does not
    exist)."""
    year = day.year - years
    if day.month == 2 and day.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return day.replace(year=year)


def age_at(birth: date, day: date) -> int:
    """Whole years: the birthday counts on the day itself."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
