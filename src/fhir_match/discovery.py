"""A discovery run's steps against a FHIR server: find -> fetch -> evaluate -> write back,
composed here for every way of finding and fetching (sources.py).

Each step takes ids and returns counts, so a Celery task (worker/tasks.py) can run it with
nothing but ids in its arguments; the benchmark runs the same steps in one process.
Every step is idempotent: run twice, it writes nothing the second time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

from fhir_match.errors import FatalFhirError, FhirError
from fhir_match.evaluate.engine import CqlEvaluator
from fhir_match.evaluate.evaluator import evaluate_batch
from fhir_match.evaluate.study import Study
from fhir_match.fhir import FhirClient
from fhir_match.fhir.models import parse_resource
from fhir_match.funnel import Funnel, removals
from fhir_match.records import DataIssue, Json, PatientEvaluation, PatientRecord
from fhir_match.runtime import StudySetup
from fhir_match.sources import Fetch, Found, fetch_batch, file_batches
from fhir_match.writeback import (
    LISTED,
    RUN_SYSTEM,
    STUDY_SYSTEM,
    RunInfo,
    RunState,
    WriteSummary,
    failure_reasons,
    find_study,
    is_ours,
    match_of,
    our_subjects,
    own_study_identifier,
    patient_of,
    read_subjects,
    run_state,
    snapshot_group,
    study_resource,
    subjects_of,
    write_evaluations,
)

__all__ = [
    "PATIENTS_PER_BATCH",
    "BatchReport",
    "FinishReport",
    "ensure_study",
    "finish_run",
    "record_failed_run",
    "screen_batch",
    "screen_files",
]

PATIENTS_PER_BATCH = 100
"""Patients per evaluation batch: a few requests per resource type, one engine call."""


def ensure_study(client: FhirClient, study: Study, tag: str = "", configured: str = "") -> str:
    """The study's ResearchStudy reference (:func:`find_study`), created the first time.

    Creating is conditional on fhir-match's own identifier, so runs racing to create it
    make one (HAPI refuses the others with 409: they take the winner's); a hospital's
    ResearchStudy created meanwhile loses to ours on the next run.
    """
    found = find_study(client, study, tag, configured)
    if found:
        return found
    try:
        created = client.create(
            parse_resource(study_resource(study, tag)),
            if_none_exist=f"identifier={STUDY_SYSTEM}|{own_study_identifier(study, tag)}",
        )
    except FatalFhirError as exc:
        # HAPI refuses the loser of a race to create it (409): the winner's is there now
        if exc.status != 409 or (winner := find_study(client, study, tag)) is None:
            raise
        return winner
    return f"ResearchStudy/{created.id}"


@dataclass
class BatchReport:
    """What one batch did; counts only, fit to store with the run."""

    patients: int = 0
    requests: int = 0
    """HTTP requests the batch sent to the FHIR server, retries included."""
    unchanged: int = 0
    """Patients an incremental run skipped: nothing in their record changed."""
    evaluated: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    removed: Counter[str] = field(default_factory=Counter)
    """Patients removed, by the first criterion that rules them out: the run's funnel."""
    written: WriteSummary = field(default_factory=WriteSummary)
    failures: list[DataIssue] = field(default_factory=list)
    unused: int = 0
    """Values read but not used (a platelet count in a unit that cannot be converted)."""
    skipped: int = 0
    """Resources left out, of a shape the rules cannot read: each costs only itself (and
    is no failure of the run: a bad record in the EHR must not keep every run partial)."""
    outside: list[str] = field(default_factory=list)
    """Patients their own record puts outside the cohort: a full run unlists them. Not
    stored with the report (the run's cohort is kept apart)."""

    def as_json(self) -> dict[str, object]:
        return {
            "patients": self.patients,
            "requests": self.requests,
            "unchanged": self.unchanged,
            "evaluated": self.evaluated,
            "outcomes": dict(self.outcomes),
            "removed": dict(self.removed),
            "created": self.written.created,
            "updated": self.written.updated,
            "failures": [str(f) for f in self.failures + self.written.failed],
            "unused": self.unused,
            "skipped": self.skipped,
            "outside": len(self.outside),
        }


def screen_batch(
    ehr: FhirClient,
    setup: StudySetup,
    engine: CqlEvaluator,
    fetch: Fetch,
    patients: Sequence[str],
    study_ref: str,
    run: RunInfo,
    since: str | None = None,
    store: FhirClient | None = None,
) -> BatchReport:
    """Fetch, evaluate and write back one batch of patients, fetched the ``fetch`` way.

    With ``since`` (an instant), only patients with a resource of their record changed since
    then are fetched and evaluated. A subject a coordinator changes while this runs is
    re-read and planned again once; if it changes again, the next run takes it. ``store``
    is where the list is written, when not the EHR (FHIR_WRITE_URL).
    """
    sent = ehr.requests
    report = BatchReport(patients=len(patients))
    fetched = fetch_batch(
        ehr,
        setup,
        fetch,
        patients,
        report.failures.append,
        since=since,
        ignore=lambda r: is_ours(r, setup.study),
    )
    report.unchanged = fetched.unchanged
    report.outside = fetched.outside
    if fetched.records:
        writes = ehr if store is None else store
        _evaluate_and_write(writes, setup, engine, fetched.records, study_ref, run, report)
    report.requests = ehr.requests - sent
    return report


def screen_files(
    ehr: FhirClient,
    setup: StudySetup,
    engine: CqlEvaluator,
    found: Found,
    study_ref: str,
    run: RunInfo,
    on_batch: Callable[[BatchReport], None] = lambda report: None,
    store: FhirClient | None = None,
) -> None:
    """Evaluate and write back the patients of an export, a batch at a time (memory stays
    flat), each batch reported to ``on_batch`` as it is done; written to ``store`` when
    that is not the EHR."""
    issues = found.issues  # the export's reading adds to it as it goes
    for records in file_batches(found, PATIENTS_PER_BATCH):
        sent = ehr.requests
        report = BatchReport(patients=len(records))
        report.failures += issues
        issues.clear()
        _evaluate_and_write(
            ehr if store is None else store, setup, engine, records, study_ref, run, report
        )
        report.requests = ehr.requests - sent
        on_batch(report)
    if issues:
        on_batch(BatchReport(failures=issues))


def _evaluate_and_write(
    store: FhirClient,
    setup: StudySetup,
    engine: CqlEvaluator,
    records: Sequence[PatientRecord],
    study_ref: str,
    run: RunInfo,
    report: BatchReport,
) -> None:
    study = setup.study
    result = evaluate_batch(records, study, date.fromisoformat(run.as_of), setup.normaliser, engine)
    report.evaluated += len(result.evaluations)
    report.outcomes.update(e.outcome for e in result.evaluations)
    report.removed.update(removals(result.evaluations))
    report.failures.extend(result.failures)
    report.unused += len(result.issues)
    report.skipped += len(result.skipped)
    if run.ehr_base:  # a store of its own: the records fetched hold none of its subjects
        existing = subjects_of(store, study, [r.patient for r in records], run)
    else:
        existing = our_subjects([r for record in records for r in record.resources], study)
    evaluations = {e.patient: e for e in result.evaluations}
    report.written.add(write_evaluations(store, study, study_ref, run, evaluations, existing))


@dataclass
class FinishReport:
    listed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    left_cohort: WriteSummary = field(default_factory=WriteSummary)
    group: str = ""
    state: RunState = field(default_factory=lambda: RunState("complete"))

    def as_json(self) -> dict[str, object]:
        return {
            "listed": self.listed,
            "outcomes": dict(self.outcomes),
            "left_cohort": self.left_cohort.updated,
            "failures": [str(f) for f in self.left_cohort.failed],
            "group": self.group,
            "state": self.state.state,
            "reasons": list(self.state.reasons),
        }


def finish_run(
    client: FhirClient,
    setup: StudySetup,
    study_ref: str,
    run: RunInfo,
    cohort: set[str] | None,
    funnel: Funnel,
    failures: Sequence[str] = (),
    failed_batches: int = 0,
) -> FinishReport:
    """After every batch: unlist whom a full run no longer finds, and record the snapshot
    with the run's ``funnel`` (its batches' counts summed) and its state.

    ``cohort`` is the full run's cohort; None for an incremental run, whose batches have
    already re-evaluated everyone whose record changed. ``failures`` are the batches'
    PHI-free failure texts and ``failed_batches`` how many batches failed whole: with
    either, the run is partial (failed when it evaluated nobody), and its Group says so.
    The Group replaces a failed one recorded for the same run before it could finish.
    """
    report = FinishReport()
    subjects = {
        patient_of(s, run.ehr_base): s
        for s in read_subjects(client, setup.study, study_ref, run.tag)
    }
    if cohort is not None:
        gone: dict[str, PatientEvaluation | None] = {
            patient: None
            for patient, subject in subjects.items()
            if patient not in cohort and match_of(subject).get("outcome") in LISTED
        }
        report.left_cohort = write_evaluations(client, setup.study, study_ref, run, gone, subjects)
        if gone:
            subjects = {
                patient_of(s, run.ehr_base): s
                for s in read_subjects(client, setup.study, study_ref, run.tag)
            }
    members = sorted(
        (patient, str(match_of(subject).get("outcome")))
        for patient, subject in subjects.items()
        if match_of(subject).get("outcome") in LISTED
    )
    report.listed = len(members)
    report.outcomes.update(outcome for _, outcome in members)
    problems = [*failures, *(str(f) for f in report.left_cohort.failed)]
    report.state = run_state(funnel, problems, failed_batches)
    group = snapshot_group(setup.study, study_ref, run, members, funnel, report.state)
    report.group = _put_group(client, group, run)
    return report


def _put_group(client: FhirClient, group: Json, run: RunInfo) -> str:
    """Write a run's Group, replacing any the run recorded before (conditional update on
    its run id, so it is never written twice)."""
    bundle = client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": group,
                    "request": {
                        "method": "PUT",
                        "url": f"Group?identifier={RUN_SYSTEM}|{run.run_id}",
                    },
                }
            ],
        }
    )
    response = bundle.entry[0].response if bundle.entry else None
    location = str(response.location or "") if response else ""
    return "/".join(location.split("/")[:2])


def record_failed_run(
    client: FhirClient,
    setup: StudySetup,
    study_ref: str,
    run: RunInfo,
    reason: str,
    funnel: Funnel | None = None,
) -> str | None:
    """Record a run that stopped (before its batches, or given up by the watchdog) as a
    Group in state failed with ``reason`` (PHI-free text) and, when known, the funnel of
    what it did evaluate; no members: the list stays the last complete run's.

    Best effort: the run has failed already, so a server that cannot take this either
    yields None. Never replaces a Group the run already has (a finish got there first).
    """
    state = RunState("failed", failure_reasons([reason]))
    group = snapshot_group(setup.study, study_ref, run, [], funnel, state)
    try:
        created = client.create(
            parse_resource(group), if_none_exist=f"identifier={RUN_SYSTEM}|{run.run_id}"
        )
    except FhirError:
        return None
    return f"Group/{created.id}"
