"""The study's ResearchStudy among a hospital's own records of the trial, and a failed run
after a complete one, on the real HAPI server (and a real worker where a run is needed).

Everything written carries the test's run tag: a tagged run sees only tagged studies, so
these tests never meet the demo's study or another test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from fhir_match.candidates import current_candidates
from fhir_match.config import load_settings, research_study_setting
from fhir_match.discovery import ensure_study, finish_run, record_failed_run
from fhir_match.errors import ConfigError
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.funnel import Funnel
from fhir_match.runtime import study_setup
from fhir_match.writeback import (
    RUN_SYSTEM,
    STUDY_SYSTEM,
    RunInfo,
    run_state_of,
)
from worker import runs
from worker.process import WorkerProcess

from ..conftest import ROOT
from .conftest import RunTag
from .populations import AS_OF, STUDY, Population, loaded_population, run_discovery
from .test_review import start_app

KN5501 = load_study(STUDY)
SETTING = research_study_setting(STUDY)


def hospital_study(fhir: FhirClient, run_tag: RunTag) -> str:
    """The hospital's own ResearchStudy for the trial: the registry identifier only."""
    resource = run_tag.mark(
        {
            "resourceType": "ResearchStudy",
            "identifier": [
                {"system": KN5501.identifier_system, "value": KN5501.identifier},
                {"system": "https://hospital.example/studies", "value": "ITP-CARNK-01"},
            ],
            "status": "active",
            "title": "CAR-NK for ITP (hospital research office record)",
        }
    )
    return f"ResearchStudy/{fhir.create(parse_resource(resource)).id}"


def version(fhir: FhirClient, reference: str) -> str:
    kind, _, resource_id = reference.partition("/")
    return str(to_json(fhir.read(kind, resource_id))["meta"]["versionId"])


def test_ours_wins_over_a_hospital_study_created_after_it(
    fhir: FhirClient, run_tag: RunTag
) -> None:
    run_tag.types.add("ResearchStudy")
    with ThreadPoolExecutor(4) as pool:  # racing first runs create one study, not four
        created = set(pool.map(lambda _: ensure_study(fhir, KN5501, run_tag.code), range(4)))
    (ours,) = created
    own = f"{STUDY_SYSTEM}|{KN5501.id}:{run_tag.code}"
    assert fhir.total(Search("ResearchStudy").where("identifier", own)) == 1

    theirs = hospital_study(fhir, run_tag)

    assert ensure_study(fhir, KN5501, run_tag.code) == ours
    assert version(fhir, theirs) == "1"


def test_a_single_hospital_study_is_adopted_and_never_modified(
    fhir: FhirClient, run_tag: RunTag
) -> None:
    theirs = hospital_study(fhir, run_tag)

    assert ensure_study(fhir, KN5501, run_tag.code) == theirs
    assert ensure_study(fhir, KN5501, run_tag.code) == theirs
    assert version(fhir, theirs) == "1"
    assert fhir.total(Search("ResearchStudy").where("_tag", run_tag.token)) == 1


def test_two_hospital_studies_fail_the_run_once_with_what_to_configure(
    fhir: FhirClient,
    run_tag: RunTag,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    tmp_path: Path,
) -> None:
    first, second = hospital_study(fhir, run_tag), hospital_study(fhir, run_tag)

    with pytest.raises(ConfigError) as failure:
        ensure_study(fhir, KN5501, run_tag.code)
    for text in (SETTING, first, second):
        assert text in str(failure.value)

    run = run_discovery(redis_client, celery_worker, Population(run_tag.code, tmp_path, {}))
    assert run.state == "failed"
    assert SETTING in run.reason
    assert first in run.reason
    assert second in run.reason
    assert fhir.total(Search("Group").where("_tag", run_tag.token)) == 0

    configured = load_settings({**os.environ, SETTING: second}).research_study(STUDY)
    assert ensure_study(fhir, KN5501, run_tag.code, configured) == second
    assert (version(fhir, first), version(fhir, second)) == ("1", "1")


