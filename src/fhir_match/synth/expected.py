"""The screening answer a patient's facts were made to give, criterion by criterion (criteria.md).

This reads facts, not FHIR: each fact already knows its criteria sets, its status and its date,
so every rule here is a few lines of criteria.md. Where criteria.md would leave the answer to
interpretation (a multi-day record across a window edge, two counts at the same minute, a
refuted ITP next to other hints of ITP), the generator must not have made such a record, and
``Doubtful`` is raised: a failing generator is better than a doubtful expectation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from fhir_match.synth import codes
from fhir_match.synth.facts import (
    ConditionFact,
    MeasureFact,
    MedicationFact,
    PatientFacts,
    PlateletFact,
)
from fhir_match.synth.timeline import age_at, span

__all__ = [
    "CRITERIA",
    "DEFERRED",
    "Doubtful",
    "Outcome",
    "Result",
    "expected_results",
    "outcome",
]

Result = Literal["met", "not-met", "unknown"]
Outcome = Literal["candidate", "potential-candidate", "ineligible"]

CRITERIA = (
    "inc-1", "inc-2", "inc-3", "inc-4", "inc-5", "inc-6", "inc-7", "inc-9", "inc-10", "inc-11",
    "inc-12", "exc-1", "exc-2", "exc-3", "exc-4", "exc-5", "exc-6", "exc-7", "exc-8", "exc-9",
    "exc-10", "exc-11", "exc-12",
)  # fmt: skip
DEFERRED = frozenset({"inc-4", "inc-5", "inc-9", "inc-10", "inc-12", "exc-12"})
"""Criteria whose ``unknown`` never lowers the outcome."""

PLATELET_THRESHOLD = 100
PLATELET_WINDOW = 180
ECOG_WINDOW = 90
LVEF_WINDOW = 180
LVEF_THRESHOLD = 50
WASHOUT_DAYS = 28
ANTIBIOTIC_WINDOW = 7
HERPES_WINDOW = 84
HCG_WINDOW = 30
HCG_POSITIVE = 5
TRIAL_WINDOW = 90

_INACTIVE = frozenset({"inactive", "remission", "resolved"})
_UNCOUNTED_MEDICATION = {
    "MedicationRequest": frozenset({"cancelled", "draft", "entered-in-error"}),
    "MedicationStatement": frozenset({"not-taken", "intended", "entered-in-error"}),
    "MedicationAdministration": frozenset({"not-done", "entered-in-error"}),
}
_ONGOING = frozenset({"active", "on-hold", "in-progress"})
_ON_STUDY = frozenset({"on-study", "on-study-intervention", "on-study-observation", "follow-up"})


class Doubtful(ValueError):
    """The generator made a record whose answer criteria.md does not settle."""


@dataclass(frozen=True)
class _Record:
    """A patient's counted facts as of D: the filter of "Which records count" applied once."""

    as_of: date
    conditions: tuple[ConditionFact, ...]
    medications: tuple[MedicationFact, ...]
    platelets: tuple[PlateletFact, ...]
    measures: tuple[MeasureFact, ...]
    splenectomy: bool
    facts: PatientFacts

    def active(self, name: str) -> bool:
        return any(name in c.concept.sets and _is_active(c, self.as_of) for c in self.conditions)

    def any_condition(self, name: str) -> bool:
        return any(name in c.concept.sets for c in self.conditions)

    def uses(self, name: str) -> tuple[MedicationFact, ...]:
        return tuple(m for m in self.medications if name in m.drug.classes)


def _day(text: str, as_of: date, what: str) -> date:
    """The record's day; a partial date whose span holds D could be either side of it."""
    first, last = span(text)
    if first <= as_of < last:
        raise Doubtful(f"{what} dated {text} may be after {as_of}")
    return first


def _condition_day(fact: ConditionFact, as_of: date) -> date:
    text = fact.onset or fact.recorded
    if text is None:
        raise Doubtful(f"condition {fact.concept.key} has no date")
    return _day(text, as_of, fact.concept.key)


def _is_active(fact: ConditionFact, as_of: date) -> bool:
    if fact.clinical in _INACTIVE:
        return False
    if fact.abatement is not None:
        raise Doubtful(f"{fact.concept.key}: abatement without an inactive clinicalStatus")
    return True


