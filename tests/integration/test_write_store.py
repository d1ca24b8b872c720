"""Discovery reading the shared HAPI server (the EHR) and writing its list to a second HAPI
server of the tests' own (the write store, ``FHIR_WRITE_URL``).

One tagged population is loaded into the EHR. Runs go in-process, step by step as the
worker takes them (find, batches, finish). The list in the store must be the generator's,
cite the EHR's resources by absolute reference, leave nothing of fhir-match's in the EHR,
and equal, criterion by criterion, the list of a run on one server. The tests run in file
order: the last one writes to the EHR.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
import redis

from fhir_match.candidates import Candidate, current_candidates
from fhir_match.cohort import find_cohort
from fhir_match.config import Settings, load_settings
from fhir_match.discovery import (
    PATIENTS_PER_BATCH,
    FinishReport,
    ensure_study,
    finish_run,
    screen_batch,
)
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import to_json
from fhir_match.funnel import Funnel
from fhir_match.runtime import study_setup
from fhir_match.screen import criterion_json, study_engine
from fhir_match.sources import Fetch
from fhir_match.tagging import tag_token
from fhir_match.writeback import RUN_SYSTEM, STUDY_SYSTEM, SUBJECT_SYSTEM, RunInfo, WriteSummary
from worker.process import start_worker

from ..conftest import ROOT, VAR_LOG
from .populations import AS_OF, STUDY, Population, loaded_population, run_discovery
from .test_review import start_app

WRITTEN = ("ResearchStudy", "ResearchSubject", "Provenance", "Group")


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("write-store-population")
    with loaded_population(fhir, folder, 40, 29, 0.6, "writestore") as population:
        yield population


@pytest.fixture(scope="module")
def two_servers(write_store: FhirClient) -> Settings:
    """The test's settings, with the write store: as FHIR_WRITE_URL gives them."""
    return load_settings({**os.environ, "FHIR_WRITE_URL": write_store.base_url})


def discover(settings: Settings, tag: str) -> tuple[FinishReport, WriteSummary]:
    """A full run of the tagged population, its steps in this process: what the finish
    recorded, and what the batches wrote."""
    setup = study_setup(STUDY)
    written = WriteSummary()
    removed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    evaluated = 0
    with (
        study_engine(setup.study, setup.normaliser, date.fromisoformat(AS_OF)) as engine,
        FhirClient(settings.fhir) as ehr,
        FhirClient(settings.store) as store,
    ):
        started = datetime.now(UTC).isoformat(timespec="seconds")
        run = RunInfo(f"test-{uuid.uuid4().hex[:12]}", AS_OF, started, tag, settings.ehr_base)
        study_ref = ensure_study(store, setup.study, tag)
        cohort = find_cohort(ehr, setup.cohort, tag)
        for start in range(0, len(cohort), PATIENTS_PER_BATCH):
            batch = cohort[start : start + PATIENTS_PER_BATCH]
            report = screen_batch(
                ehr, setup, engine, Fetch.SEARCH, batch, study_ref, run, store=store
            )
            assert not report.failures
            written.add(report.written)
            removed += report.removed
            outcomes += report.outcomes
            evaluated += report.evaluated
        funnel = Funnel.of(setup.study, removed, outcomes, len(cohort) - evaluated)
        return finish_run(store, setup, study_ref, run, set(cohort), funnel), written


def the_list(client: FhirClient, population: Population, ehr_base: str = "") -> list[Candidate]:
    candidates, source = current_candidates(client, load_study(STUDY), population.tag, "", ehr_base)
    assert source.complete is not None
    return candidates


def criteria_by_patient(candidates: list[Candidate]) -> dict[str, object]:
    return {c.patient: (c.outcome, [criterion_json(r) for r in c.criteria]) for c in candidates}


def tagged(client: FhirClient, resource_type: str, tag: str) -> int:
    return client.total(Search(resource_type).where("_tag", tag_token(tag)))


