"""A Celery task through Redis on a separate worker process, reaching the real FHIR server."""

from __future__ import annotations

import pytest

from fhir_match.config import Settings
from fhir_match.errors import FatalFhirError
from worker.process import WorkerProcess
from worker.tasks import check_fhir_server

RESULT_TIMEOUT_S = 60


def test_worker_process_reaches_the_fhir_server(
    celery_worker: WorkerProcess, settings: Settings
) -> None:
    result = check_fhir_server.apply_async(args=[settings.fhir.base_url], queue=celery_worker.queue)
    described = result.get(timeout=RESULT_TIMEOUT_S)
    assert described["fhir_version"] == "4.0.1"
    assert described["base_url"] == settings.fhir.base_url
    assert described["research_subjects"] is True


def test_task_failure_comes_back_as_our_error(
    celery_worker: WorkerProcess, settings: Settings
) -> None:
    not_fhir = settings.fhir.base_url.rstrip("/") + "-not-here"
    result = check_fhir_server.apply_async(args=[not_fhir], queue=celery_worker.queue)
    with pytest.raises(FatalFhirError, match="-not-here/metadata failed"):
        result.get(timeout=RESULT_TIMEOUT_S)
