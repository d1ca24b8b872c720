"""FHIR access layer: the only package that speaks HTTP."""

from fhir_match.fhir.client import SEARCHES_IN_FLIGHT, FhirClient
from fhir_match.fhir.search import Search

__all__ = ["SEARCHES_IN_FLIGHT", "FhirClient", "Search"]
