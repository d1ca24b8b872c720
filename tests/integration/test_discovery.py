"""Discovery end to end on the real HAPI server, Redis and a Celery worker process.

One synthetic population (60% with ITP: 7 candidates and 5 potential candidates) is loaded with a
run tag; every run is restricted to that tag, and the tag removes it all afterwards.
The tests run in file order: the last ones change the data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import redis

from fhir_match.candidates import Candidate, current_candidates
from fhir_match.cohort import find_cohort
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.files import fhir_files, read_resources
from fhir_match.funnel import Funnel
from fhir_match.grouping import patient_of
from fhir_match.records import Json
from fhir_match.runtime import study_setup
from fhir_match.screen import ScreenSummary, criterion_json, screen, study_engine
from fhir_match.tagging import tag_token
from fhir_match.writeback import RUN_SYSTEM, funnel_of, match_of
from worker import runs
from worker.process import WorkerProcess
from worker.runs import run_scope
from worker.tasks import screen_patients

from ..conftest import ROOT
from .conftest import RunTag
from .populations import (
    AS_OF,
    RUN_TIMEOUT_S,
    STUDY,
    Population,
    add_normal_platelet_count,
    loaded_population,
    look_back_from_now,
    run_discovery,
)


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("population")
    with loaded_population(fhir, folder, 60, 37, 0.6, "discovery") as population:
        yield population


def listed(fhir: FhirClient, population: Population) -> dict[str, Candidate]:
    """The population's patients on the study's list (other data may share the server)."""
    candidates, _ = current_candidates(fhir, load_study(STUDY), population.tag)
    return {c.patient: c for c in candidates if c.patient in population.expected}


def tagged_count(fhir: FhirClient, resource_type: str, tag: str) -> int:
    return fhir.total(Search(resource_type).where("_tag", tag_token(tag)))


def run_group(fhir: FhirClient, run_id: str) -> Json:
    """The snapshot a run wrote, found by its identifier."""
    (group,) = fhir.search(Search("Group").where("identifier", f"{RUN_SYSTEM}|{run_id}"))
    return to_json(group)


def run_screen(folder: Path, output: Path) -> ScreenSummary:
    """`fhir-match screen` on a folder, as of the runs' date."""
    setup = study_setup(STUDY)
    with (
        study_engine(setup.study, setup.normaliser, date.fromisoformat(AS_OF)) as engine,
        output.open("w") as out,
    ):
        return screen(
            [folder], setup.study, date.fromisoformat(AS_OF), setup.normaliser, engine, out
        )


def only_patients(source: Path, patients: set[str], folder: Path) -> Path:
    """The records of ``patients`` from ``source`` as one NDJSON file, shared resources
    (Medication) kept."""
    folder.mkdir()
    with (folder / "records.ndjson").open("w") as out:
        for resource in read_resources(fhir_files(source), lambda issue: None):
            owner = patient_of(resource)
            if owner is None or owner in patients:
                out.write(json.dumps(resource, ensure_ascii=False) + "\n")
    return folder


