"""fhir-match against the strict EHR proxy in front of the real HAPI server: what a hospital's
EHR refuses is refused by name, what it allows works, and its internal-host links are
followed only with FHIR_FOREIGN_LINKS=rewrite.

The population is written straight to HAPI (a real EHR's data is not written through its
API either), tagged with the test's run tag: two patients with an ITP Condition and five
platelet counts each, and a Group (actual) of both, as a hospital provisions for export.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fhir_match.cohort import find_cohort
from fhir_match.config import FhirSettings, Settings
from fhir_match.errors import FatalFhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.bulk import export
from fhir_match.fhir.models import parse_resource
from fhir_match.runtime import study_setup
from fhir_match.server import describe_server
from tests.strict_ehr import StrictEhr

from .conftest import RunTag

PLATELETS = "777-3"
OBSERVATIONS_EACH = 5
STUDY = "kn5501"


@dataclass(frozen=True)
class Ward:
    """The test's population on HAPI: patient references and the Group of them."""

    patients: list[str]
    group: str


def _entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"]}
    return {"fullUrl": full_url, "resource": resource, "request": request}


def _patient(tag: RunTag) -> list[dict[str, Any]]:
    ref = f"urn:uuid:{uuid.uuid4()}"
    entries = [_entry(tag.mark({"resourceType": "Patient", "gender": "female"}), ref)]
    condition: dict[str, object] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D69.3"}]},
        "subject": {"reference": ref},
    }
    entries.append(_entry(tag.mark(condition), f"urn:uuid:{uuid.uuid4()}"))
    for _ in range(OBSERVATIONS_EACH):
        observation: dict[str, object] = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": PLATELETS}]},
            "subject": {"reference": ref},
        }
        entries.append(_entry(tag.mark(observation), f"urn:uuid:{uuid.uuid4()}"))
    return entries


@pytest.fixture
def ward(fhir: FhirClient, run_tag: RunTag) -> Ward:
    entries = _patient(run_tag) + _patient(run_tag)
    refs = [e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Patient"]
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": ref}} for ref in refs],
    }
    entries.append(_entry(run_tag.mark(group), f"urn:uuid:{uuid.uuid4()}"))
    answer = fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    locations = [str(e.response.location).split("/_history")[0] for e in answer.entry or []]
    patients = [loc for loc in locations if loc.startswith("Patient/")]
    (group_ref,) = [loc for loc in locations if loc.startswith("Group/")]
    return Ward(patients, group_ref)


@pytest.fixture
def ehr(settings: Settings) -> Iterator[StrictEhr]:
    with StrictEhr(settings.fhir.base_url, page_cap=2) as proxy:
        yield proxy


def _through(settings: Settings, ehr: StrictEhr, **changes: Any) -> FhirClient:
    fhir: FhirSettings = replace(settings.fhir, base_url=ehr.base_url, **changes)
    return FhirClient(fhir)


def test_todays_cohort_search_is_refused_by_name(
    settings: Settings, ehr: StrictEhr, ward: Ward, run_tag: RunTag
) -> None:
    searches = study_setup(STUDY).cohort
    with _through(settings, ehr) as client, pytest.raises(FatalFhirError) as refused:
        find_cohort(client, searches, run_tag.code)
    assert refused.value.status == 400
    assert "one-patient-per-search" in str(refused.value)
    assert ehr.refused["one-patient-per-search"] >= 1
    assert ehr.refusals == ehr.refused["one-patient-per-search"]


def test_the_strict_statement_tells_what_discovery_may_do(
    settings: Settings, ehr: StrictEhr
) -> None:
    with _through(settings, ehr) as client:
        allows = describe_server(client)["allows"]
    assert allows["cohort_search"] is False
    assert allows["writes_research"] is False
    assert (allows["group_export"], allows["patient_export"]) == (True, False)
    assert "Condition" in allows["patient_required"]


