"""Planning the write-back (pure): what a run writes for a patient, given what is there."""

from __future__ import annotations

from typing import Any

from fhir_match.cohort import cohort_searches
from fhir_match.evaluate.study import load_study
from fhir_match.fetch import patient_chunks, record_searches
from fhir_match.funnel import Funnel
from fhir_match.records import CriterionResult, PatientEvaluation
from fhir_match.runtime import study_setup
from fhir_match.writeback import (
    EXT_MATCH,
    RunInfo,
    RunState,
    criteria_of,
    is_ours,
    match_of,
    plan_change,
    snapshot_group,
    study_resource,
)
from worker.schedule import beat_schedule

STUDY = load_study("kn5501")
STUDY_REF = "ResearchStudy/1"
PATIENT = "Patient/p1"
RUN = RunInfo("run-1", "2026-06-01", "2026-06-01T02:00:00+00:00")
LATER = RunInfo("run-2", "2026-06-02", "2026-06-02T02:00:00+00:00")


def evaluation(outcome: Any = "candidate", platelets: Any = "met") -> PatientEvaluation:
    criteria = (
        CriterionResult("inc-1", "inclusion", "met", "age 44", (PATIENT,)),
        CriterionResult("inc-3", "inclusion", platelets, "platelets 23", ("Observation/o1",)),
        CriterionResult("exc-9", "exclusion", "not-met", "no pregnancy on record", ()),
    )
    return PatientEvaluation(PATIENT, "kn5501", "2026-06-01", outcome, criteria)


def written(change: Any, version: str = "1") -> dict[str, Any]:
    """The subject as the server would hold it after the change."""
    return {**change.subject, "id": "s1", "meta": {"versionId": version}}


def test_a_new_candidate_is_created_with_its_evidence() -> None:
    change = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)

    assert change is not None
    assert change.action == "create"
    subject = change.subject
    assert subject["status"] == "candidate"
    assert subject["identifier"][0]["value"] == "kn5501-p1"
    assert subject["individual"] == {"reference": PATIENT}
    assert match_of(subject)["outcome"] == "candidate"
    assert [c.id for c in criteria_of(subject)] == ["inc-1", "inc-3", "exc-9"]
    assert criteria_of(subject)[1].evidence == ("Observation/o1",)
    assert change.provenance is not None
    entities = change.provenance["entity"]
    assert {e["what"]["reference"] for e in entities} == {PATIENT, "Observation/o1"}
    assert "inc-3 met: platelets 23" in next(
        e["what"]["display"] for e in entities if e["what"]["reference"] == "Observation/o1"
    )


def test_an_ineligible_patient_without_a_subject_gets_none() -> None:
    assert plan_change(STUDY, STUDY_REF, PATIENT, evaluation("ineligible"), None, RUN) is None


def test_nothing_is_written_when_nothing_changed() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None

    assert plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), written(first), LATER) is None


def test_changed_evidence_updates_the_subject_with_if_match() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None

    change = plan_change(
        STUDY,
        STUDY_REF,
        PATIENT,
        evaluation("potential-candidate", "unknown"),
        written(first, "4"),
        LATER,
    )

    assert change is not None
    assert (change.action, change.version) == ("update", "4")
    assert change.subject["status"] == "potential-candidate"
    assert change.provenance is not None


def test_a_coordinators_status_is_never_overwritten() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None
    decided = {**written(first), "status": "eligible"}

    change = plan_change(
        STUDY, STUDY_REF, PATIENT, evaluation("ineligible", "not-met"), decided, LATER
    )

    assert change is not None  # the evidence is refreshed ...
    assert change.subject["status"] == "eligible"  # ... the decision is kept
    assert match_of(change.subject)["outcome"] == "ineligible"
    assert match_of(change.subject)["status"] == "candidate"  # what fhir-match last set
    again = plan_change(STUDY, STUDY_REF, PATIENT, evaluation("candidate"), written(change), LATER)
    assert again is not None
    assert again.subject["status"] == "eligible"


def test_a_patient_who_no_longer_matches_is_marked_not_deleted() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None

    change = plan_change(
        STUDY, STUDY_REF, PATIENT, evaluation("ineligible", "not-met"), written(first), LATER
    )

    assert change is not None
    assert change.subject["status"] == "ineligible"
    assert match_of(change.subject)["status"] == "ineligible"
    assert criteria_of(change.subject)[1].result == "not-met"