def test_a_run_lists_the_expected_candidates_with_their_evidence(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    run = run_discovery(redis_client, celery_worker, population)

    assert run.state == "done", run
    assert run.batches.failures == ()
    assert run.cohort >= len(population.listed)
    candidates = listed(fhir, population)
    assert {p: c.outcome for p, c in candidates.items()} == population.listed
    assert run.result["listed"] == len(population.listed)
    for patient, candidate in candidates.items():
        assert candidate.status == candidate.outcome
        expected = population.expected[patient]["criteria"]
        assert {c.id: c.result for c in candidate.criteria} == expected
    # the evidence a reviewer opens: a Provenance per subject, entities labelled by criterion
    some = next(iter(candidates.values()))
    provenance = list(fhir.search(Search("Provenance").where("target", some.subject)))
    assert len(provenance) == 1
    entities = to_json(provenance[0])["entity"]
    decided = {r for c in some.criteria for r in c.evidence}
    assert {e["what"]["reference"] for e in entities} == decided
    assert all(e["extension"][0]["valueCode"] for e in entities)
    assert tagged_count(fhir, "Group", population.tag) == 1


def test_the_live_path_agrees_with_screen_on_the_same_data(
    fhir: FhirClient, population: Population, tmp_path: Path
) -> None:
    output = tmp_path / "screen.ndjson"
    run_screen(population.folder / "fhir", output)
    screened = {
        line["patient"]: line
        for line in map(json.loads, output.read_text().splitlines())
        if line["outcome"] != "ineligible"
    }
    live = listed(fhir, population)

    assert set(live) == set(screened)
    for patient, candidate in live.items():
        assert candidate.outcome == screened[patient]["outcome"]
        assert [criterion_json(c) for c in candidate.criteria] == screened[patient]["criteria"]


def test_the_runs_funnel_on_its_group_equals_screens_on_the_same_patients(
    fhir: FhirClient, redis_client: redis.Redis, population: Population, tmp_path: Path
) -> None:
    # The first test's run: its Group, and its record in Redis.
    (group,) = map(to_json, fhir.search(Search("Group").where("_tag", tag_token(population.tag))))
    run = runs.load_run(redis_client, group["identifier"][0]["value"])
    funnel = funnel_of(group)
    assert funnel is not None
    assert run is not None
    assert run.funnel == funnel.as_json()
    assert funnel.scope == "full"
    assert funnel.not_evaluated == 0
    # A run reads only its cohort, the patients the study's discovery searches find.
    cohort = set(find_cohort(fhir, study_setup(STUDY).cohort, population.tag))
    assert funnel.found == run.cohort == len(cohort)

    summary = run_screen(
        only_patients(population.folder / "fhir", cohort, tmp_path / "cohort"),
        tmp_path / "screen.ndjson",
    )

    assert summary.patients == len(cohort)
    assert summary.funnel == funnel
    # Everyone outside the cohort is removed by inc-1 or inc-2 ("who discovery must find").
    everyone = run_screen(population.folder / "fhir", tmp_path / "everyone.ndjson").funnel
    outside = Funnel(
        tuple((c, n - dict(funnel.removed)[c]) for c, n in everyone.removed),
        everyone.candidates - funnel.candidates,
        everyone.potential_candidates - funnel.potential_candidates,
    )
    assert outside.found == len(population.expected) - len(cohort)
    assert {c for c, n in outside.removed if n} <= {"inc-1", "inc-2"}
    assert (outside.candidates, outside.potential_candidates) == (0, 0)


def test_the_cohort_holds_a_diagnosis_coded_by_its_systems_oid(
    fhir: FhirClient, run_tag: RunTag
) -> None:
    # C-CDA-derived FHIR names ICD-10-CM by its OID, and a server matches systems exactly.
    patient = fhir.create(parse_resource(run_tag.mark({"resourceType": "Patient"})))
    condition: dict[str, object] = {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient.id}"},
        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.90", "code": "D69.3"}]},
    }
    fhir.create(parse_resource(run_tag.mark(condition)))

    cohort = find_cohort(fhir, study_setup(STUDY).cohort, run_tag.code)

    assert cohort == [f"Patient/{patient.id}"]


