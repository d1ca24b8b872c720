"""Combine criterion results into a patient's outcome, by the rule every study shares.

ineligible: an inclusion not met, or an exclusion met. candidate: otherwise, with every
criterion decided except the deferred ones (screening-visit or not evaluated).
potential-candidate: otherwise; nothing rules the patient out, but the record leaves
something a person must decide.
"""

from __future__ import annotations

from collections.abc import Iterable

from fhir_match.evaluate.study import Study
from fhir_match.records import CriterionResult, Outcome

__all__ = ["outcome", "rules_out"]


def rules_out(result: CriterionResult) -> bool:
    """An inclusion not met or an exclusion met: the patient is ineligible."""
    return (result.kind, result.result) in (("inclusion", "not-met"), ("exclusion", "met"))


def outcome(study: Study, results: Iterable[CriterionResult]) -> Outcome:
    undecided = False
    for result in results:
        if rules_out(result):
            return "ineligible"
        if result.result == "unknown" and not study.criterion(result.id).deferred:
            undecided = True
    return "potential-candidate" if undecided else "candidate"
