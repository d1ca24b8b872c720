"""The Celery app: Redis as broker and result store, and delivery settings that never lose a task.

A task is acknowledged only after it finishes (``acks_late``) and is handed back to the
queue if its pool process dies (``task_reject_on_worker_lost``), so every task must be
idempotent. Workers take one task at a time from the broker, since a task can run for
minutes. When a whole worker dies, Redis hands its unacknowledged tasks back only after
the visibility timeout; it is set just above the longest a task may run (its time limit),
since a shorter one would hand out a task that is still running. The watchdog
(worker/watchdog.py) takes up a stalled run long before that.
Beat runs each study's discovery, and the watchdog, on the schedule from the settings
(worker/schedule.py).
"""

from __future__ import annotations

import logging

from celery import Celery

from fhir_match.config import load_settings
from worker.schedule import beat_schedule

__all__ = ["app"]

_settings = load_settings()

SOFT_SHARE = 0.9
"""A task is asked to stop (and records why) at 90% of its time limit, killed at 100%."""
BATCH_SHARE = 1 / 3
"""A batch of 100 patients gets a third of the longest task's time."""
VISIBILITY_MARGIN_S = 300
"""Beyond the time limit: at least the longest retry countdown a task waits (300 s for a
batch; the others back off 1 to 16 s)."""

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
    task_time_limit=_settings.task_time_limit_s,
    task_soft_time_limit=_settings.task_time_limit_s * SOFT_SHARE,
    task_annotations={
        "worker.tasks.screen_patients": {
            "time_limit": _settings.task_time_limit_s * BATCH_SHARE,
            "soft_time_limit": _settings.task_time_limit_s * BATCH_SHARE * SOFT_SHARE,
        }
    },
    broker_transport_options={
        "visibility_timeout": _settings.task_time_limit_s + VISIBILITY_MARGIN_S
    },
)