def test_a_patient_who_left_the_cohort_keeps_the_last_evidence() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None

    change = plan_change(STUDY, STUDY_REF, PATIENT, None, written(first), LATER)

    assert change is not None
    assert change.subject["status"] == "ineligible"
    assert [c.id for c in criteria_of(change.subject)] == ["inc-1", "inc-3", "exc-9"]
    assert "no longer found" in str(change.subject["extension"])


def test_other_extensions_on_the_subject_are_kept() -> None:
    first = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, RUN)
    assert first is not None
    theirs = {"url": "https://hospital.example/consent", "valueBoolean": True}
    subject = written(first)
    subject["extension"] = [theirs, *subject["extension"]]

    change = plan_change(
        STUDY, STUDY_REF, PATIENT, evaluation("potential-candidate"), subject, LATER
    )

    assert change is not None
    assert theirs in change.subject["extension"]
    assert sum(e["url"] == EXT_MATCH for e in change.subject["extension"]) == 1


def test_the_study_and_the_run_snapshot() -> None:
    study = study_resource(STUDY)
    assert study["identifier"][0] == {
        "system": "https://clinicaltrials.gov",
        "value": "NCT06337474",
    }
    group = snapshot_group(
        STUDY,
        STUDY_REF,
        RUN,
        [(PATIENT, "candidate")],
        Funnel.of(STUDY, {}, {}),
        RunState("complete"),
    )
    assert group["actual"] is True
    assert group["quantity"] == 1
    assert group["member"][0]["entity"] == {"reference": PATIENT}


def test_discovery_searches_come_from_the_study_configuration() -> None:
    setup = study_setup("kn5501")
    searches = cohort_searches(setup.study, setup.normaliser.terminology)
    by_param = {(s.resource_type, s.params[0][0]) for s in searches}
    assert ("Condition", "code") in by_param
    assert ("Condition", "code:text") in by_param
    assert ("MedicationRequest", "medication.code:text") in by_param
    condition_codes = dict(searches[0].params)["code"]
    assert "http://hl7.org/fhir/sid/icd-10|D69.3" in condition_codes
    assert "http://hl7.org/fhir/sid/icd-10|D693" in condition_codes  # undotted, as EHRs write
    assert "urn:oid:2.16.840.1.113883.6.90|D69.3" in condition_codes  # ICD-10-CM by its OID
    assert "urn:oid:2.16.840.1.113883.6.90|D693" in condition_codes
    assert all(dict(s.params)["_elements"] == "subject" for s in searches)
    types = [s.resource_type for s in record_searches({"Condition", "ResearchSubject"})]
    assert types == ["Patient", "Condition", "ResearchSubject"]


def test_patients_are_chunked_to_fit_a_url() -> None:
    patients = [f"Patient/{i:036d}" for i in range(200)]
    chunks = list(patient_chunks(patients, budget=1000))
    assert [p for chunk in chunks for p in chunk] == patients
    assert all(sum(len(p) + 3 for p in chunk) <= 1000 for chunk in chunks)


def test_the_beat_schedule_runs_every_study_nightly() -> None:
    from fhir_match.config import Settings

    schedule = beat_schedule(Settings())
    entry = schedule["discover-kn5501"]
    assert entry["task"] == "worker.tasks.discover"
    assert entry["kwargs"] == {"study_id": "kn5501", "mode": "auto", "tag": ""}
    assert entry["schedule"].hour == {2}
    assert entry["schedule"].minute == {0}


def test_a_tagged_runs_subject_is_its_own() -> None:
    tagged_run = RunInfo("run-2", "2026-06-01", "2026-06-01T02:00:00+00:00", "trial-1")
    change = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, tagged_run)

    assert change is not None
    assert change.subject["identifier"][0]["value"] == "kn5501:trial-1-p1"


def test_a_tagged_runs_subject_is_still_fhir_matchs_own() -> None:
    tagged_run = RunInfo("run-2", "2026-06-01", "2026-06-01T02:00:00+00:00", "trial-1")
    change = plan_change(STUDY, STUDY_REF, PATIENT, evaluation(), None, tagged_run)
    assert change is not None
    assert is_ours(change.subject, STUDY)