def test_one_patients_search_pages_through_internal_links_only_with_rewrite(
    settings: Settings, fhir: FhirClient, ehr: StrictEhr, ward: Ward
) -> None:
    patient = ward.patients[0]
    search = Search("Observation").where("patient", patient).count(50)
    with _through(settings, ehr, foreign_links="rewrite") as client:
        pages = list(client.pages(search))
    assert len(pages) == 3  # five entries, at most two a page: the cap lowered _count=50
    first_next = next(link["url"] for link in pages[0]["link"] if link["relation"] == "next")
    assert first_next.startswith(ehr.internal_base + "?")
    full_urls = [entry["fullUrl"] for page in pages for entry in page["entry"]]
    assert all(url.startswith(ehr.internal_base + "/Observation/") for url in full_urls)
    direct = {str(r.id) for r in fhir.search(Search("Observation").where("patient", patient))}
    assert {url.rsplit("/", 1)[1] for url in full_urls} == direct
    assert ehr.refusals == 0
    assert ehr.capped == 1

    with _through(settings, ehr) as client, pytest.raises(FatalFhirError) as refused:
        list(client.pages(search))
    message = str(refused.value)
    assert "set FHIR_FOREIGN_LINKS=rewrite if the server is behind a gateway" in message
    assert patient.split("/")[1] not in message


def test_a_group_export_runs_to_its_files_only_with_rewrite(
    settings: Settings, ehr: StrictEhr, ward: Ward, tmp_path: Path
) -> None:
    group = ward.group.split("/")[1]
    types = ["Patient", "Condition", "Observation"]
    with _through(settings, ehr, foreign_links="rewrite") as client:
        exported = export(client, tmp_path / "ok", types=types, group=group, max_poll_interval_s=1)
    kinds: dict[str, set[str]] = {}
    for path in exported.files:
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            kinds.setdefault(resource["resourceType"], set()).add(resource["id"])
    assert {f"Patient/{p}" for p in kinds["Patient"]} == set(ward.patients)
    assert len(kinds["Condition"]) == 2
    assert len(kinds["Observation"]) == 2 * OBSERVATIONS_EACH
    assert ehr.refusals == 0

    with _through(settings, ehr) as client, pytest.raises(FatalFhirError) as refused:
        export(client, tmp_path / "refused", types=types, group=group, max_poll_interval_s=1)
    assert refused.value.url.startswith(ehr.internal_base + "/$export-poll-status")
    assert "set FHIR_FOREIGN_LINKS=rewrite" in str(refused.value)


def test_type_filter_and_patient_export_are_refused(
    settings: Settings, ehr: StrictEhr, ward: Ward, tmp_path: Path
) -> None:
    with _through(settings, ehr, foreign_links="rewrite") as client:
        with pytest.raises(FatalFhirError, match="no-type-filter") as filtered:
            client.request(
                "GET",
                f"{client.base_url}/{ward.group}/$export",
                params=[("_type", "Condition"), ("_typeFilter", "Condition?code=D69.3")],
                headers={"Prefer": "respond-async"},
            )
        with pytest.raises(FatalFhirError, match="group-export-only") as system:
            export(client, tmp_path, types=["Condition"], patients=ward.patients)
    assert (filtered.value.status, system.value.status) == (400, 400)
    assert ehr.refused == {"no-type-filter": 1, "group-export-only": 1}


def test_a_research_subject_write_is_refused(
    settings: Settings, fhir: FhirClient, ehr: StrictEhr, ward: Ward, run_tag: RunTag
) -> None:
    subject = run_tag.mark(
        {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/none"},
            "individual": {"reference": ward.patients[0]},
        }
    )
    with _through(settings, ehr) as client, pytest.raises(FatalFhirError) as refused:
        client.create(parse_resource(subject))
    assert refused.value.status == 405
    assert "research-read-only" in str(refused.value)
    tagged = Search("ResearchSubject").where("_tag", run_tag.token)
    assert list(fhir.search(tagged)) == []


def test_429_from_the_rate_limit_is_honoured(settings: Settings, ward: Ward) -> None:
    with (
        StrictEhr(settings.fhir.base_url, rate_per_s=2) as ehr,
        _through(settings, ehr) as client,
    ):
        read = [client.read("Patient", ref.split("/")[1]).id for ref in ward.patients * 3]
    assert read == [ref.split("/")[1] for ref in ward.patients * 3]
    assert ehr.refused["rate-limit"] >= 1
    assert ehr.refusals == ehr.refused["rate-limit"]
    assert client.requests == ehr.requests
