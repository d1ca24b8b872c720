"""The patient-list source on the real HAPI server behind the strict EHR proxy: a seeded
population's Group as the registry, the cohort decided locally, records read one patient per
request; the same cohort and the same records as the search path (cohort.py and fetch.py) on
plain HAPI, with nothing refused, and an EHR's quota kept or its 429s honoured."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from fhir_match.candidates import current_candidates
from fhir_match.cohort import find_cohort
from fhir_match.config import Settings
from fhir_match.errors import FatalFhirError
from fhir_match.evaluate.study import load_study
from fhir_match.fetch import fetch_records
from fhir_match.fhir import FhirClient
from fhir_match.patient_list import fetch_cohort, registry
from fhir_match.records import DataIssue, PatientRecord
from fhir_match.runtime import study_setup
from fhir_match.seed import TAG_SYSTEM, remove_tagged, seed
from fhir_match.sources import Fetch, PatientList, fetch_batch, find
from fhir_match.synth.generate import generate
from tests.strict_ehr import StrictEhr
from worker.process import WorkerProcess

from .populations import STUDY, Population, loaded_population, run_discovery

SAMPLE = 8
"""Registry patients the rate-limit tests read: enough requests to pass a quota of 10/s."""


def through(settings: Settings, ehr: StrictEhr, **changes: Any) -> FhirClient:
    """A client of the strict EHR, following its internal-host page links onto it."""
    fhir = replace(settings.fhir, base_url=ehr.base_url, foreign_links="rewrite", **changes)
    return FhirClient(fhir)


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("population")
    with loaded_population(fhir, folder, 60, 1515, 0.6, "patientlist", group=True) as population:
        yield population


def record_ids(records: list[PatientRecord]) -> dict[str, list[str]]:
    return {
        r.patient: sorted(f"{x['resourceType']}/{x['id']}" for x in r.resources) for r in records
    }


def test_a_seeded_group_finds_the_search_paths_cohort_and_records_one_patient_at_a_time(
    settings: Settings, fhir: FhirClient, population: Population
) -> None:
    setup = study_setup(STUDY)
    searched = find_cohort(fhir, setup.cohort, population.tag)
    issues: list[DataIssue] = []
    expected = record_ids(fetch_records(fhir, setup.records, searched, issues.append))
    assert not issues

    with StrictEhr(settings.fhir.base_url) as ehr, through(settings, ehr) as client:
        found = registry(client, f"Group/{population.group}")
        batch = fetch_cohort(
            client,
            setup.records,
            setup.cohort_rule,
            found.patients,
        )

    assert found.patients == tuple(sorted(population.expected))
    assert not found.issues
    assert [r.patient for r in batch.records] == searched
    assert record_ids(list(batch.records)) == expected
    assert not batch.issues
    assert len(batch.outside) == len(found.patients) - len(searched)
    assert ehr.refusals == 0
    # four deciding types for each of the 60, then six more per cohort patient, Medications
    # read once each: the record part costs a fixed count per cohort patient
    assert batch.cohort_requests >= 4 * len(found.patients)
    assert batch.record_requests >= 6 * len(searched)
    assert ehr.requests == 1 + batch.cohort_requests + batch.record_requests


@pytest.mark.parametrize(("our_rate", "refused"), [(0.0, True), (5.0, False)])
def test_a_quota_is_kept_by_fhir_max_rate_or_its_429s_honoured(
    settings: Settings, fhir: FhirClient, population: Population, our_rate: float, refused: bool
) -> None:
    setup = study_setup(STUDY)
    sample = sorted(population.expected)[:SAMPLE]
    expected = fetch_cohort(fhir, setup.records, setup.cohort_rule, sample)
    with (
        StrictEhr(settings.fhir.base_url, rate_per_s=10) as ehr,
        through(settings, ehr, max_rate=our_rate) as client,
    ):
        batch = fetch_cohort(client, setup.records, setup.cohort_rule, sample)
    assert record_ids(list(batch.records)) == record_ids(list(expected.records))
    assert not batch.issues
    assert set(ehr.refused) == ({"rate-limit"} if refused else set())


def test_discoverys_sources_find_and_fetch_the_patient_list_way(
    fhir: FhirClient, population: Population, tmp_path: Path
) -> None:
    setup = study_setup(STUDY)
    found = find(fhir, setup, PatientList(f"Group/{population.group}"), tmp_path)
    assert found.fetch is Fetch.PATIENT
    assert found.patients == sorted(population.expected)
    issues: list[DataIssue] = []
    fetched = fetch_batch(fhir, setup, Fetch.PATIENT, found.patients, issues.append)
    cohort = find_cohort(fhir, setup.cohort, population.tag)
    assert [r.patient for r in fetched.records] == cohort
    assert sorted(fetched.outside) == sorted(set(found.patients) - set(cohort))
    assert not issues


def test_seeding_with_a_group_writes_it_and_removing_the_tag_removes_it(
    fhir: FhirClient, tmp_path: Path
) -> None:
    generate(4, 1516, tmp_path, "ndjson")
    tag = f"test-seedgroup-{uuid.uuid4().hex[:8]}"
    try:
        loaded = seed(fhir, [tmp_path / "fhir"], tag, tmp_path / "seed.done", group=tag)
        assert not loaded.failed
        group = fhir.read_json("Group", tag)
        members = [m["entity"]["reference"] for m in group["member"]]
        assert len(members) == 4
        assert all(member.startswith("Patient/") for member in members)
        assert {"system": TAG_SYSTEM, "code": tag} in group["meta"]["tag"]
        assert registry(fhir, f"Group/{tag}").patients == tuple(sorted(members))
    finally:
        remove_tagged(fhir, tag)
    with pytest.raises(FatalFhirError) as gone:
        fhir.read_json("Group", tag)
    assert gone.value.status in (404, 410)


def test_a_patient_list_run_lists_the_expected_candidates(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    """The whole run through the worker, the patient-list way: the generator's intended list,
    criterion by criterion (as the search way gives it, test_discovery.py). Last: it writes."""
    registry_ref = f"Group/{population.group}"
    cohort = {"source": "patient-list", "patient_list": registry_ref}
    run = run_discovery(redis_client, celery_worker, population, cohort=cohort)

    assert run.state == "done", run
    assert run.batches.failures == ()
    assert run.cohort == len(population.expected)
    # the funnel starts at the cohort: the registry's patients outside it are not in it
    assert run.batches.outside + run.batches.evaluated == run.cohort
    assert run.batches.outside > 0
    candidates, _ = current_candidates(fhir, load_study(STUDY), population.tag)
    assert {c.patient: c.outcome for c in candidates} == population.listed
    for candidate in candidates:
        expected = population.expected[candidate.patient]["criteria"]
        assert {c.id: c.result for c in candidate.criteria} == expected