def _counted(facts: PatientFacts, as_of: date) -> _Record:
    conditions = tuple(
        c
        for c in facts.conditions
        if c.verification not in ("refuted", "entered-in-error")
        and _condition_day(c, as_of) <= as_of
    )
    for c in facts.conditions:
        if c.abatement is not None and span(c.abatement)[1] > as_of:
            raise Doubtful(f"{c.concept.key} abates after {as_of}")
    medications = tuple(
        m
        for m in facts.medications
        if m.status not in _UNCOUNTED_MEDICATION[m.form]
        and _day(m.start, as_of, m.drug.key) <= as_of
    )
    platelets = tuple(
        p
        for p in facts.platelets
        if p.status not in ("cancelled", "entered-in-error") and span(p.when)[0] <= as_of
    )
    measures = tuple(
        m
        for m in facts.measures
        if m.status not in ("cancelled", "entered-in-error") and span(m.when)[0] <= as_of
    )
    procedures = tuple(
        p
        for p in facts.procedures
        if p.status not in ("not-done", "entered-in-error") and span(p.when)[0] <= as_of
    )
    splenectomy = any(
        codes.SPLENECTOMY_SET in p.concept.sets and codes.INCIDENTAL_SET not in p.concept.sets
        for p in procedures
    ) or any(codes.ASPLENIA in c.concept.sets and _is_active(c, as_of) for c in conditions)
    return _Record(as_of, conditions, medications, platelets, measures, splenectomy, facts)


def _within(day: date, as_of: date, days: int) -> bool:
    return as_of - timedelta(days=days) <= day <= as_of


# --- inclusions ----------------------------------------------------------------------------


def _inc1(r: _Record) -> Result:
    birth = r.facts.person.birth_date
    if birth is None:
        return "unknown"
    first, last = span(birth)
    oldest, youngest = age_at(first, r.as_of), age_at(last, r.as_of)
    if youngest >= 18 and oldest <= 65:
        return "met"
    if oldest < 18 or youngest > 65:
        return "not-met"
    return "unknown"


def _inc2(r: _Record) -> Result:
    if r.active(codes.ITP):
        return "met"
    for c in r.conditions:
        if {codes.ITP_HISTORY, codes.EVANS} & c.concept.sets and not _is_active(c, r.as_of):
            raise Doubtful(f"inactive {c.concept.key}: criteria.md does not say")
    hints = (
        r.any_condition(codes.ITP)
        or r.active(codes.ITP_HISTORY)
        or r.active(codes.EVANS)
        or r.active(codes.THROMBOCYTOPENIA_UNSPECIFIED)
        or r.active(codes.ITP_TEXT)
        or bool(r.uses(codes.THROMBOPOIETIC))
    )
    refuted = any(
        codes.ITP in c.concept.sets and c.verification == "refuted" for c in r.facts.conditions
    )
    if refuted and hints:
        raise Doubtful("a refuted ITP next to other hints of ITP")
    return "unknown" if hints else "not-met"


def _last_of_day(counts: list[PlateletFact]) -> PlateletFact:
    times = [p.when for p in counts]
    if len(set(times)) != len(times):
        raise Doubtful("two platelet counts at the same time")
    return max(counts, key=lambda p: p.when)


def _inc3(r: _Record) -> Result:
    usable = [
        p
        for p in r.platelets
        if codes.PLATELET_UNITS[p.unit].unit is not None
        and _within(span(p.when)[0], r.as_of, PLATELET_WINDOW)
    ]
    if not usable:
        return "unknown"
    days = sorted({span(p.when)[0] for p in usable})
    latest = _last_of_day([p for p in usable if span(p.when)[0] == days[-1]])
    if latest.value >= PLATELET_THRESHOLD:
        return "not-met"
    if len(days) < 2:
        return "unknown"
    previous = _last_of_day([p for p in usable if span(p.when)[0] == days[-2]])
    return "met" if previous.value < PLATELET_THRESHOLD else "unknown"


