"""The strict EHR's rules, its CapabilityStatement, and what fhir-match reads from one
(server_allows), without a server: the rules and the statement are pure functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from fhir_match import server
from fhir_match.config import FhirSettings
from fhir_match.fhir import FhirClient
from fhir_match.server import ALLOWS_ALL, ServerAllows, read_allows, server_allows
from tests import strict_ehr
from tests.strict_ehr import COMBINATION, Asked, capped, refusal, strict_capabilities

HAPI_STATEMENT = Path(__file__).parents[1] / "fixtures" / "capabilities" / "hapi-8.8.0.json"
"""The local HAPI's /metadata, trimmed to the types fhir-match reads or writes (and cut
include lists); saved from the running server."""


def _asked(method: str, target: str) -> Asked:
    parts = urlsplit(target)
    segments = tuple(s for s in parts.path.split("/") if s)
    return Asked(method, segments, tuple(parse_qsl(parts.query, keep_blank_values=True)))


@pytest.mark.parametrize(
    ("method", "target", "rule"),
    [
        ("GET", "Condition?code=http://hl7.org/fhir/sid/icd-10-cm|D69.3", "one-patient-per-search"),
        ("GET", "Observation?patient=a,b,c&code=777-3", "one-patient-per-search"),
        ("GET", "MedicationRequest?patient=a&subject=Patient/a", "one-patient-per-search"),
        ("GET", "?_lastUpdated=gt2026-01-01", "one-patient-per-search"),
        ("GET", "Patient?birthdate=1980-01-01", "patient-by-id-or-identifier"),
        ("GET", "Patient?_tag=x", "patient-by-id-or-identifier"),
        ("GET", "Patient?_id=a,b", "single-id"),
        ("GET", "Condition?patient=a&_include=Condition:subject", "no-include-or-elements"),
        ("GET", "Patient?_id=a&_revinclude=Condition:subject", "no-include-or-elements"),
        ("GET", "Patient?_id=a&_has:Condition:subject:code=D69.3", "no-include-or-elements"),
        ("GET", "Condition?patient=a&_elements=subject", "no-include-or-elements"),
        ("GET", "MedicationRequest?patient=a&medication.code=123", "no-chained-parameters"),
        ("GET", "Condition?patient=a&code:text=thrombocytopenia", "no-text-modifier"),
        ("GET", "Condition?code=D69.3&_elements=subject", "one-patient-per-search"),
        ("GET", "$export?_type=Patient", "group-export-only"),
        ("GET", "Patient/$export", "group-export-only"),
        ("POST", "Patient/$export", "group-export-only"),
        ("GET", "Group/g1/$export?_typeFilter=Condition?code=D69.3", "no-type-filter"),
        ("POST", "ResearchSubject", "research-read-only"),
        ("PUT", "Provenance/p1", "research-read-only"),
        ("PATCH", "ResearchStudy/s1", "research-read-only"),
        ("DELETE", "Group/g1", "research-read-only"),
        ("POST", "List", "research-read-only"),
        ("POST", "", "research-read-only"),
    ],
)
def test_a_request_an_ehr_refuses_is_refused_by_its_rule(
    method: str, target: str, rule: str
) -> None:
    refused = refusal(_asked(method, target))
    assert refused is not None
    assert refused.rule == rule
    assert refused.status == (405 if rule == "research-read-only" else 400)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "Condition?patient=Patient/a&code=D69.3"),
        ("GET", "Observation?subject=Patient/a&_count=100"),
        ("GET", "Condition?_id=c1"),
        ("POST", "Condition/_search?patient=a"),
        ("GET", "Condition/c1"),
        ("GET", "Patient/a"),
        ("GET", "Patient?_id=a"),
        ("GET", "Patient?identifier=urn:oid:1.2.3|42"),
        ("GET", "Medication?code=123"),
        ("GET", "ResearchSubject?study=ResearchStudy/s1"),
        ("GET", "?_getpages=abc&_getpagesoffset=20"),
        ("GET", "Group/g1/$export?_type=Patient,Condition&_since=2026-01-01T00:00:00Z"),
        ("POST", "Group/g1/$export"),
        ("GET", "$export-poll-status?_jobId=j1"),
        ("DELETE", "$export-poll-status?_jobId=j1"),
        ("GET", "Binary/b1"),
        ("GET", "metadata"),
    ],
)
def test_what_an_ehr_allows_passes(method: str, target: str) -> None:
    assert refusal(_asked(method, target)) is None


def test_a_page_size_above_the_cap_is_lowered_to_it() -> None:
    params = (("patient", "a"), ("_count", "500"))
    assert capped(params, 100) == (("patient", "a"), ("_count", "100"))
    assert capped((("_count", "20"),), 100) == (("_count", "20"),)


def _hapi() -> dict[str, Any]:
    statement: dict[str, Any] = json.loads(HAPI_STATEMENT.read_text())
    return statement


def _resource(statement: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in statement["rest"][0]["resource"] if r["type"] == kind)
    return found


def test_the_strict_statement_says_the_rules_where_fhir_can() -> None:
    strict = strict_capabilities(_hapi())
    condition = _resource(strict, "Condition")
    combinations = [e for e in condition["extension"] if e["url"] == COMBINATION]
    assert combinations == [
        {
            "url": COMBINATION,
            "extension": [
                {"url": "required", "valueString": "patient"},
                {"url": "optional", "valueString": "code"},
            ],
        }
    ]
    assert "searchInclude" not in condition
    assert [o for o in strict["rest"][0]["operation"] if o["name"] == "export"] == []
    assert "export" not in {o["name"] for o in _resource(strict, "Patient")["operation"]}
    assert "export" in {o["name"] for o in _resource(strict, "Group")["operation"]}
    codes = {i["code"] for i in _resource(strict, "ResearchSubject")["interaction"]}
    assert codes == {"read", "vread", "search-type", "history-instance", "history-type"}
    assert _resource(_hapi(), "Condition").get("searchInclude")  # the input is left alone


def test_hapi_allows_everything_discovery_does_today() -> None:
    allows = server_allows(_hapi())
    assert allows.cohort_search
    assert allows.writes_research
    assert allows.includes
    assert (allows.system_export, allows.patient_export, allows.group_export) == (True,) * 3
    assert allows.patient_required == ()
    assert "MedicationRequest" in allows.code_search


def test_the_strict_ehr_allows_patient_scoped_reads_and_group_export_only() -> None:
    allows = server_allows(strict_capabilities(_hapi()))
    assert allows == ServerAllows(
        code_search=(),
        patient_required=allows.patient_required,
        includes=False,
        system_export=False,
        patient_export=False,
        group_export=True,
        research_writes=(),
        transactions=False,
    )
    assert {"Condition", "Observation", "MedicationRequest"} <= set(allows.patient_required)
    assert not allows.cohort_search
    assert not allows.writes_research


def test_a_combination_without_a_patient_still_allows_a_code_search() -> None:
    statement = _hapi()
    condition = _resource(statement, "Condition")
    condition["extension"] = [
        {"url": COMBINATION, "extension": [{"url": "required", "valueString": "patient"}]},
        {"url": COMBINATION, "extension": [{"url": "required", "valueString": "code"}]},
    ]
    allows = server_allows(statement)
    assert allows.cohort_search
    assert "Condition" not in allows.patient_required


def test_public_names() -> None:
    assert sorted(server.__all__) == [
        "ALLOWS_ALL",
        "RESEARCH_WRITE_TYPES",
        "ServerAllows",
        "describe_server",
        "read_allows",
        "server_allows",
    ]
    assert "StrictEhr" in strict_ehr.__all__
    assert all(hasattr(strict_ehr, name) for name in strict_ehr.__all__)


def _metadata_client(answer: httpx.Response) -> FhirClient:
    return FhirClient(
        FhirSettings(base_url="https://ehr.test/fhir", max_retries=0),
        transport=httpx.MockTransport(lambda request: answer),
        sleep=lambda _: None,
    )


def test_a_statement_with_an_odd_element_still_says_what_is_allowed() -> None:
    statement = {
        **strict_capabilities(json.loads(HAPI_STATEMENT.read_text())),
        "total": 3,
    }  # no such element
    with _metadata_client(httpx.Response(200, json=statement)) as client:
        allows = read_allows(client)
    assert allows.group_export
    assert not allows.cohort_search


def test_a_statement_that_cannot_be_read_is_taken_to_allow_everything() -> None:
    for answer in (httpx.Response(404, text="<html>gone</html>"), httpx.Response(200, text="<")):
        with _metadata_client(answer) as client:
            assert read_allows(client) == ALLOWS_ALL
