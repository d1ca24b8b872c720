"""What the review pages read from the FHIR server: only what discovery wrote and the
resources it cites, each in as few searches as the server allows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fhir_match.evaluate.study import Study
from fhir_match.fhir import FhirClient, Search
from fhir_match.records import Json
from fhir_match.review.grants import Grant
from fhir_match.writeback import SUBJECT_SYSTEM, subject_identifier

__all__ = [
    "cited_resources",
    "decision_provenances",
    "find_subject",
    "patients",
]

IDS_PER_SEARCH = 100


def _resources(client: FhirClient, search: Search) -> Iterator[Json]:
    for page in client.pages(search):
        for entry in page.get("entry") or []:
            if isinstance(entry.get("resource"), dict):
                yield entry["resource"]


def _by_id(
    client: FhirClient, resource_type: str, ids: Sequence[str], include: str = ""
) -> Iterator[Json]:
    for start in range(0, len(ids), IDS_PER_SEARCH):
        search = Search(resource_type).where("_id", ",".join(ids[start : start + IDS_PER_SEARCH]))
        if include:
            search = search.where("_include", include)
        yield from _resources(client, search.count(IDS_PER_SEARCH * 2))


def patients(client: FhirClient, references: Sequence[str], grant: Grant) -> dict[str, Json]:
    """Patient resources by reference; none when the grant does not include Patient."""
    if not grant.can_read("Patient"):
        return {}
    ids = sorted({r.removeprefix("Patient/") for r in references})
    return {f"Patient/{p['id']}": p for p in _by_id(client, "Patient", ids)}


def find_subject(client: FhirClient, study: Study, patient_id: str, tag: str) -> Json | None:
    identifier = f"{SUBJECT_SYSTEM}|{subject_identifier(study, patient_id, tag)}"
    return next(_resources(client, Search("ResearchSubject").where("identifier", identifier)), None)


def cited_resources(client: FhirClient, references: Sequence[str], grant: Grant) -> dict[str, Json]:
    """The evidence resources by reference (the EHR's own, relative), with the Medications
    medication uses point to; types the grant does not include, and absolute references
    (another server's), are not asked for."""
    by_type: dict[str, list[str]] = {}
    for reference in references:
        if "://" in reference:
            continue  # another server's: evidence is read from the EHR only
        resource_type, _, resource_id = reference.partition("/")
        if resource_id and grant.can_read(resource_type):
            by_type.setdefault(resource_type, []).append(resource_id)
    found: dict[str, Json] = {}
    for resource_type, ids in sorted(by_type.items()):
        include = (
            f"{resource_type}:medication"
            if resource_type.startswith("Medication")
            and resource_type != "Medication"
            and grant.can_read("Medication")
            else ""
        )
        for resource in _by_id(client, resource_type, sorted(set(ids)), include):
            found[f"{resource['resourceType']}/{resource['id']}"] = resource
    return found


def decision_provenances(client: FhirClient, subject_id: str) -> list[Json]:
    search = Search("Provenance").where("target", f"ResearchSubject/{subject_id}").count(100)
    return [r for r in _resources(client, search) if r.get("resourceType") == "Provenance"]
