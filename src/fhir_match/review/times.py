"""Times as the site reads them: every instant in the review pages shown in one time zone
(FHIR_MATCH_TIME_ZONE), in one format, whatever offset the record or the server wrote."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

__all__ = ["shown_time"]


def shown_time(value: str, zone: ZoneInfo) -> str:
    """A FHIR date, dateTime or instant for display: one with a time and an offset as
    "2026-05-01 08:30 CST" in ``zone``; a date alone (it has no zone) as written; anything
    else (no offset, not a date) as written, so the reviewer sees what the record holds."""
    if "T" not in value:
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"
