"""Small helpers that put one fact on a chart, choosing how a real record would code it.

The choices made here (which coding, which unit, which resource type, whether a course is one
order or one record per dose) never change what a fact means, only how it is written; the one
exception is guarded: a course is written as one record only when its first and last dose lie
on the same side of every window edge a criterion reads.
"""

from __future__ import annotations

import random
from datetime import date

from fhir_match.synth import codes
from fhir_match.synth.codes import Route
from fhir_match.synth.facts import (
    Chart,
    ConditionFact,
    MeasureFact,
    MeasureKind,
    MedicationFact,
    MedicationForm,
    PlateletFact,
)
from fhir_match.synth.timeline import iso, shift, stamp

__all__ = [
    "LabProfile",
    "add_condition",
    "add_count",
    "add_course",
    "add_measure",
    "add_medication",
    "choose_route",
    "dose_days",
    "lab_profile",
]

LabProfile = tuple[tuple[int, ...], tuple[int, ...]]
"""(platelet code indexes, unit indexes) a patient's usual laboratory uses."""

_CN_UNITS = (0, 0, 0, 1, 2, 3, 4, 5)
_US_UNITS = (6, 6, 7, 7, 8, 9, 10, 11, 12)
_CONVERTIBLE = tuple(n for n, u in enumerate(codes.PLATELET_UNITS) if u.unit is not None)


def lab_profile(rng: random.Random) -> LabProfile:
    """The patient's usual laboratory, Chinese (10^9/L spellings) or US (10^3/uL and /uL
    spellings), with one platelet LOINC and one unit; now and then a manual count (778-1) or a
    result from another laboratory, in its own code and unit."""
    main_code = rng.choice((0, 0, 0, 0, 1, 1, 3))
    other_code = rng.choice((1, 2, 3, 4, 5, 6))
    main_unit = rng.choice(_CN_UNITS if rng.random() < 0.65 else _US_UNITS)
    return (main_code,) * 10 + (2, other_code), (main_unit,) * 10 + (rng.choice(_CONVERTIBLE),)


def add_condition(
    chart: Chart,
    rng: random.Random,
    key: str,
    onset: date,
    *,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    resolved: date | None = None,
    variant: int | None = None,
    recorded_only: bool | None = None,
    partial: str | None = None,
) -> ConditionFact:
    """A Condition with onset ``onset`` (or ``partial``, a year or year-month written instead);
    ``resolved`` makes it resolved with that abatement date."""
    concept = codes.CONDITIONS[key]
    chosen = rng.randrange(len(concept.variants)) if variant is None else variant
    onset_text = partial or iso(onset)
    if recorded_only is None:
        recorded_only = partial is None and rng.random() < 0.1
    status = "resolved" if resolved is not None else clinical
    if status == "active":
        status = rng.choice(("active",) * 8 + ("recurrence", "relapse", None))
    if verification == "confirmed" and rng.random() < 0.2:
        verification = None
    fact = ConditionFact(
        concept=concept,
        variant=chosen,
        onset=None if recorded_only else onset_text,
        recorded=onset_text if recorded_only else None,
        clinical=None if verification == "entered-in-error" else status,
        verification=verification,
        abatement=iso(resolved) if resolved is not None else None,
        onset_as_period=not recorded_only and partial is None and rng.random() < 0.05,
    )
    chart.conditions.append(fact)
    return fact


def choose_route(rng: random.Random, kind: str) -> Route:
    routes = {"iv": codes.IV_ROUTES, "oral": codes.ORAL_ROUTES, "sc": codes.SC_ROUTES}[kind]
    return rng.choice(routes)


