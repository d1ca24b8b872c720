"""The patient-list source through the transport seam: the registry forms, one patient per
request with every page, Medications read once, failures costing one patient, the rate
limit on an injected clock, and 429 honoured."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_match import patient_list
from fhir_match.config import FhirSettings, load_settings
from fhir_match.errors import ConfigError
from fhir_match.exported import CohortRule
from fhir_match.fetch import record_searches
from fhir_match.fhir import FhirClient
from fhir_match.fhir.client import process_rate_limit
from fhir_match.fhir.transport import RateLimit
from fhir_match.patient_list import fetch_cohort, registry
from fhir_match.runtime import study_setup

BASE = "http://ehr.test/fhir"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
ROMIPLOSTIM = "B02BX04"
SEARCHES = record_searches(["Condition", "Observation", "MedicationRequest"])

Handler = Callable[[httpx.Request], httpx.Response]


@functools.cache
def _rule() -> CohortRule:
    """KN5501's cohort rule (its CQL translated first: a fresh clone has none yet)."""
    return study_setup("kn5501").cohort_rule


def _bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _of(patient: str, kind: str, number: int, **content: Any) -> dict[str, Any]:
    element = "patient" if kind == "AllergyIntolerance" else "subject"
    return {
        "resourceType": kind,
        "id": f"{patient}-{kind.lower()}-{number}",
        element: {"reference": f"Patient/{patient}"},
        **content,
    }


def _coded(system: str, code: str, display: str = "") -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


