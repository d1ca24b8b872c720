"""The FHIR client against a real server (FHIR_BASE_URL): writes, reads, searches, bundles."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.resource import Resource

from fhir_match.errors import FatalFhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource

from .conftest import RunTag

T = TypeVar("T", bound=Resource)


def _as(kind: type[T], resource: Resource) -> T:
    assert isinstance(resource, kind), type(resource).__name__
    return resource


def _patient(tag: RunTag, family: str) -> dict[str, Any]:
    return tag.mark(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:fhir-match:test", "value": uuid.uuid4().hex}],
            "name": [{"family": family}],
            "birthDate": "1980-05-01",
        }
    )


def test_capabilities_describe_an_r4_server(fhir: FhirClient) -> None:
    assert fhir.capabilities().fhirVersion == "4.0.1"


def test_create_read_update_with_version_guard(fhir: FhirClient, run_tag: RunTag) -> None:
    created = fhir.create(parse_resource(_patient(run_tag, "Alpha")))
    assert created.id
    read = _as(Patient, fhir.read("Patient", created.id))
    assert read.meta.versionId == "1"

    read.gender = "female"
    updated = fhir.update(read, if_match="1")
    assert updated.meta.versionId == "2"

    read.gender = "male"
    with pytest.raises(FatalFhirError) as stale:
        fhir.update(read, if_match="1")
    assert stale.value.status in (409, 412)
    assert f"Patient/{created.id}" in stale.value.url
    assert _as(Patient, fhir.read("Patient", created.id)).gender == "female"


def test_conditional_create_returns_the_existing_resource(
    fhir: FhirClient, run_tag: RunTag
) -> None:
    data = _patient(run_tag, "Beta")
    identifier = data["identifier"][0]
    query = f"identifier={identifier['system']}|{identifier['value']}"
    first = fhir.create(parse_resource(data), if_none_exist=query)
    second = fhir.create(parse_resource(data), if_none_exist=query)
    assert first.id == second.id
    assert fhir.total(Search("Patient").where("_tag", run_tag.token)) == 1


def test_search_follows_every_page(fhir: FhirClient, run_tag: RunTag) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": _patient(run_tag, f"Paged{i}"),
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(7)
        ],
    }
    response = fhir.batch(bundle)
    assert [e.response.status[:3] for e in response.entry] == ["201"] * 7

    search = Search("Patient").where("_tag", run_tag.token).count(2)
    assert len(list(fhir.pages(search))) == 4
    names = sorted(_as(Patient, p).name[0].family for p in fhir.search(search))
    assert names == [f"Paged{i}" for i in range(7)]


def test_transaction_resolves_references_and_revincludes(fhir: FhirClient, run_tag: RunTag) -> None:
    patient_ref = f"urn:uuid:{uuid.uuid4()}"
    observation = run_tag.mark(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
            "subject": {"reference": patient_ref},
            "effectiveDateTime": "2026-05-10",
            "valueQuantity": {
                "value": 22,
                "unit": "10*9/L",
                "system": "http://unitsofmeasure.org",
                "code": "10*9/L",
            },
        }
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_ref,
                "resource": _patient(run_tag, "Gamma"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    result = fhir.transaction(bundle)
    patient_id = result.entry[0].response.location.split("/")[1]

    found = list(
        fhir.search(Search("Patient").where("_id", patient_id).revinclude("Observation:subject"))
    )
    assert sorted(type(r).__name__ for r in found) == ["Observation", "Patient"]
    linked = next(r for r in found if isinstance(r, Observation))
    assert linked.subject.reference == f"Patient/{patient_id}"

    by_patient = list(fhir.search(Search("Observation").where("patient", patient_id, "none")))
    assert [_as(Observation, o).valueQuantity.value for o in by_patient] == [22]


def test_failed_transaction_changes_nothing_and_names_the_problem(
    fhir: FhirClient, run_tag: RunTag
) -> None:
    orphan = run_tag.mark(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "platelets"},
            "subject": {"reference": f"Patient/missing-{uuid.uuid4().hex[:8]}"},
        }
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": _patient(run_tag, "Delta"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": orphan, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    with pytest.raises(FatalFhirError) as failed:
        fhir.transaction(bundle)
    assert failed.value.status in (400, 404, 409, 422)
    assert "missing-" in failed.value.outcome
    assert fhir.total(Search("Patient").where("_tag", run_tag.token)) == 0
