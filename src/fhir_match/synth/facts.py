"""What the generator means a patient's record to say, before it is written as FHIR.

Each fact holds exactly what criteria.md reads (status, the record's date, the concept and the
criteria sets it belongs to) plus which of the catalog's codings to write it with. The expected
answers are computed from these facts, and the FHIR resources are rendered from them, so the
two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fhir_match.synth.codes import Concept, Drug, Route, Study

__all__ = [
    "AllergyFact",
    "Chart",
    "ConditionFact",
    "EnrolmentFact",
    "MeasureFact",
    "MeasureKind",
    "MedicationFact",
    "MedicationForm",
    "PatientFacts",
    "Person",
    "PlateletFact",
    "ProcedureFact",
]

MedicationForm = Literal["MedicationRequest", "MedicationStatement", "MedicationAdministration"]
MeasureKind = Literal["ecog", "lvef", "nyha", "hcg", "marrow"]


@dataclass(frozen=True)
class Person:
    id: str
    index: int
    gender: str | None
    birth_date: str | None
    """A FHIR date: full, year-month, year, or None for no birthDate."""
    family: str
    given: str
    text: str


@dataclass(frozen=True)
class ConditionFact:
    concept: Concept
    variant: int
    onset: str | None
    recorded: str | None
    clinical: str | None
    """clinicalStatus code, or None for none (then the category is encounter-diagnosis)."""
    verification: str | None
    abatement: str | None = None
    onset_as_period: bool = False


@dataclass(frozen=True)
class MedicationFact:
    drug: Drug
    style: int
    form: MedicationForm
    start: str
    """The record's date in criteria.md's sense: authoredOn, the effective dateTime or period
    start, or (``asserted``) dateAsserted."""
    status: str
    route: Route | None
    dose: str
    end: str | None = None
    """Period end, for a statement or administration over several days."""
    asserted: bool = False


@dataclass(frozen=True)
class PlateletFact:
    when: str
    value: int
    """In 10*9/L; written in the unit variant's scale."""
    code: int
    unit: int
    status: str = "final"
    placement: Literal["dateTime", "period", "instant", "issued"] = "dateTime"


@dataclass(frozen=True)
class MeasureFact:
    """ECOG grade, LVEF %, NYHA class, hCG (quantitative IU/L, or 1/0 for positive/negative),
    or a bone-marrow report (value unused)."""

    kind: MeasureKind
    when: str
    value: float
    variant: int
    status: str = "final"
    style: int = 0
    """How the answer is written (e.g. hCG "Positive" as a coded text or "阳性" as a string)."""


@dataclass(frozen=True)
class ProcedureFact:
    concept: Concept
    variant: int
    when: str
    status: str = "completed"


@dataclass(frozen=True)
class AllergyFact:
    substance: Concept
    variant: int
    recorded: str
    clinical: str | None
    verification: str
    criticality: str | None


@dataclass(frozen=True)
class EnrolmentFact:
    study: Study
    status: str
    start: str | None
    end: str | None


@dataclass(frozen=True)
class PatientFacts:
    person: Person
    cohort: str
    edges: tuple[str, ...]
    conditions: tuple[ConditionFact, ...]
    medications: tuple[MedicationFact, ...]
    platelets: tuple[PlateletFact, ...]
    measures: tuple[MeasureFact, ...]
    procedures: tuple[ProcedureFact, ...]
    allergies: tuple[AllergyFact, ...]
    enrolments: tuple[EnrolmentFact, ...]


@dataclass
class Chart:
    """The facts of one patient while they are being made; ``freeze`` gives the record."""

    person: Person
    cohort: str
    edges: list[str] = field(default_factory=list)
    conditions: list[ConditionFact] = field(default_factory=list)
    medications: list[MedicationFact] = field(default_factory=list)
    platelets: list[PlateletFact] = field(default_factory=list)
    measures: list[MeasureFact] = field(default_factory=list)
    procedures: list[ProcedureFact] = field(default_factory=list)
    allergies: list[AllergyFact] = field(default_factory=list)
    enrolments: list[EnrolmentFact] = field(default_factory=list)

    def freeze(self) -> PatientFacts:
        return PatientFacts(
            self.person,
            self.cohort,
            tuple(self.edges),
            tuple(self.conditions),
            tuple(self.medications),
            tuple(sorted(self.platelets, key=lambda p: p.when)),
            tuple(sorted(self.measures, key=lambda m: (m.kind, m.when))),
            tuple(self.procedures),
            tuple(self.allergies),
            tuple(self.enrolments),
        )
