"""The attrition funnel: how many patients each criterion removes, in the study's order.

Criteria are taken in the study's order (its criteria list: inc-1 .. inc-12, then
exc-1 .. exc-12). A patient is removed by the FIRST criterion that rules them out, an
inclusion ``not-met`` or an exclusion ``met`` (criteria.md); an ``unknown`` never removes
anyone. Patients not removed are split into candidates and potential candidates by their
outcome. Patients that could not be evaluated are counted apart, so::

    found = sum(removed per criterion) + candidates + potential candidates + not evaluated

Every patient is counted exactly once, so the counts add up over disjoint sets of patients:
each batch counts its own and a run sums them, and a run's funnel equals ``screen``'s on
the same patients. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from fhir_match.evaluate.eligibility import rules_out
from fhir_match.evaluate.study import Study
from fhir_match.records import PatientEvaluation

__all__ = ["Funnel", "Scope", "removals", "removed_by"]

Scope = Literal["full", "incremental"]
"""Which patients a funnel counts: all that were screened, or (an incremental discovery
run) only those it re-evaluated because their record changed."""


def removed_by(evaluation: PatientEvaluation) -> str | None:
    """The first criterion that rules the patient out (the same rule that makes the outcome
    ``ineligible``), or None when none does. The evaluation's criteria are in the study's
    order: the evaluator keeps it."""
    return next((r.id for r in evaluation.criteria if rules_out(r)), None)


def removals(evaluations: Iterable[PatientEvaluation]) -> Counter[str]:
    """Patients removed, by the criterion that removed them."""
    return Counter(c for e in evaluations if (c := removed_by(e)) is not None)


@dataclass(frozen=True)
class Funnel:
    removed: tuple[tuple[str, int], ...]
    """(criterion, patients it removed) for every criterion of the study, in its order."""
    candidates: int = 0
    potential_candidates: int = 0
    not_evaluated: int = 0
    scope: Scope = "full"

    @classmethod
    def of(
        cls,
        study: Study,
        removed: Mapping[str, int],
        outcomes: Mapping[str, int],
        not_evaluated: int = 0,
        scope: Scope = "full",
    ) -> Funnel:
        """From counts: removals by criterion and outcomes (``ineligible`` is not needed:
        it is the sum of the removals)."""
        return cls(
            removed=tuple((c.id, removed.get(c.id, 0)) for c in study.criteria),
            candidates=outcomes.get("candidate", 0),
            potential_candidates=outcomes.get("potential-candidate", 0),
            not_evaluated=not_evaluated,
            scope=scope,
        )

    @property
    def evaluated(self) -> int:
        return sum(count for _, count in self.removed) + self.candidates + self.potential_candidates

    @property
    def found(self) -> int:
        """Every patient the funnel counts: screened from files, or in the run's cohort."""
        return self.evaluated + self.not_evaluated

    def as_json(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "found": self.found,
            "not_evaluated": self.not_evaluated,
            "evaluated": self.evaluated,
            "removed": dict(self.removed),
            "candidates": self.candidates,
            "potential_candidates": self.potential_candidates,
        }

    def text(self) -> str:
        """A few lines for a terminal; criteria that removed nobody are left out."""
        removed = ", ".join(f"{c} {n}" for c, n in self.removed if n) or "nobody"
        return "\n".join(
            [
                f"funnel ({self.scope}): found {self.found}, not evaluated "
                f"{self.not_evaluated}, evaluated {self.evaluated}",
                f"  removed by the first criterion that rules them out: {removed}",
                f"  left: candidate {self.candidates}, "
                f"potential-candidate {self.potential_candidates}",
            ]
        )