def test_a_second_run_writes_nothing_new(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    subjects = tagged_count(fhir, "ResearchSubject", population.tag)
    provenance = tagged_count(fhir, "Provenance", population.tag)

    run = run_discovery(redis_client, celery_worker, population)

    assert run.state == "done"
    assert (run.batches.created, run.batches.updated) == (0, 0)
    assert tagged_count(fhir, "ResearchSubject", population.tag) == subjects
    assert tagged_count(fhir, "Provenance", population.tag) == provenance
    assert tagged_count(fhir, "Group", population.tag) == 2  # one snapshot per run


def test_a_batch_task_run_twice_changes_nothing_the_second_time(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    run = run_discovery(redis_client, celery_worker, population)
    patients = sorted(population.listed)[:5]
    before = {p: c.subject for p, c in listed(fhir, population).items()}

    for _ in range(2):
        report = screen_patients.apply_async(args=[run.id, 0, patients], queue=celery_worker.queue)
        report.get(timeout=RUN_TIMEOUT_S)

    assert {p: c.subject for p, c in listed(fhir, population).items()} == before


def test_two_runs_of_a_study_never_overlap(
    redis_client: redis.Redis, celery_worker: WorkerProcess, population: Population
) -> None:
    scope = f"{STUDY}:{population.tag}"  # a tagged population is locked on its own
    assert runs.acquire_lock(redis_client, scope, "another-run")
    try:
        run = run_discovery(redis_client, celery_worker, population)
    finally:
        runs.release_lock(redis_client, scope, "another-run")

    assert run.state == "skipped"
    assert "another-run" in run.reason


def test_a_coordinators_status_survives_a_rerun(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    chosen = next(c for c in listed(fhir, population).values() if c.outcome == "candidate")
    subject = to_json(fhir.read("ResearchSubject", chosen.subject.split("/")[1]))
    subject["status"] = "eligible"
    fhir.update(parse_resource(subject), if_match=subject["meta"]["versionId"])

    run = run_discovery(redis_client, celery_worker, population)

    assert run.state == "done"
    after = listed(fhir, population)[chosen.patient]
    assert after.status == "eligible"
    assert after.outcome == "candidate"


def test_a_normal_newest_platelet_count_unlists_the_patient(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    chosen = next(
        c
        for c in listed(fhir, population).values()
        if c.outcome == "candidate" and c.status == "candidate"
    )
    since = look_back_from_now(redis_client, run_scope(STUDY, population.tag))
    add_normal_platelet_count(fhir, chosen.patient, population.tag)

    run = run_discovery(redis_client, celery_worker, population, mode="incremental")

    assert run.state == "done"
    assert run.full is False
    assert run.since == since.isoformat()
    # Only the patient with the new record was fetched in full and evaluated again.
    assert run.batches.unchanged == run.cohort - 1
    assert run.batches.evaluated == 1
    funnel = funnel_of(run_group(fhir, run.id))
    assert funnel is not None
    assert funnel.scope == "incremental"  # counts only the patients it re-evaluated
    assert funnel.found == 1
    assert dict(funnel.removed)["inc-3"] >= 1
    subject = to_json(fhir.read("ResearchSubject", chosen.subject.split("/")[1]))
    assert subject["status"] == "ineligible"  # marked, not deleted
    assert match_of(subject)["outcome"] == "ineligible"
    assert chosen.patient not in listed(fhir, population)


def test_discover_and_candidates_commands(
    celery_worker: WorkerProcess, population: Population
) -> None:
    env = {**os.environ, "FHIR_MATCH_QUEUE": celery_worker.queue}
    discover_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_match.cli",
            "discover",
            "--as-of",
            AS_OF,
            "--tag",
            population.tag,
            "--wait",
            "--timeout",
            str(RUN_TIMEOUT_S),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
    )
    assert discover_run.returncode == 0, discover_run.stderr
    assert json.loads(discover_run.stdout)["state"] == "done"

    shown = subprocess.run(
        [
            *(sys.executable, "-m", "fhir_match.cli", "candidates", "--format", "ndjson"),
            *("--tag", population.tag),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    ours = {line["patient"] for line in lines} & set(population.expected)
    assert ours
    assert all(len(line["criteria"]) == 23 for line in lines)


def test_a_bulk_run_records_the_same_funnel_as_a_search_run(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> None:
    searched = run_discovery(redis_client, celery_worker, population)
    bulk = run_discovery(redis_client, celery_worker, population, fetch="bulk")

    assert bulk.state == "done", bulk
    funnel = funnel_of(run_group(fhir, bulk.id))
    assert funnel is not None
    assert funnel.found == bulk.cohort > 0
    assert funnel == funnel_of(run_group(fhir, searched.id))
    assert bulk.funnel == searched.funnel == funnel.as_json()