def _inc4(r: _Record) -> Result:
    if r.splenectomy:
        return "met"
    return "not-met" if r.active(codes.SPLENOMEGALY) else "unknown"


def _inc6(r: _Record) -> Result:
    return "not-met" if r.active(codes.SECONDARY) else "met"


def _inc7(r: _Record) -> Result:
    first_line = r.uses(codes.CORTICOSTEROID) or r.uses(codes.IVIG)
    tpo, rituximab = r.uses(codes.THROMBOPOIETIC), r.uses(codes.RITUXIMAB)
    if (first_line and tpo and rituximab) or r.splenectomy:
        return "met"
    if not tpo and not rituximab:
        return "not-met"
    return "unknown"


def _latest(measures: Iterable[MeasureFact]) -> MeasureFact | None:
    ordered = sorted(measures, key=lambda m: m.when)
    days = [span(m.when)[0] for m in ordered]
    if len(set(days)) != len(days):
        raise Doubtful(f"two {ordered[0].kind} results on one day")
    return ordered[-1] if ordered else None


def _measures(r: _Record, kind: str, window: int | None) -> list[MeasureFact]:
    return [
        m
        for m in r.measures
        if m.kind == kind and (window is None or _within(span(m.when)[0], r.as_of, window))
    ]


def _inc9(r: _Record) -> Result:
    latest = _latest(_measures(r, "ecog", ECOG_WINDOW))
    if latest is None:
        return "unknown"
    return "met" if latest.value <= 1 else "not-met"


def _inc10(r: _Record) -> Result:
    latest = _latest(_measures(r, "lvef", LVEF_WINDOW))
    if latest is not None and latest.value < LVEF_THRESHOLD:
        return "not-met"
    if r.active(codes.EFFUSION):
        return "unknown"
    return "unknown" if latest is None else "met"


def _recent(day: date, as_of: date, days: int) -> bool:
    """Fewer than ``days`` days before D (a record exactly ``days`` days before is not recent)."""
    return (as_of - day).days < days


def _straddles(m: MedicationFact, boundary: date, as_of: date) -> bool:
    if m.end is None:
        return False
    return _day(m.start, as_of, m.drug.key) < boundary <= span(m.end)[0]


def _inc11(r: _Record) -> Result:
    treatments = r.uses(codes.CHEMOTHERAPY) + r.uses(codes.MONOCLONAL)
    boundary = r.as_of - timedelta(days=WASHOUT_DAYS - 1)
    for m in treatments:
        if _straddles(m, boundary, r.as_of):
            raise Doubtful(f"{m.drug.key} course across the washout edge")
    recent = any(
        m.status in _ONGOING or _recent(_day(m.start, r.as_of, m.drug.key), r.as_of, WASHOUT_DAYS)
        for m in treatments
    ) or any(
        codes.CHEMOTHERAPY in p.concept.sets
        and p.status not in ("not-done", "entered-in-error")
        and span(p.when)[0] <= r.as_of
        and _recent(span(p.when)[0], r.as_of, WASHOUT_DAYS)
        for p in r.facts.procedures
    )
    return "not-met" if recent else "met"


# --- exclusions ----------------------------------------------------------------------------


def _exc1(r: _Record) -> Result:
    return (
        "met"
        if any(
            codes.ALLERGEN in a.substance.sets
            and a.verification not in ("refuted", "entered-in-error")
            and a.clinical not in ("inactive", "resolved")
            and span(a.recorded)[0] <= r.as_of
            for a in r.facts.allergies
        )
        else "not-met"
    )


def _exc2(r: _Record) -> Result:
    start = r.as_of - timedelta(days=ANTIBIOTIC_WINDOW)
    intravenous = [m for m in r.uses(codes.ANTIBACTERIAL) if m.route and m.route.kind == "iv"]
    for m in intravenous:
        day = _day(m.start, r.as_of, m.drug.key)
        if _straddles(m, start, r.as_of) or (m.status in _ONGOING and day < start):
            raise Doubtful(f"IV {m.drug.key} running into the 7-day window")
    return "met" if any(_day(m.start, r.as_of, "") >= start for m in intravenous) else "not-met"


def _exc3(r: _Record) -> Result:
    return "met" if r.active(codes.IMMUNODEFICIENCY) else "not-met"