# -- a failed run after a complete one ------------------------------------------------------


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("runs-population")
    with loaded_population(fhir, folder, 16, 23, 1.0, "runs") as population:
        yield population


@pytest.fixture(scope="module")
def complete_then_failed(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> runs.Run:
    """A complete run through the worker, then one whose every batch failed (the counts
    and failure texts the worker hands finish_run), then one stopped before its batches."""
    complete = run_discovery(redis_client, celery_worker, population)
    assert complete.state == "done", complete
    assert complete.result["state"] == "complete"
    setup = study_setup(STUDY)
    study_ref = complete.study_ref
    now = datetime.now(UTC).isoformat(timespec="seconds")
    all_failed = RunInfo("test-all-batches-failed", AS_OF, now, population.tag)
    nobody = Funnel.of(setup.study, {}, {}, not_evaluated=complete.cohort)
    failures = ["FHIR server error 503 on GET Condition"] * 4
    report = finish_run(
        fhir, setup, study_ref, all_failed, None, nobody, failures=failures, failed_batches=4
    )
    assert report.state.state == "failed"
    stopped = RunInfo("test-cohort-search-failed", AS_OF, now, population.tag)
    reason = "FHIR server error 500 on GET Condition (the cohort search)"
    assert record_failed_run(fhir, setup, study_ref, stopped, reason)
    return complete


def test_the_failed_runs_groups_say_so(fhir: FhirClient, complete_then_failed: runs.Run) -> None:
    for run, reason in (
        ("test-all-batches-failed", "4 x FHIR server error 503 on GET Condition"),
        ("test-cohort-search-failed", "the cohort search"),
    ):
        (group,) = fhir.search(Search("Group").where("identifier", f"{RUN_SYSTEM}|{run}"))
        state = run_state_of(to_json(group))
        assert state.state == "failed"
        assert reason in state.reasons[0]


def test_candidates_come_from_the_complete_run_and_warn_of_the_failed_ones(
    fhir: FhirClient, population: Population, complete_then_failed: runs.Run
) -> None:
    candidates, source = current_candidates(fhir, KN5501, population.tag)

    assert {c.patient: c.outcome for c in candidates} == population.listed
    assert source.complete is not None
    assert source.complete.run == complete_then_failed.id
    assert [r.run for r in source.later] == [
        "test-cohort-search-failed",
        "test-all-batches-failed",
    ]
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "fhir-match"), "candidates", "--tag", population.tag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"the list of run {complete_then_failed.id} (complete" in shown.stderr
    assert "warning: a later run test-all-batches-failed" in shown.stderr
    assert "was failed: evaluated 0 of" in shown.stderr
    assert f"{len(population.listed)} candidates for kn5501" in shown.stderr


def test_the_review_app_shows_the_complete_runs_funnel_and_flags_the_failed_run(
    population: Population, complete_then_failed: runs.Run, tmp_path: Path
) -> None:
    process, url = start_app(tmp_path / "app.log", {"FHIR_MATCH_TAG": population.tag})
    try:
        with httpx.Client(base_url=url, timeout=60) as browser:
            home = browser.get("/")
            study = browser.get("/studies/kn5501")
            funnel = browser.get("/studies/kn5501/funnel.csv")
            funnel_page = browser.get("/studies/kn5501/funnel")
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert "(a later run was failed)" in home.text  # the studies page flags it too
    assert study.status_code == 200
    assert f"The list of the last complete run ({complete_then_failed.id}" in study.text
    assert "A later run was failed" in study.text
    assert "4 x FHIR server error 503 on GET Condition" in study.text
    assert "it evaluated 0 of" in study.text
    assert study.text.count('<th scope="row">') == len(population.listed)
    assert "first run" in study.text  # compared with complete runs only: no previous one
    assert "A later run was failed" in funnel_page.text
    rows = funnel.text.splitlines()
    found = next(r for r in rows if r.startswith("Found by discovery"))
    assert found.endswith(f",{complete_then_failed.cohort}")
    assert not any(r.startswith("Could not be evaluated") for r in rows)
    recorded = complete_then_failed.funnel
    assert f"Candidates,,,0,{recorded['candidates']}" in rows
