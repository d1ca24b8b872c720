"""Thin Celery tasks: they take ids and settings names, never resources or patient data."""

from __future__ import annotations

from typing import Any

from fhir_match.config import load_settings
from fhir_match.fhir import FhirClient
from fhir_match.server import describe_server
from worker.app import app

__all__ = ["check_fhir_server"]


@app.task  # type: ignore[untyped-decorator]
def check_fhir_server(base_url: str | None = None) -> dict[str, Any]:
    """Read the server's CapabilityStatement from the worker: proves the worker can reach it.

    No task-level retries: the FHIR client already retries transient failures.
    """
    settings = load_settings().fhir
    if base_url:
        settings = settings.with_base_url(base_url)
    with FhirClient(settings) as client:
        return describe_server(client)