def _exc4(r: _Record) -> Result:
    latest = _latest(_measures(r, "nyha", None))
    if latest is not None:
        return "met" if latest.value >= 3 else "not-met"
    return "unknown" if r.active(codes.HEART_FAILURE) else "not-met"


def _exc5(r: _Record) -> Result:
    if r.active(codes.EPILEPSY):
        return "met"
    return "unknown" if r.active(codes.CNS_OTHER) else "not-met"


def _exc6(r: _Record) -> Result:
    return "met" if r.any_condition(codes.HERPES_SEVERE) else "not-met"


def _exc7(r: _Record) -> Result:
    if r.active(codes.MALIGNANCY):
        return "met"
    resolved = any(
        codes.MALIGNANCY in c.concept.sets and codes.BREAST_CERVIX not in c.concept.sets
        for c in r.conditions
    )
    return "unknown" if resolved else "not-met"


def _exc8(r: _Record) -> Result:
    window = (r.as_of - timedelta(days=HERPES_WINDOW), r.as_of)
    partly = False
    for c in r.conditions:
        if codes.HERPES not in c.concept.sets:
            continue
        text = c.onset or c.recorded or ""
        first, last = span(text)
        if window[0] <= first and last <= window[1]:
            return "met"
        partly = partly or (first <= window[1] and last >= window[0])
    return "unknown" if partly else "not-met"


def _positive_hcg(m: MeasureFact) -> bool:
    if codes.HCG_CODES[m.variant].quantitative:
        return m.value >= HCG_POSITIVE
    return m.value == 1


def _exc9(r: _Record) -> Result:
    if r.facts.person.gender == "male":
        return "not-met"
    pregnant = r.active(codes.PREGNANCY) or r.active(codes.LACTATION)
    hcg = any(_positive_hcg(m) for m in _measures(r, "hcg", HCG_WINDOW))
    return "met" if pregnant or hcg else "not-met"


def _exc10(r: _Record) -> Result:
    return "met" if r.active(codes.OTHER_THROMBOCYTOPENIA) else "not-met"


def _exc11(r: _Record) -> Result:
    start = r.as_of - timedelta(days=TRIAL_WINDOW)
    for e in r.facts.enrolments:
        if e.start is not None and span(e.start)[0] > r.as_of:
            raise Doubtful("a study enrolment that starts after D")
    return (
        "met"
        if any(
            e.study.id != codes.KN5501.id
            and e.status in _ON_STUDY
            and (e.end is None or span(e.end)[0] >= start)
            for e in r.facts.enrolments
        )
        else "not-met"
    )


def _unknown(r: _Record) -> Result:
    return "unknown"


_RULES: Mapping[str, Callable[[_Record], Result]] = {
    "inc-1": _inc1, "inc-2": _inc2, "inc-3": _inc3, "inc-4": _inc4, "inc-5": _unknown,
    "inc-6": _inc6, "inc-7": _inc7, "inc-9": _inc9, "inc-10": _inc10, "inc-11": _inc11,
    "inc-12": _unknown, "exc-1": _exc1, "exc-2": _exc2, "exc-3": _exc3, "exc-4": _exc4,
    "exc-5": _exc5, "exc-6": _exc6, "exc-7": _exc7, "exc-8": _exc8, "exc-9": _exc9,
    "exc-10": _exc10, "exc-11": _exc11, "exc-12": _unknown,
}  # fmt: skip


def expected_results(facts: PatientFacts, as_of: date) -> dict[str, Result]:
    """Every criterion's intended result, in criteria.md's order."""
    record = _counted(facts, as_of)
    return {criterion: _RULES[criterion](record) for criterion in CRITERIA}


def outcome(results: Mapping[str, Result]) -> Outcome:
    """criteria.md's outcome rule."""
    for criterion, result in results.items():
        excluded = criterion.startswith("exc-") and result == "met"
        if excluded or (criterion.startswith("inc-") and result == "not-met"):
            return "ineligible"
    undecided = any(
        result == "unknown" and criterion not in DEFERRED for criterion, result in results.items()
    )
    return "potential-candidate" if undecided else "candidate"