def ours(client: FhirClient, tag: str) -> dict[str, int]:
    """What fhir-match wrote for a tagged population's runs, by type: the population's own
    research resources (trials its patients are in) do not count."""
    token = tag_token(tag)
    return {
        "ResearchStudy": client.total(
            Search("ResearchStudy").where("identifier", f"{STUDY_SYSTEM}|{STUDY}:{tag}")
        ),
        "ResearchSubject": client.total(
            Search("ResearchSubject").where("identifier", f"{SUBJECT_SYSTEM}|").where("_tag", token)
        ),
        "Provenance": tagged(client, "Provenance", tag),
        "Group": client.total(
            Search("Group").where("identifier", f"{RUN_SYSTEM}|").where("_tag", token)
        ),
    }


NOTHING = dict.fromkeys(WRITTEN, 0)


def test_the_list_goes_to_the_store_citing_the_ehr_and_nothing_to_the_ehr(
    fhir: FhirClient,
    write_store: FhirClient,
    two_servers: Settings,
    population: Population,
) -> None:
    ehr = fhir.base_url.rstrip("/")
    assert two_servers.ehr_base.rstrip("/") == ehr

    finish, written = discover(two_servers, population.tag)

    assert finish.state.state == "complete", finish.state
    assert written.created == len(population.listed)
    candidates = the_list(write_store, population, two_servers.ehr_base)
    assert {c.patient: c.outcome for c in candidates} == population.listed
    for candidate in candidates:
        expected = population.expected[candidate.patient]["criteria"]
        assert {c.id: c.result for c in candidate.criteria} == expected
    # in the store, every reference to the EHR is absolute
    subject = to_json(
        next(
            iter(
                write_store.search(
                    Search("ResearchSubject").where("_tag", tag_token(population.tag))
                )
            )
        )
    )
    assert subject["individual"]["reference"].startswith(f"{ehr}/Patient/")
    assert subject["study"]["reference"].startswith("ResearchStudy/")
    patient = subject["individual"]["reference"]
    found = write_store.total(Search("ResearchSubject").where("individual", patient))
    assert found == 1  # the store searches the EHR's patients by their absolute reference
    evidence = [
        part["valueReference"]["reference"]
        for extension in subject["extension"]
        for part in extension.get("extension") or []
        if part.get("url") == "evidence"
    ]
    assert evidence
    assert all(r.startswith(f"{ehr}/") for r in evidence)
    provenance = to_json(
        next(
            iter(
                write_store.search(
                    Search("Provenance").where("target", f"ResearchSubject/{subject['id']}")
                )
            )
        )
    )
    assert {e["what"]["reference"] for e in provenance["entity"]} == set(evidence)
    (group,) = write_store.search(Search("Group").where("_tag", tag_token(population.tag)))
    members = [m["entity"]["reference"] for m in to_json(group)["member"]]
    assert len(members) == len(population.listed)
    assert all(m.startswith(f"{ehr}/Patient/") for m in members)
    # and nothing of fhir-match's in the EHR (where the store has each kind)
    assert all(ours(write_store, population.tag).values())
    assert ours(fhir, population.tag) == NOTHING


def test_a_second_run_writes_nothing_new(
    fhir: FhirClient,
    write_store: FhirClient,
    two_servers: Settings,
    population: Population,
) -> None:
    before = {t: tagged(write_store, t, population.tag) for t in WRITTEN}

    finish, written = discover(two_servers, population.tag)

    assert finish.state.state == "complete"
    assert (written.created, written.updated, finish.left_cohort.updated) == (0, 0, 0)
    after = {t: tagged(write_store, t, population.tag) for t in WRITTEN}
    assert after == {**before, "Group": before["Group"] + 1}  # one Group per run, no more
    assert ours(fhir, population.tag) == NOTHING