def add_medication(
    chart: Chart,
    rng: random.Random,
    drug_key: str,
    form: MedicationForm,
    start: date,
    *,
    status: str,
    route: str | Route | None,
    dose: str,
    end: date | None = None,
    style: int | None = None,
    timed: bool | None = None,
) -> MedicationFact:
    """One medication record; ``route`` is a kind (iv, oral, sc) or a route already chosen, and
    ``style`` and ``timed`` (a dateTime rather than a date) are chosen when not given, so that
    the records of one course can share them."""
    drug = codes.DRUGS[drug_key]
    asserted = form == "MedicationStatement" and end is None and rng.random() < 0.15
    if timed is None:
        timed = rng.random() < 0.5
    if isinstance(route, str):
        route = choose_route(rng, route)
    fact = MedicationFact(
        drug=drug,
        style=rng.randrange(len(drug.styles)) if style is None else style,
        form=form,
        start=stamp(start, rng.randint(8 * 60, 20 * 60)) if timed else iso(start),
        status=status,
        route=route,
        dose=dose,
        end=iso(end) if end is not None else None,
        asserted=asserted,
    )
    chart.medications.append(fact)
    return fact


def add_course(
    chart: Chart,
    rng: random.Random,
    drug_key: str,
    doses: list[date],
    *,
    route: str,
    dose: str,
    edges: tuple[date, ...],
    done: bool = True,
) -> None:
    """A course of doses as one order, one statement over its period, or one administration
    per dose. ``edges`` are the first days of the windows the drug is read in (e.g. D-27 for a
    monoclonal antibody): a course across one of them is always written dose by dose, so that
    every reading of criteria.md gives the same answer."""
    first, last = doses[0], doses[-1]
    across = any(first < edge <= last for edge in edges)
    if not done:
        shape = rng.choice(("order", "statement"))
    else:
        shape = "doses" if across else rng.choice(("order", "statement", "doses"))
    status = "completed" if done else "active"
    style = rng.randrange(len(codes.DRUGS[drug_key].styles))
    chosen = choose_route(rng, route)
    timed = rng.random() < 0.5
    if shape == "order":
        add_medication(chart, rng, drug_key, "MedicationRequest", first, status=status,
                       route=chosen, dose=dose, style=style, timed=timed)  # fmt: skip
    elif shape == "statement":
        add_medication(chart, rng, drug_key, "MedicationStatement", first, status=status,
                       route=chosen, dose=dose, end=last if done and last > first else None,
                       style=style, timed=timed)  # fmt: skip
    else:
        for day in doses:
            add_medication(chart, rng, drug_key, "MedicationAdministration", day,
                           status="completed", route=chosen, dose=dose, style=style,
                           timed=timed)  # fmt: skip


def add_count(
    chart: Chart,
    rng: random.Random,
    profile: LabProfile,
    day: date,
    value: int,
    *,
    minute: int | None = None,
    status: str = "final",
    unit: int | None = None,
) -> None:
    """A platelet count in 10*9/L, written with the patient's laboratory's codes and units.
    Never at the same minute as another count: criteria.md leaves such a tie to the reader."""
    placement = rng.choice(("dateTime",) * 12 + ("period", "instant", "issued"))
    at = rng.randint(7 * 60, 11 * 60) if minute is None else minute
    when = stamp(day, at)
    while any(p.when == when for p in chart.platelets):
        at += 1
        when = stamp(day, at)
    chart.platelets.append(
        PlateletFact(
            when=when,
            value=value,
            code=rng.choice(profile[0]),
            unit=rng.choice(profile[1]) if unit is None else unit,
            status=status if status != "final" else rng.choice(("final",) * 19 + ("amended",)),
            placement=placement,  # type: ignore[arg-type]
        )
    )


def add_measure(
    chart: Chart,
    rng: random.Random,
    kind: MeasureKind,
    day: date,
    value: float,
    variants: int,
    *,
    variant: int | None = None,
    status: str = "final",
    style: int = 0,
) -> None:
    chart.measures.append(
        MeasureFact(
            kind=kind,
            when=stamp(day, rng.randint(8 * 60, 17 * 60)),
            value=value,
            variant=rng.randrange(variants) if variant is None else variant,
            status=status,
            style=style,
        )
    )


def dose_days(start: date, count: int, every: int) -> list[date]:
    return [shift(start, n * every) for n in range(count)]
