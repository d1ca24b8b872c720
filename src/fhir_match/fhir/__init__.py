"""FHIR access layer: the only package that speaks HTTP."""

from fhir_match.fhir.client import FhirClient
from fhir_match.fhir.search import Search

__all__ = ["FhirClient", "Search"]