def test_a_run_through_the_worker_writes_to_the_store_too(
    fhir: FhirClient,
    write_store: FhirClient,
    redis_client: redis.Redis,
    population: Population,
) -> None:
    VAR_LOG.mkdir(parents=True, exist_ok=True)
    with (VAR_LOG / "test-write-store-worker.log").open("ab") as log:
        worker = start_worker(
            "test-write-store", env={"FHIR_WRITE_URL": write_store.base_url}, stderr=log
        )
    try:
        run = run_discovery(redis_client, worker, population)
    finally:
        worker.stop(timeout_s=30)

    assert run.state == "done", run
    assert (run.batches.created, run.batches.updated) == (0, 0)  # the store had it all
    assert run.result["listed"] == len(population.listed)
    (group,) = write_store.search(Search("Group").where("identifier", f"{RUN_SYSTEM}|{run.id}"))
    assert len(to_json(group)["member"]) == len(population.listed)
    assert ours(fhir, population.tag) == NOTHING


def test_candidates_prints_the_stores_list_with_the_ehrs_references(
    write_store: FhirClient, two_servers: Settings, population: Population
) -> None:
    printed = subprocess.run(
        [str(Path(sys.executable).parent / "fhir-match"), "candidates", "--format", "ndjson"],
        cwd=ROOT,
        env={
            **os.environ,
            "FHIR_WRITE_URL": write_store.base_url,
            "FHIR_MATCH_TAG": population.tag,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    listed = the_list(write_store, population, two_servers.ehr_base)
    assert {line["patient"]: (line["outcome"], line["criteria"]) for line in lines} == (
        criteria_by_patient(listed)
    )
    assert all("://" not in r for line in lines for c in line["criteria"] for r in c["evidence"])


def test_the_review_app_shows_the_ehrs_evidence_and_decides_in_the_store(
    fhir: FhirClient,
    write_store: FhirClient,
    population: Population,
    tmp_path: Path,
) -> None:
    patient = sorted(p for p, o in population.listed.items() if o == "candidate")[0]
    patient_id = patient.split("/")[1]
    process, url = start_app(
        tmp_path / "app.log",
        {"FHIR_MATCH_TAG": population.tag, "FHIR_WRITE_URL": write_store.base_url},
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as browser:
            page = browser.get(f"/studies/kn5501/patients/{patient_id}")
            assert page.status_code == 200
            # each cited resource read from the EHR, none missing or refused
            assert "no longer on the FHIR server" not in page.text
            assert "not on the EHR" not in page.text
            assert "Condition/" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            version = re.search(r'name="version" value="([^"]+)"', page.text)
            assert csrf
            assert version
            saved = browser.post(
                f"/studies/kn5501/patients/{patient_id}/decision",
                data={"csrf": csrf[1], "version": version[1], "decision": "eligible"},
            )
            assert saved.status_code == 303
            assert "Saved" in browser.get(saved.headers["location"]).text
            listing = browser.get("/studies/kn5501")
            assert listing.status_code == 200
            assert f"/studies/kn5501/patients/{patient_id}" in listing.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    (subject,) = write_store.search(
        Search("ResearchSubject").where("individual", f"{fhir.base_url.rstrip('/')}/{patient}")
    )
    assert to_json(subject)["status"] == "eligible"
    decisions = write_store.search(
        Search("Provenance").where("target", f"ResearchSubject/{subject.id}")
    )
    assert len(list(decisions)) == 2  # discovery's, and the coordinator's
    assert ours(fhir, population.tag) == NOTHING


def test_one_server_lists_the_same_per_criterion(
    fhir: FhirClient, write_store: FhirClient, two_servers: Settings, population: Population
) -> None:
    one_server = load_settings({k: v for k, v in os.environ.items() if "FHIR_WRITE" not in k})
    assert one_server.ehr_base == ""

    finish, _ = discover(one_server, population.tag)

    assert finish.state.state == "complete"
    in_the_ehr = the_list(fhir, population)
    assert all("://" not in c.patient for c in in_the_ehr)
    in_the_store = the_list(write_store, population, two_servers.ehr_base)
    assert criteria_by_patient(in_the_ehr) == criteria_by_patient(in_the_store)
