"""The current candidate list, read back from the store discovery wrote it to (the FHIR
server it reads, or a write store of its own) as a reviewer would see it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fhir_match.evaluate.study import Study
from fhir_match.fhir import FhirClient
from fhir_match.records import CriterionResult, Json
from fhir_match.screen import criterion_json
from fhir_match.writeback import (
    LISTED,
    RecordedRun,
    criteria_of,
    ehr_local,
    find_study,
    last_complete,
    match_of,
    patient_of,
    read_subjects,
    recorded_run,
    run_groups,
)

__all__ = [
    "Candidate",
    "ListSource",
    "candidate_json",
    "candidate_text",
    "current_candidates",
    "list_source",
    "source_lines",
]

RUNS_LOOKED_AT = 30
"""Run Groups read back to find the last complete run among later partial or failed ones."""

_MARK = {"met": "+", "not-met": "-", "unknown": "?"}


@dataclass(frozen=True)
class Candidate:
    subject: str
    """``ResearchSubject/<id>``: where a coordinator records their decision."""
    patient: str
    status: str
    """The subject's status: fhir-match's, or the coordinator's once they set one."""
    outcome: str
    as_of: str
    criteria: tuple[CriterionResult, ...]


def _candidate(subject: Json, ehr_base: str) -> Candidate:
    """A subject as the EHR's patient and evidence references (``ehr_base``: the EHR's,
    when the store is another server and cites them absolutely)."""
    match = match_of(subject)
    return Candidate(
        subject=f"ResearchSubject/{subject.get('id')}",
        patient=patient_of(subject, ehr_base),
        status=str(subject.get("status")),
        outcome=str(match.get("outcome")),
        as_of=str(match.get("asOf")),
        criteria=tuple(
            replace(c, evidence=tuple(ehr_local(r, ehr_base) for r in c.evidence))
            for c in criteria_of(subject)
        ),
    )


@dataclass(frozen=True)
class ListSource:
    """Where the list comes from: the last complete run, and the runs after it that were
    partial or failed (newest first), which a reader must be told about."""

    complete: RecordedRun | None
    later: tuple[RecordedRun, ...]


def current_candidates(
    store: FhirClient, study: Study, tag: str = "", configured: str = "", ehr_base: str = ""
) -> tuple[list[Candidate], ListSource]:
    """Everyone the runs listed (candidate or potential-candidate), whatever status a
    coordinator has given them since, by patient, and where the list comes from; empty
    when the study was never run. ``tag`` and ``configured`` (the study's ResearchStudy
    setting) find the study as discovery does; ``ehr_base`` is the EHR's when ``store`` is
    a write store of its own (Settings.ehr_base)."""
    study_ref = find_study(store, study, tag, configured)
    if study_ref is None:
        return [], ListSource(None, ())
    found = [
        _candidate(subject, ehr_base)
        for subject in read_subjects(store, study, study_ref, tag)
        if match_of(subject).get("outcome") in LISTED
    ]
    return sorted(found, key=lambda c: c.patient), list_source(store, study_ref, tag)


def list_source(client: FhirClient, study_ref: str, tag: str) -> ListSource:
    complete, later = last_complete(run_groups(client, study_ref, tag, RUNS_LOOKED_AT))
    return ListSource(
        recorded_run(complete) if complete else None, tuple(recorded_run(g) for g in later)
    )


def _evaluated(run: RecordedRun) -> str:
    if run.funnel is None:
        return "it evaluated nobody"
    return f"evaluated {run.funnel.evaluated} of {run.funnel.found} patients"


def source_lines(source: ListSource) -> list[str]:
    """What a reader is told about the list: which run it is, and warnings for later
    partial or failed runs (their reasons and what they did evaluate)."""
    lines = []
    if source.complete is None:
        lines.append("warning: no discovery run has completed for this study yet")
    else:
        lines.append(
            f"the list of run {source.complete.run} (complete, {source.complete.recorded})"
        )
    for run in source.later:
        reasons = "; ".join(run.state.reasons) or "no reason recorded"
        lines.append(
            f"warning: a later run {run.run} ({run.recorded}) was {run.state.state}: "
            f"{_evaluated(run)}; {reasons}"
        )
    return lines


def candidate_json(candidate: Candidate, study: Study) -> dict[str, object]:
    """The screening result format (criteria.md) plus the subject and its status."""
    return {
        "patient": candidate.patient,
        "study": study.id,
        "as_of": candidate.as_of,
        "outcome": candidate.outcome,
        "subject": candidate.subject,
        "status": candidate.status,
        "criteria": [criterion_json(c) for c in candidate.criteria],
    }


def candidate_text(candidate: Candidate) -> str:
    """A reviewer's block: who, outcome and status, then one line per criterion."""
    marks = "".join(_MARK.get(c.result, " ") for c in candidate.criteria)
    lines = [
        f"{candidate.patient}  {candidate.outcome}  (status {candidate.status}, "
        f"as of {candidate.as_of}, {candidate.subject})  [{marks}]"
    ]
    lines += [f"  {c.id:7} {c.result:8} {c.summary}" for c in candidate.criteria]
    return "\n".join(lines)
