"""The beat schedule: one discovery run per configured study, when FHIR_MATCH_SCHEDULE says,
and the watchdog every FHIR_MATCH_WATCH_SECONDS."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from fhir_match.config import Settings
from fhir_match.evaluate.study import configured_studies

__all__ = ["beat_schedule"]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries for Celery beat: every study (or those FHIR_MATCH_STUDIES names) on the
    cron schedule, in ``auto`` mode (incremental, with a periodic full run), restricted to
    FHIR_MATCH_TAG's resources when it is set."""
    minute, hour, day_of_month, month_of_year, day_of_week = settings.schedule.split()
    when = crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )
    runs: dict[str, dict[str, Any]] = {
        f"discover-{study}": {
            "task": "worker.tasks.discover",
            "schedule": when,
            "kwargs": {"study_id": study, "mode": "auto", "tag": settings.tag},
        }
        for study in settings.studies or configured_studies()
    }
    watchdog = {
        "task": "worker.tasks.watch_runs",
        "schedule": settings.watch_every_s,
        "options": {"expires": settings.watch_every_s},
    }
    return {**runs, "watch-runs": watchdog}
