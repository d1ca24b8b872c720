"""The Celery app: Redis as broker and result store, and delivery settings that never lose a task.

A task is acknowledged only after it finishes (``acks_late``) and is handed back to the
queue if its worker dies (``task_reject_on_worker_lost``), so every task must be idempotent.
Workers take one task at a time from the broker, since a task can run for minutes.
Beat runs each study's discovery on the schedule from the settings (worker/schedule.py).
"""

from __future__ import annotations

import logging

from celery import Celery

from fhir_match.config import load_settings
from worker.schedule import beat_schedule

__all__ = ["app"]

_settings = load_settings()

# httpx logs every request's full URL at INFO, and a search URL names patients.
logging.getLogger("httpx").setLevel(logging.WARNING)

app = Celery(
    "fhir_match",
    broker=_settings.redis_url,
    backend=_settings.redis_url,
    include=["worker.tasks"],
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_expires=7 * 24 * 3600,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    timezone="UTC",
    task_default_queue=_settings.queue,
    beat_schedule=beat_schedule(_settings),
)
