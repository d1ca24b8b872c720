"""The frozen values that flow between stages: read -> group -> evaluate -> report or write back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "RECORD_TYPES",
    "CriterionKind",
    "CriterionResult",
    "DataIssue",
    "Json",
    "Outcome",
    "PatientEvaluation",
    "PatientRecord",
    "Result",
]

Json = dict[str, Any]
Result = Literal["met", "not-met", "unknown"]
CriterionKind = Literal["inclusion", "exclusion"]
Outcome = Literal["candidate", "potential-candidate", "ineligible"]

RECORD_TYPES = (
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "Procedure",
    "AllergyIntolerance",
    "DiagnosticReport",
    "ResearchSubject",
)
"""The patient-compartment types a study's rules may retrieve; the Medications and
ResearchStudies these cite come with them."""


@dataclass(frozen=True)
class DataIssue:
    """Input that was skipped, and why: where it was (file and line, or a reference), never
    what it contained."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class PatientRecord:
    """One patient's resources, as found: the Patient first, then everything that refers to
    them, then the shared resources they reference (Medication)."""

    patient: str
    """The patient's reference, ``Patient/<id>``."""
    resources: tuple[Json, ...]
    origins: Mapping[str, str] = field(default_factory=dict)
    """Where each of the patient's own resources was read (``Observation/1`` ->
    ``obs.ndjson:7``), so that an issue about one can name its file and line."""

    def where(self, reference: str) -> str:
        """A resource named for an issue: where it was read, and its reference."""
        origin = self.origins.get(reference)
        return f"{origin} {reference}" if origin and origin != reference else reference


@dataclass(frozen=True)
class CriterionResult:
    id: str
    kind: CriterionKind
    result: Result
    summary: str
    evidence: tuple[str, ...]
    """References of the resources that decided it, e.g. ``Observation/17``."""


@dataclass(frozen=True)
class PatientEvaluation:
    patient: str
    study: str
    as_of: str
    outcome: Outcome
    criteria: tuple[CriterionResult, ...]
    error: str = ""
    """Why the engine could not evaluate this patient; then ``criteria`` is empty."""
