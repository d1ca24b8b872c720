"""The current candidate list, read back from the FHIR server as a reviewer would see it."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_match.discovery import read_subjects
from fhir_match.evaluate.study import Study
from fhir_match.fhir import FhirClient
from fhir_match.records import CriterionResult, Json
from fhir_match.screen import criterion_json
from fhir_match.writeback import LISTED, criteria_of, match_of, study_search

__all__ = ["Candidate", "candidate_json", "candidate_text", "current_candidates"]

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


def _candidate(subject: Json) -> Candidate:
    match = match_of(subject)
    return Candidate(
        subject=f"ResearchSubject/{subject.get('id')}",
        patient=str(subject["individual"]["reference"]),
        status=str(subject.get("status")),
        outcome=str(match.get("outcome")),
        as_of=str(match.get("asOf")),
        criteria=tuple(criteria_of(subject)),
    )


def current_candidates(client: FhirClient, study: Study) -> list[Candidate]:
    """Everyone the last runs listed (candidate or potential-candidate), whatever status a
    coordinator has given them since, by patient; empty when the study was never run."""
    studies = [r for r in client.search(study_search(study)) if r.id]
    found = [
        _candidate(subject)
        for research_study in studies
        for subject in read_subjects(client, study, f"ResearchStudy/{research_study.id}")
        if match_of(subject).get("outcome") in LISTED
    ]
    return sorted(found, key=lambda c: c.patient)


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
