"""People on the edges of criteria.md: each edge adds records whose answer turns on one rule.

An edge is named for the rule it tests (``inc3-previous-exactly-180d``: the earlier of two low
counts is exactly 180 days before D, so it is still inside the window). Edges only add
records, or replace the records of the kind they test (the platelet counts of the last 200
days, the ECOG results, ...), so the rest of the patient stays as made; the expected answer
is still computed from all the facts, never assumed from the edge's name.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date

from fhir_match.synth import codes
from fhir_match.synth.charting import (
    add_condition,
    add_count,
    add_course,
    add_measure,
    add_medication,
)
from fhir_match.synth.facts import (
    AllergyFact,
    Chart,
    ConditionFact,
    EnrolmentFact,
    MeasureKind,
    ProcedureFact,
)
from fhir_match.synth.general import Context, washout_edges
from fhir_match.synth.timeline import iso, shift, span

__all__ = ["ANY_EDGES", "ITP_EDGES", "TAIL_EDGES", "apply_edge"]

Edge = Callable[[Chart, random.Random, Context], None]
_NO_UNIT = len(codes.PLATELET_UNITS) - 1


def _before(ctx: Context, days: int) -> date:
    return shift(ctx.as_of, -days)


def _low(rng: random.Random) -> int:
    return rng.randint(6, 60)


# --- inc-3: the last 200 days of counts are replaced ----------------------------------------


def _tail(
    chart: Chart,
    rng: random.Random,
    ctx: Context,
    counts: list[tuple[int, int, int | None, str, int | None]],
) -> None:
    """Replace the counts from D-200 on by ``counts``: (days before D, value in 10*9/L,
    minute of the day or None, status, unit index or None for the lab's usual one)."""
    start = _before(ctx, 200)
    chart.platelets = [p for p in chart.platelets if span(p.when)[0] < start]
    for days, value, minute, status, unit in counts:
        add_count(chart, rng, ctx.profile, _before(ctx, days), value, minute=minute,
                  status=status, unit=unit)  # fmt: skip


def _previous_180(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(180, _low(rng), None, "final", None),
                            (rng.randint(3, 40), _low(rng), None, "final", None)])  # fmt: skip


def _previous_181(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(181, _low(rng), None, "final", None),
                            (rng.randint(3, 40), _low(rng), None, "final", None)])  # fmt: skip


def _latest_100(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(rng.randint(50, 120), _low(rng), None, "final", None),
                            (rng.randint(3, 40), 100, None, "final", None)])  # fmt: skip


def _both_99(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(rng.randint(40, 120), 99, None, "final", None),
                            (rng.randint(3, 30), 99, None, "final", None)])  # fmt: skip


def _same_day(rise: bool) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        day = rng.randint(2, 30)
        first, second = (_low(rng), 130) if rise else (130, _low(rng))
        _tail(chart, rng, ctx, [(rng.randint(40, 100), _low(rng), None, "final", None),
                                (day, first, 8 * 60, "final", None),
                                (day, second, 15 * 60, "final", None)])  # fmt: skip

    return edge


def _latest_not_counted(status: str) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        _tail(chart, rng, ctx, [(rng.randint(60, 120), _low(rng), None, "final", None),
                                (rng.randint(20, 50), _low(rng), None, "final", None),
                                (rng.randint(1, 15), 150, None, status, None)])  # fmt: skip

    return edge


def _latest_without_unit(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(rng.randint(60, 120), _low(rng), None, "final", None),
                            (rng.randint(20, 50), _low(rng), None, "final", None),
                            (rng.randint(1, 15), 160, None, "final", _NO_UNIT)])  # fmt: skip


def _count_after_d(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(rng.randint(40, 120), _low(rng), None, "final", None),
                            (rng.randint(3, 30), _low(rng), None, "final", None),
                            (-rng.randint(1, 30), 180, None, "final", None)])  # fmt: skip


