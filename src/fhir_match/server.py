"""What a FHIR server says about itself, reduced to what an operator needs to see."""

from __future__ import annotations

from typing import Any

from fhir_match.fhir import FhirClient

__all__ = ["describe_server"]


def describe_server(client: FhirClient) -> dict[str, Any]:
    """FHIR version, software, and the resource types it serves, from ``/metadata``."""
    capability = client.capabilities()
    software = capability.software
    rest = capability.rest or []
    types = {str(r.type) for server in rest for r in server.resource or []}
    return {
        "base_url": client.base_url,
        "fhir_version": capability.fhirVersion,
        "software": f"{software.name} {software.version or ''}".strip() if software else "",
        "resource_types": len(types),
        "research_subjects": "ResearchSubject" in types,
    }