class FakeEhr:
    """A patient-scoped EHR in memory: reads by id, and searches that must name one patient
    by id, with no _include, _elements or chains; Observations come in pages of two."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.faults: dict[str, list[httpx.Response]] = {}
        """Answers to give, in turn, before the real one, by path and query."""

    def add(self, *resources: dict[str, Any]) -> None:
        for resource in resources:
            self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir/")
        key = f"{path}?{request.url.query.decode()}" if request.url.query else path
        if self.faults.get(key):
            return self.faults[key].pop(0)
        if "/" in path:
            found = self.resources.get(path)
            return httpx.Response(200 if found else 404, json=found or {"resourceType": "x"})
        params = dict(request.url.params)
        assert set(params) <= {"patient", "subject", "_count", "_page"}, params
        (patient,) = [params[p] for p in ("patient", "subject") if p in params]
        assert "," not in patient
        assert "/" not in patient
        matches = [
            r
            for r in self.resources.values()
            if r["resourceType"] == path
            and (r.get("subject") or r.get("patient") or {}).get("reference")
            == f"Patient/{patient}"
        ]
        if path != "Observation":
            return httpx.Response(200, json=_bundle(matches))
        page = int(params.get("_page", "0"))
        rest = matches[2 * page + 2 :]
        next_url = f"{request.url.copy_merge_params({'_page': page + 1})}" if rest else None
        return httpx.Response(200, json=_bundle(matches[2 * page : 2 * page + 2], next_url))


def _client(ehr: Handler, waits: list[float] | None = None, **settings: Any) -> FhirClient:
    sleep = (waits if waits is not None else []).append
    return FhirClient(
        FhirSettings(base_url=BASE, **settings),
        transport=httpx.MockTransport(ehr),
        sleep=sleep,
        rate_limit=RateLimit(0),
    )


@pytest.fixture
def ehr() -> FakeEhr:
    ehr = FakeEhr()
    for patient in ("itp", "drug", "other", "gone"):
        if patient != "gone":
            ehr.add({"resourceType": "Patient", "id": patient})
    ehr.add(
        _of("itp", "Condition", 1, code=_coded(ICD10, "D69.3")),
        *(_of("itp", "Observation", n) for n in range(5)),
        _of("drug", "Condition", 1, code={"text": "Immune thrombocytopenic purpura, chronic"}),
        _of("drug", "MedicationRequest", 1, medicationReference={"reference": "Medication/m1"}),
        _of("drug", "MedicationRequest", 2, medicationReference={"reference": "Medication/m1"}),
        _of("other", "Condition", 1, code=_coded(ICD10, "E11.9")),
        _of("other", "Observation", 1),
        _of("other", "MedicationRequest", 1, medicationReference={"reference": "Medication/m1"}),
        _of("gone", "Condition", 1, code=_coded(ICD10, "D69.3")),
        {"resourceType": "Medication", "id": "m1", "code": _coded(RXNORM, "7")},
    )
    return ehr


def _ids(record: Any) -> list[str]:
    return sorted(f"{r['resourceType']}/{r['id']}" for r in record.resources)


def test_the_cohort_is_found_first_and_only_its_records_are_read(ehr: FakeEhr) -> None:
    patients = ["Patient/drug", "Patient/gone", "Patient/itp", "Patient/other"]
    with _client(ehr) as client:
        batch = fetch_cohort(client, SEARCHES, _rule(), patients)
    assert [r.patient for r in batch.records] == ["Patient/drug", "Patient/itp"]
    drug, itp = batch.records
    assert _ids(itp) == sorted(
        ["Patient/itp", "Condition/itp-condition-1"]
        + [f"Observation/itp-observation-{n}" for n in range(5)]
    )
    assert _ids(drug) == [
        "Condition/drug-condition-1",
        "Medication/m1",
        "MedicationRequest/drug-medicationrequest-1",
        "MedicationRequest/drug-medicationrequest-2",
        "Patient/drug",
    ]
    assert [str(i) for i in batch.issues] == ["Patient/gone: not found on the FHIR server"]
    assert batch.outside == ("Patient/other",)
    # 4 patients x 2 deciding types, and Medication/m1 read once for all who cite it
    assert batch.cohort_requests == 4 * 2 + 1
    # for the cohort's 3: the Patient reads, and the Observations (itp's five in 3 pages)
    assert batch.record_requests == 3 + (1 + 1 + 3)
    assert len(ehr.requests) == batch.cohort_requests + batch.record_requests
    assert not any("_include" in str(r.url) or "," in str(r.url) for r in ehr.requests)


def test_a_drug_in_a_cited_medications_ingredient_decides_the_cohort(ehr: FakeEhr) -> None:
    ingredient = {"itemReference": {"reference": "Medication/m2"}}
    ehr.add(
        {"resourceType": "Medication", "id": "m1", "ingredient": [ingredient]},
        {"resourceType": "Medication", "id": "m2", "code": _coded(ATC, ROMIPLOSTIM)},
    )
    with _client(ehr) as client:
        batch = fetch_cohort(client, SEARCHES, _rule(), ["Patient/other"])
    assert [r.patient for r in batch.records] == ["Patient/other"]
    # each Medication read once: the one the use cites, then its ingredient
    reads = [r.url.path for r in ehr.requests if "/Medication/" in r.url.path]
    assert reads == ["/fhir/Medication/m1", "/fhir/Medication/m2"]


def test_one_patients_failure_costs_only_that_patient(ehr: FakeEhr) -> None:
    ehr.faults["Observation?patient=itp&_count=500"] = [httpx.Response(500)]
    with _client(ehr, max_retries=0) as client:
        batch = fetch_cohort(client, SEARCHES, _rule(), ["Patient/drug", "Patient/itp"])
    assert [r.patient for r in batch.records] == ["Patient/drug"]
    (issue,) = batch.issues
    assert issue.where == "Patient/itp"
    assert "GET http://ehr.test/fhir/Observation?patient=...&_count=500" in issue.reason
    assert "HTTP 500" in issue.reason


def test_429_with_retry_after_is_honoured(ehr: FakeEhr) -> None:
    ehr.faults["Condition?patient=itp&_count=500"] = [
        httpx.Response(429, headers={"Retry-After": "3"})
    ]
    waits: list[float] = []
    with _client(ehr, waits) as client:
        batch = fetch_cohort(client, SEARCHES, _rule(), ["Patient/itp"])
    assert waits == [3.0]
    assert [r.patient for r in batch.records] == ["Patient/itp"]
    assert not batch.issues


def test_requests_keep_to_the_rate_limit_across_retries() -> None:
    now = [100.0]
    sent: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(now[0])
        status = 503 if len(sent) == 2 else 200
        return httpx.Response(status, json={"resourceType": "Patient", "id": "a"})

    backoff: list[float] = []
    limit = RateLimit(4, clock=lambda: now[0], sleep=sleep)
    settings = FhirSettings(base_url=BASE, max_rate=4)
    transport = httpx.MockTransport(handler)
    with FhirClient(
        settings, transport=transport, sleep=backoff.append, rate_limit=limit
    ) as client:
        for _ in range(3):
            client.read_json("Patient", "a")
    # the retry after the 503 waits its backoff (kept off this clock), then takes its own slot
    assert backoff == [1.0]
    assert sent == [100.0, 100.25, 100.5, 100.75]


def test_requests_in_flight_are_capped_by_max_concurrency(ehr: FakeEhr) -> None:
    """Four threads read at once; the server holds each request until a second one is in
    (a barrier, bounded): so two are in flight together, and the cap keeps the others out."""
    together = threading.Barrier(2, timeout=10)
    in_flight: list[int] = [0]
    most: list[int] = []
    lock = threading.Lock()

    def server(request: httpx.Request) -> httpx.Response:
        with lock:
            in_flight[0] += 1
            most.append(in_flight[0])
        together.wait()
        with lock:
            in_flight[0] -= 1
        return ehr(request)

    with _client(server, max_concurrency=2) as client, ThreadPoolExecutor(4) as pool:
        read = list(pool.map(lambda _: client.read_json("Patient", "itp")["id"], range(4)))
    assert read == ["itp"] * 4
    assert max(most) == 2


def test_the_rate_limit_is_the_processes_for_each_server() -> None:
    assert process_rate_limit(BASE, 5) is process_rate_limit(BASE, 5)
    assert process_rate_limit(BASE, 5) is not process_rate_limit("http://other.test/fhir", 5)


def test_concurrency_and_rate_come_from_the_environment() -> None:
    fhir = load_settings({"FHIR_MAX_CONCURRENCY": "2", "FHIR_MAX_RATE": "12.5"}).fhir
    assert (fhir.max_concurrency, fhir.max_rate) == (2, 12.5)
    with pytest.raises(ConfigError, match="FHIR_MAX_CONCURRENCY"):
        load_settings({"FHIR_MAX_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="FHIR_MAX_RATE"):
        load_settings({"FHIR_MAX_RATE": "-1"})


def test_a_group_gives_its_active_patient_members(ehr: FakeEhr) -> None:
    ehr.add(
        {
            "resourceType": "Group",
            "id": "registry",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": "Patient/b"}},
                {"entity": {"reference": "Patient/x"}, "inactive": True},
                {"entity": {"reference": f"{BASE}/Patient/a/_history/3"}},
                {"entity": {"reference": "Practitioner/p"}},
                {"entity": {"display": "Jane Doe"}},
                {"entity": {"reference": "Patient/b"}},
            ],
        }
    )
    with _client(ehr) as client:
        found = registry(client, "Group/registry")
    assert found.patients == ("Patient/a", "Patient/b")
    assert [str(i) for i in found.issues] == [
        "Group/registry member[3]: does not refer to a Patient on this server",
        "Group/registry member[4]: does not refer to a Patient on this server",
    ]


def test_a_list_gives_its_entries_not_deleted(ehr: FakeEhr) -> None:
    ehr.add(
        {
            "resourceType": "List",
            "id": "l1",
            "status": "current",
            "mode": "working",
            "entry": [
                {"item": {"reference": "Patient/z"}, "deleted": True},
                {"item": {"reference": "Patient/c"}},
                {"item": {"reference": "http://elsewhere.test/fhir/Patient/d"}},
            ],
        }
    )
    with _client(ehr) as client:
        found = registry(client, "List/l1")
    assert found.patients == ("Patient/c",)
    assert [i.where for i in found.issues] == ["List/l1 entry[2]"]


def test_a_file_of_ids_reports_bad_lines_by_place_never_content(tmp_path: Path) -> None:
    path = tmp_path / "registry.txt"
    path.write_bytes(
        b"\xef\xbb\xbf# the ITP registry\n\nPatient/a\nb   # added in May\nPatient/a\n"
        b"John Smith 1970-01-01\n\xff\xfe\n  c  \n"
    )
    with _client(FakeEhr()) as client:
        found = registry(client, str(path))
    assert found.patients == ("Patient/a", "Patient/b", "Patient/c")
    assert [str(i) for i in found.issues] == [
        f"{path}:6: not a patient id (Patient/<id> or <id>)",
        f"{path}:7: not UTF-8",
    ]


def test_a_registry_that_cannot_be_read_stops_with_its_name(tmp_path: Path) -> None:
    with (
        _client(FakeEhr()) as client,
        pytest.raises(
            ConfigError,
            match=r"Group/<id>, List/<id> or a file of patient ids: .*missing\.txt cannot be read",
        ),
    ):
        registry(client, str(tmp_path / "missing.txt"))


def test_a_registry_naming_no_patients_stops_the_run(ehr: FakeEhr, tmp_path: Path) -> None:
    ehr.add({"resourceType": "Group", "id": "bulk", "type": "person", "actual": True})
    path = tmp_path / "ids.txt"
    path.write_text("# nobody yet\nJane Doe\n")
    with _client(ehr) as client:
        with pytest.raises(ConfigError, match=r"registry Group/bulk names no patients$"):
            registry(client, "Group/bulk")
        with pytest.raises(ConfigError, match="names no patients") as caught:
            registry(client, str(path))
    assert f"{path}:2: not a patient id" in str(caught.value)
    assert "Jane" not in str(caught.value)


def test_public_names() -> None:
    assert sorted(patient_list.__all__) == [
        "DECIDING_TYPES",
        "PatientListBatch",
        "Registry",
        "SHARED_TYPES",
        "fetch_cohort",
        "registry",
    ]