def _previous_high(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _tail(chart, rng, ctx, [(rng.randint(60, 120), _low(rng), None, "final", None),
                            (rng.randint(20, 50), 130, None, "final", None),
                            (rng.randint(1, 15), _low(rng), None, "final", None)])  # fmt: skip


TAIL_EDGES: dict[str, Edge] = {
    "inc3-previous-exactly-180d": _previous_180,
    "inc3-previous-181d": _previous_181,
    "inc3-latest-exactly-100": _latest_100,
    "inc3-both-99": _both_99,
    "inc3-same-day-rise": _same_day(rise=True),
    "inc3-same-day-drop": _same_day(rise=False),
    "inc3-latest-cancelled": _latest_not_counted("cancelled"),
    "inc3-latest-entered-in-error": _latest_not_counted("entered-in-error"),
    "inc3-latest-without-unit": _latest_without_unit,
    "inc3-count-after-D": _count_after_d,
    "inc3-latest-low-previous-high": _previous_high,
}
"""Edges of inc-3, for ITP patients with counts before the window."""


# --- inc-7 and inc-11: therapy records ------------------------------------------------------


def _rituximab_last_dose(days: int) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        doses = [_before(ctx, days + 7 * n) for n in (3, 2, 1, 0)]
        add_course(chart, rng, "rituximab", doses, route="iv", dose="100 mg weekly",
                   edges=washout_edges(ctx.as_of))  # fmt: skip

    return edge


def _rituximab_ongoing(chart: Chart, rng: random.Random, ctx: Context) -> None:
    add_medication(chart, rng, "rituximab", "MedicationRequest", _before(ctx, rng.randint(40, 200)),
                   status="active", route="iv", dose="100 mg weekly")  # fmt: skip


def _vincristine_recent(chart: Chart, rng: random.Random, ctx: Context) -> None:
    add_medication(chart, rng, "vincristine", "MedicationAdministration",
                   _before(ctx, rng.randint(1, 20)), status="completed", route="iv",
                   dose="1.4 mg/m2")  # fmt: skip


def _rituximab_not_counted(form: str, status: str, days: int | None = None) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        day = _before(ctx, days if days is not None else rng.randint(30, 300))
        add_medication(chart, rng, "rituximab", form, day, status=status,  # type: ignore[arg-type]
                       route="iv", dose="375 mg/m2")  # fmt: skip

    return edge


def _procedure(concept: codes.Concept, status: str, variant: int | None = None) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        chosen = rng.randrange(len(concept.variants)) if variant is None else variant
        when = iso(_before(ctx, rng.randint(200, 3000)))
        chart.procedures.append(ProcedureFact(concept, chosen, when, status))

    return edge


def _asplenia_only(chart: Chart, rng: random.Random, ctx: Context) -> None:
    add_condition(chart, rng, "asplenia", _before(ctx, rng.randint(400, 4000)))


ITP_EDGES: dict[str, Edge] = {
    "inc11-rituximab-last-dose-28d": _rituximab_last_dose(28),
    "inc11-rituximab-last-dose-27d": _rituximab_last_dose(27),
    "inc11-rituximab-ongoing-order": _rituximab_ongoing,
    "inc11-vincristine-recent": _vincristine_recent,
    "inc7-rituximab-order-cancelled": _rituximab_not_counted("MedicationRequest", "cancelled"),
    "inc7-rituximab-order-draft": _rituximab_not_counted("MedicationRequest", "draft"),
    "inc7-rituximab-not-taken": _rituximab_not_counted("MedicationStatement", "not-taken"),
    "inc7-rituximab-not-done": _rituximab_not_counted("MedicationAdministration", "not-done"),
    "inc7-rituximab-after-D": _rituximab_not_counted("MedicationRequest", "active", days=-10),
    "inc7-splenectomy-not-done": _procedure(codes.SPLENECTOMY, "not-done"),
    "inc7-splenectomy-entered-in-error": _procedure(codes.SPLENECTOMY, "entered-in-error"),
    "inc7-incidental-splenectomy": _procedure(codes.INCIDENTAL_SPLENECTOMY, "completed"),
    "inc7-splenectomy-by-name": _procedure(
        codes.SPLENECTOMY, "completed", variant=len(codes.SPLENECTOMY.variants) - 1
    ),
    "inc7-asplenia-condition-only": _asplenia_only,
}
"""Edges of inc-7 and inc-11, for ITP patients."""


# --- exclusions and screening-visit criteria ------------------------------------------------


def _antibiotic(days: int, route: str, status: str = "completed") -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        drug = "ceftriaxone" if route == "iv" else "levofloxacin"
        form = "MedicationRequest" if status == "cancelled" else "MedicationAdministration"
        add_medication(chart, rng, drug, form, _before(ctx, days),  # type: ignore[arg-type]
                       status=status, route=route, dose="single dose")  # fmt: skip

    return edge


def _herpes(days: int, verification: str = "confirmed") -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        add_condition(chart, rng, "herpes-zoster", _before(ctx, days), verification=verification,
                      recorded_only=False)  # fmt: skip

    return edge


def _herpes_recorded_later(chart: Chart, rng: random.Random, ctx: Context) -> None:
    concept = codes.CONDITIONS["herpes-zoster"]
    chart.conditions.append(
        ConditionFact(concept, rng.randrange(len(concept.variants)), iso(_before(ctx, 85)),
                      iso(_before(ctx, 80)), "active", "confirmed")
    )  # fmt: skip


def _herpes_month(chart: Chart, rng: random.Random, ctx: Context) -> None:
    month = _before(ctx, 85).strftime("%Y-%m")
    add_condition(chart, rng, "herpes-zoster", _before(ctx, 85), clinical="resolved",
                  partial=month)  # fmt: skip


def _hcg(days: int, value: float, quantitative: bool) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        variants = [n for n, h in enumerate(codes.HCG_CODES) if h.quantitative == quantitative]
        add_measure(chart, rng, "hcg", _before(ctx, days), value, 0,
                    variant=rng.choice(variants), style=rng.randrange(2))  # fmt: skip

    return edge


def _pregnancy_ended(chart: Chart, rng: random.Random, ctx: Context) -> None:
    delivery = _before(ctx, rng.randint(10, 100))
    add_condition(chart, rng, "pregnancy", shift(delivery, -270), resolved=delivery)


def _condition(key: str, days: int, *, verification: str = "confirmed",
               resolved: bool = False) -> Edge:  # fmt: skip
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        onset = _before(ctx, days + rng.randint(0, 300))
        ended = shift(onset, 30) if resolved else None
        add_condition(chart, rng, key, onset, verification=verification, resolved=ended)

    return edge


def _enrolment(study: codes.Study, status: str, end_days: int | None) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        start = _before(ctx, rng.randint(200, 500))
        end = iso(_before(ctx, end_days)) if end_days is not None else None
        chart.enrolments.append(EnrolmentFact(study, status, iso(start), end))

    return edge


def _replace_measures(chart: Chart, kind: MeasureKind) -> None:
    chart.measures = [m for m in chart.measures if m.kind != kind]


def _ecog(points: tuple[tuple[int, int, str], ...]) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        _replace_measures(chart, "ecog")
        for days, grade, status in points:
            add_measure(chart, rng, "ecog", _before(ctx, days), grade, 3, status=status)

    return edge


def _lvef(days: int, value: int) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        _replace_measures(chart, "lvef")
        add_measure(chart, rng, "lvef", _before(ctx, days), value, len(codes.LVEF_CODES))

    return edge


def _nyha_improved(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _replace_measures(chart, "nyha")
    add_condition(chart, rng, "heart-failure", _before(ctx, rng.randint(400, 2000)))
    add_measure(chart, rng, "nyha", _before(ctx, 300), 3, 1)
    add_measure(chart, rng, "nyha", _before(ctx, 30), 2, 1)


def _heart_failure_without_class(chart: Chart, rng: random.Random, ctx: Context) -> None:
    _replace_measures(chart, "nyha")
    add_condition(chart, rng, "heart-failure", _before(ctx, rng.randint(200, 2000)))


def _allergy(clinical: str | None, verification: str) -> Edge:
    def edge(chart: Chart, rng: random.Random, ctx: Context) -> None:
        substance = codes.ALLERGENS[rng.choice(("cyclophosphamide", "fludarabine",
                                                "tocilizumab"))]  # fmt: skip
        chart.allergies.append(
            AllergyFact(substance, rng.randrange(len(substance.variants)),
                        iso(_before(ctx, rng.randint(60, 3000))), clinical, verification, "high")
        )  # fmt: skip

    return edge


ANY_EDGES: dict[str, Edge] = {
    "exc2-iv-antibiotic-7d": _antibiotic(7, "iv"),
    "exc2-iv-antibiotic-8d": _antibiotic(8, "iv"),
    "exc2-iv-antibiotic-on-D": _antibiotic(0, "iv"),
    "exc2-oral-antibiotic-2d": _antibiotic(2, "oral"),
    "exc2-iv-antibiotic-order-cancelled": _antibiotic(2, "iv", status="cancelled"),
    "exc8-zoster-84d": _herpes(84),
    "exc8-zoster-85d": _herpes(85),
    "exc8-zoster-after-D": _herpes(-5),
    "exc8-zoster-refuted": _herpes(10, verification="refuted"),
    "exc8-onset-85d-recorded-80d": _herpes_recorded_later,
    "exc8-onset-month-across-window": _herpes_month,
    "exc9-hcg-positive-30d": _hcg(30, 1, quantitative=False),
    "exc9-hcg-positive-31d": _hcg(31, 1, quantitative=False),
    "exc9-hcg-exactly-5": _hcg(5, 5, quantitative=True),
    "exc9-hcg-4.9": _hcg(5, 4.9, quantitative=True),
    "exc9-pregnancy-ended": _pregnancy_ended,
    "exc9-pregnancy-entered-in-error": _condition("pregnancy", 30, verification="entered-in-error"),
    "exc11-other-study-ended-90d": _enrolment(codes.OTHER_STUDIES[0], "on-study", 90),
    "exc11-other-study-ended-91d": _enrolment(codes.OTHER_STUDIES[1], "on-study", 91),
    "exc11-kn5501-itself": _enrolment(codes.KN5501, "on-study", None),
    "exc11-off-study": _enrolment(codes.OTHER_STUDIES[0], "off-study", 10),
    "inc9-ecog-90d": _ecog(((90, 1, "final"),)),
    "inc9-ecog-91d": _ecog(((91, 1, "final"),)),
    "inc9-ecog-3-latest": _ecog(((60, 0, "final"), (5, 3, "final"))),
    "inc9-ecog-cancelled": _ecog(((30, 1, "final"), (5, 3, "cancelled"))),
    "inc10-lvef-exactly-50": _lvef(40, 50),
    "inc10-lvef-181d": _lvef(181, 60),
    "inc10-lvef-49": _lvef(20, 49),
    "exc4-nyha-iii-then-ii": _nyha_improved,
    "exc4-heart-failure-no-class": _heart_failure_without_class,
    "exc7-skin-cancer-active": _condition("skin-cancer-non-melanoma", 100),
    "exc7-breast-or-cervix-resolved": _condition("breast-or-cervix-cancer", 900, resolved=True),
    "exc7-other-cancer-resolved": _condition("malignancy", 900, resolved=True),
    "exc1-allergy-refuted": _allergy("active", "refuted"),
    "exc1-allergy-inactive": _allergy("inactive", "confirmed"),
    "inc4-splenomegaly": _condition("splenomegaly", 100),
    "exc5-epilepsy-resolved": _condition("epilepsy", 400, resolved=True),
    "exc5-stroke": _condition("cerebral-infarction", 100),
    "exc6-severe-herpes-long-ago": _condition("herpes-severe", 1500, resolved=True),
    "exc3-hiv-refuted": _condition("hiv", 100, verification="refuted"),
    "exc10-hit-resolved": _condition("heparin-induced-thrombocytopenia", 200, resolved=True),
    "inc2-itp-entered-in-error": _condition("itp", 100, verification="entered-in-error"),
}
"""Edges anyone can be on."""

_FEMALE_ONLY = ("exc9-pregnancy-ended", "exc9-pregnancy-entered-in-error")


def apply_edge(chart: Chart, rng: random.Random, ctx: Context, group: dict[str, Edge]) -> None:
    """One edge of ``group``, chosen at random, recorded in ``chart.edges``."""
    names = [n for n in group if ctx.female or n not in _FEMALE_ONLY]
    name = rng.choice(names)
    group[name](chart, rng, ctx)
    chart.edges.append(name)
