"""Discovery against a hospital-like EHR: the strict EHR proxy (tests/strict_ehr.py) in front
of the shared HAPI server, a write store of the tests' own (a second HAPI), and each cohort
source a hospital may have to use.

One tagged population with its Group is loaded into the EHR. A worker reads the EHR only
through the proxy (patient-scoped searches, Group export only, research resources read-only,
links naming an internal host: FHIR_FOREIGN_LINKS=rewrite) and writes to the store. Each
way runs under a run tag of its own, so each writes its own list to the store; each list
must equal, criterion by criterion, the list the search way writes on plain HAPI for the
same population, with no request refused. The tests run in file order: an incremental run
adds a platelet count after the patient-list run, and the last one writes the search way's
list to the EHR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fhir_match.candidates import Candidate, current_candidates
from fhir_match.config import Settings
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient
from fhir_match.screen import criterion_json
from worker import runs
from worker.process import WorkerProcess, start_worker
from worker.runs import run_scope

from ..conftest import ROOT, VAR_LOG
from ..strict_ehr import StrictEhr
from .populations import (
    STUDY,
    Population,
    add_normal_platelet_count,
    loaded_population,
    look_back_from_now,
    run_discovery,
)

pytestmark = pytest.mark.usefixtures("write_store")


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("hospital-population")
    with loaded_population(fhir, folder, 60, 1601, 0.5, "hospital", group=True) as population:
        yield population


@pytest.fixture(scope="module")
def ehr(settings: Settings) -> Iterator[StrictEhr]:
    with StrictEhr(settings.fhir.base_url, lifetime_s=1800) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def hospital_worker(ehr: StrictEhr, write_store: FhirClient) -> Iterator[WorkerProcess]:
    """A worker that reads the EHR through the proxy and writes to the store."""
    VAR_LOG.mkdir(parents=True, exist_ok=True)
    env = {
        "FHIR_BASE_URL": ehr.base_url,
        "FHIR_FOREIGN_LINKS": "rewrite",
        "FHIR_WRITE_URL": write_store.base_url,
    }
    with (VAR_LOG / "test-hospital-worker.log").open("ab") as log:
        worker = start_worker("test-hospital", env=env, stderr=log)
    try:
        yield worker
    finally:
        worker.stop(timeout_s=30)


def the_list(client: FhirClient, tag: str, ehr_base: str = "") -> dict[str, Any]:
    """The last complete run's list, by patient: outcome and every criterion's result."""
    candidates, source = current_candidates(client, load_study(STUDY), tag, "", ehr_base)
    assert source.complete is not None
    return {c.patient: _criteria(c) for c in candidates}


def _criteria(candidate: Candidate) -> tuple[str, list[dict[str, object]]]:
    return candidate.outcome, [criterion_json(r) for r in candidate.criteria]


def hospital_run(
    store: redis.Redis,
    worker: WorkerProcess,
    ehr: StrictEhr,
    population: Population,
    tag: str,
    **kwargs: Any,
) -> runs.Run:
    """A run of the population under ``tag``, checked to have made no refused request."""
    refused = ehr.refusals
    run = run_discovery(store, worker, population, tag=tag, **kwargs)
    assert ehr.refusals == refused, ehr.refused
    return run


def test_status_says_which_way_discovery_will_run(ehr: StrictEhr, population: Population) -> None:
    def ways(**env: str) -> dict[str, str]:
        shown = subprocess.run(
            [sys.executable, "-m", "fhir_match.cli", "status", "--no-worker"],
            cwd=ROOT,
            env={**os.environ, "FHIR_BASE_URL": ehr.base_url, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return dict(json.loads(shown.stdout)["discovery"])

    assert ways(FHIR_MATCH_COHORT_GROUP=population.group)[STUDY].startswith("group-export")
    registry = ways(FHIR_MATCH_PATIENT_LIST=f"Group/{population.group}")[STUDY]
    assert registry.startswith("patient-list")
    nothing = ways()[STUDY]
    assert nothing.startswith("none")
    assert "FHIR_MATCH_COHORT_GROUP" in nothing  # says what to configure


def test_a_group_export_run_lists_the_generators_candidates(
    redis_client: redis.Redis,
    hospital_worker: WorkerProcess,
    ehr: StrictEhr,
    write_store: FhirClient,
    population: Population,
) -> None:
    cohort = {"source": "auto", "group": population.group}
    run = hospital_run(
        redis_client, hospital_worker, ehr, population, f"{population.tag}-g", cohort=cohort
    )

    assert run.state == "done", run
    assert run.source.startswith("group-export")
    assert run.fetch == "files"
    assert run.batches.failures == ()
    listed = the_list(write_store, f"{population.tag}-g", ehr.base_url)
    assert {p: outcome for p, (outcome, _) in listed.items()} == population.listed


def test_a_patient_list_run_lists_the_generators_candidates(
    redis_client: redis.Redis,
    hospital_worker: WorkerProcess,
    ehr: StrictEhr,
    write_store: FhirClient,
    population: Population,
) -> None:
    cohort = {"source": "patient-list", "patient_list": f"Group/{population.group}"}
    run = hospital_run(
        redis_client, hospital_worker, ehr, population, f"{population.tag}-p", cohort=cohort
    )

    assert run.state == "done", run
    assert run.fetch == "patient"
    assert run.batches.failures == ()
    listed = the_list(write_store, f"{population.tag}-p", ehr.base_url)
    assert {p: outcome for p, (outcome, _) in listed.items()} == population.listed


def test_an_incremental_group_export_evaluates_only_the_changed_patient(
    fhir: FhirClient,
    redis_client: redis.Redis,
    hospital_worker: WorkerProcess,
    ehr: StrictEhr,
    write_store: FhirClient,
    population: Population,
) -> None:
    tag = f"{population.tag}-g"
    before = the_list(write_store, tag, ehr.base_url)
    chosen = sorted(p for p, (outcome, _) in before.items() if outcome == "candidate")[0]
    look_back_from_now(redis_client, run_scope(STUDY, tag))
    add_normal_platelet_count(fhir, chosen, population.tag)

    cohort = {"source": "group-export", "group": population.group}
    run = hospital_run(
        redis_client, hospital_worker, ehr, population, tag, cohort=cohort, mode="incremental"
    )

    assert run.state == "done", run
    assert run.full is False
    assert run.fetch == "patient"  # changed patients fetched whole, one at a time
    assert (run.cohort, run.batches.evaluated) == (1, 1)
    after = the_list(write_store, tag, ehr.base_url)
    assert chosen not in after  # the normal count unlists them
    assert after == {p: v for p, v in before.items() if p != chosen}


def test_every_way_lists_what_the_search_way_lists_on_plain_hapi(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    ehr: StrictEhr,
    write_store: FhirClient,
    population: Population,
) -> None:
    """Last: the search way on plain HAPI, one server, writes its list to the EHR."""
    run = run_discovery(redis_client, celery_worker, population, cohort={"source": "search"})
    assert run.state == "done", run

    searched = the_list(fhir, population.tag)
    # after the incremental test's normal count: all but that patient
    (unlisted,) = set(population.listed) - set(searched)
    assert {p: outcome for p, (outcome, _) in searched.items()} == {
        p: outcome for p, outcome in population.listed.items() if p != unlisted
    }
    assert the_list(write_store, f"{population.tag}-g", ehr.base_url) == searched
    # the patient-list run came before that count
    registry = the_list(write_store, f"{population.tag}-p", ehr.base_url)
    assert {p: v for p, v in registry.items() if p != unlisted} == searched
