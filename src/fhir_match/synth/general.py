"""Ordinary hospital records, and the conditions criteria.md excludes, at population rates.

Everyone gets a background (common chronic diseases, routine blood counts, common drugs,
allergies); then each exclusion of criteria.md is added with its own probability, one rate for
the general population and a higher one for ITP patients (whose exclusions decide outcomes).
Every window-sensitive record made here lies well inside or well outside its window; the
window edges themselves are made on purpose in ``edges``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from fhir_match.synth import codes
from fhir_match.synth.charting import (
    LabProfile,
    add_condition,
    add_count,
    add_course,
    add_measure,
    add_medication,
    dose_days,
)
from fhir_match.synth.facts import (
    AllergyFact,
    Chart,
    EnrolmentFact,
    MedicationForm,
    ProcedureFact,
)
from fhir_match.synth.timeline import iso, shift

__all__ = ["EXCLUSIONS", "Context", "background", "exclusions", "washout_edges"]


@dataclass(frozen=True)
class Context:
    """What the generators need to know about the patient being made."""

    as_of: date
    profile: LabProfile
    age: int
    female: bool


def washout_edges(as_of: date) -> tuple[date, ...]:
    """The first day inc-11 reads as recent (D-27) and the day after D: a course across either
    is written dose by dose."""
    return shift(as_of, -27), shift(as_of, 1)


def _ago(ctx: Context, rng: random.Random, low: int, high: int) -> date:
    return shift(ctx.as_of, -rng.randint(low, high))


def _partial(rng: random.Random, day: date, as_of: date) -> str | None:
    """Old onsets are often written as a year or a year-month; never one near D."""
    if (as_of - day).days < 800 or rng.random() < 0.6:
        return None
    return day.strftime("%Y") if rng.random() < 0.5 else day.strftime("%Y-%m")


def _chronic(chart: Chart, rng: random.Random, ctx: Context, key: str) -> None:
    onset = _ago(ctx, rng, 180, 6000)
    add_condition(chart, rng, key, onset, partial=_partial(rng, onset, ctx.as_of))


def _daily(chart: Chart, rng: random.Random, ctx: Context, drug: str, dose: str) -> None:
    """A long-term daily drug: an active order renewed recently, or an active statement."""
    form: MedicationForm = "MedicationRequest" if rng.random() < 0.7 else "MedicationStatement"
    add_medication(
        chart, rng, drug, form, _ago(ctx, rng, 1, 300), status="active", route="oral", dose=dose
    )


_COMORBIDITY: tuple[tuple[str, Callable[[Context], float], str | None, str], ...] = (
    ("hypertension", lambda c: min(0.6, max(0.0, 0.02 + (c.age - 20) * 0.009)), "amlodipine",
     "5 mg qd"),
    ("type-2-diabetes", lambda c: min(0.25, max(0.0, (c.age - 25) * 0.004)), "metformin",
     "500 mg bid"),
    ("hyperlipidaemia", lambda c: min(0.3, max(0.0, (c.age - 25) * 0.005)), "atorvastatin",
     "20 mg qn"),
    ("copd", lambda c: 0.05 if c.age > 45 else 0.0, "salbutamol", "2 puffs prn"),
    ("asthma", lambda c: 0.04, "salbutamol", "2 puffs prn"),
    ("gerd", lambda c: 0.06, "omeprazole", "20 mg qd"),
    ("osteoarthritis", lambda c: 0.12 if c.age > 50 else 0.0, None, ""),
    ("osteoporosis", lambda c: 0.2 if c.female and c.age > 55 else 0.0, "calcium", "1 tab qd"),
    ("ckd", lambda c: 0.06 if c.age > 55 else 0.0, None, ""),
    ("depression", lambda c: 0.04, None, ""),
    ("gout", lambda c: 0.03 if not c.female else 0.005, None, ""),
    ("fatty-liver", lambda c: 0.08, None, ""),
)  # fmt: skip


def _comorbidities(chart: Chart, rng: random.Random, ctx: Context) -> None:
    for key, rate, drug, dose in _COMORBIDITY:
        if rng.random() >= rate(ctx):
            continue
        _chronic(chart, rng, ctx, key)
        if drug is not None:
            _daily(chart, rng, ctx, drug, dose)
        if key == "osteoporosis" and rng.random() < 0.15:
            # Denosumab every 6 months: a monoclonal antibody for inc-11, dated by its last dose.
            add_medication(
                chart, rng, "denosumab", "MedicationAdministration", _ago(ctx, rng, 0, 180),
                status="completed", route="sc", dose="60 mg",
            )  # fmt: skip


def _routine_counts(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """Blood counts taken for other reasons: normal platelets, now and then a little off."""
    if rng.random() < 0.2:
        return
    for offset in rng.sample(range(0, 1100), rng.randint(1, 6)):
        roll = rng.random()
        value = (
            rng.randint(150, 400)
            if roll < 0.95
            else rng.randint(110, 149)
            if roll < 0.98
            else rng.randint(401, 460)
        )
        add_count(chart, rng, ctx.profile, shift(ctx.as_of, -offset), value)
    if rng.random() < 0.03:
        add_count(chart, rng, ctx.profile, _ago(ctx, rng, -60, -1), rng.randint(150, 400))


_ORAL_ANTIBIOTICS = ("amoxicillin", "levofloxacin", "cefuroxime", "azithromycin")
_IV_ANTIBIOTICS = ("ceftriaxone", "piperacillin-tazobactam", "levofloxacin", "meropenem",
                   "vancomycin", "cefazolin")  # fmt: skip


def _antibiotic_course(
    chart: Chart, rng: random.Random, ctx: Context, start: date, intravenous: bool, done: bool
) -> None:
    drug = rng.choice(_IV_ANTIBIOTICS if intravenous else _ORAL_ANTIBIOTICS)
    length = rng.randint(3, 10)
    doses = [d for d in dose_days(start, length, 1) if d <= ctx.as_of]
    window = (shift(ctx.as_of, -7), shift(ctx.as_of, 1))
    add_course(
        chart, rng, drug, doses, route="iv" if intravenous else "oral",
        dose="q12h" if intravenous else "bid", edges=window, done=done,
    )  # fmt: skip


def _infections(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """Past infections treated with antibiotics, all ended well before the 7-day window."""
    if rng.random() < 0.12:
        onset = _ago(ctx, rng, 30, 1500)
        key = rng.choice(("pneumonia", "urinary-infection", "cellulitis"))
        add_condition(chart, rng, key, onset, resolved=shift(onset, 14))
        _antibiotic_course(chart, rng, ctx, onset, rng.random() < 0.5, done=True)
    if rng.random() < 0.05:
        start = _ago(ctx, rng, 10, 1500)
        drug = rng.choice(("prednisone", "prednisone", "methylprednisolone"))
        add_course(
            chart, rng, drug, dose_days(start, 5, 1), route="oral", dose="40 mg qd",
            edges=washout_edges(ctx.as_of),
        )  # fmt: skip


_ALLERGIES = (("penicillin", 0.06), ("sulfonamide", 0.02), ("contrast", 0.01), ("seafood", 0.02))


def _allergies(chart: Chart, rng: random.Random, ctx: Context) -> None:
    for key, rate in _ALLERGIES:
        if rng.random() < rate:
            substance = codes.ALLERGENS[key]
            chart.allergies.append(
                AllergyFact(
                    substance, rng.randrange(len(substance.variants)),
                    iso(_ago(ctx, rng, 100, 5000)), "active", "confirmed",
                    rng.choice(("low", "high", None)),
                )
            )  # fmt: skip


def _fertile(ctx: Context) -> bool:
    return ctx.female and 18 <= ctx.age <= 48


def _hcg(chart: Chart, rng: random.Random, day: date, positive: bool) -> None:
    variant = rng.randrange(len(codes.HCG_CODES))
    if codes.HCG_CODES[variant].quantitative:
        value = rng.randint(50, 90000) if positive else round(rng.uniform(0.1, 2.9), 1)
    else:
        value = 1 if positive else 0
    add_measure(chart, rng, "hcg", day, value, len(codes.HCG_CODES), variant=variant,
                style=rng.randrange(2))  # fmt: skip


def background(chart: Chart, rng: random.Random, ctx: Context, routine_counts: bool) -> None:
    """The record most patients have: nothing here decides a criterion except inc-1/inc-3 and
    the not-met of the exclusions."""
    _comorbidities(chart, rng, ctx)
    if routine_counts:
        _routine_counts(chart, rng, ctx)
    _infections(chart, rng, ctx)
    _allergies(chart, rng, ctx)
    if _fertile(ctx) and rng.random() < 0.12:
        _hcg(chart, rng, _ago(ctx, rng, 0, 400), positive=False)


# --- exclusions ----------------------------------------------------------------------------

_SECONDARY = (
    ("hypothyroidism", 25), ("autoimmune-thyroiditis", 10), ("thyrotoxicosis", 4),
    ("thyroid-disorder", 3), ("chronic-hepatitis-b", 20), ("chronic-hepatitis-c", 4),
    ("helicobacter-pylori", 12), ("sle", 4), ("rheumatoid-arthritis", 6), ("sjogren", 3),
    ("antiphospholipid", 2), ("autoimmune-haemolytic-anaemia", 1), ("cirrhosis", 4),
    ("chronic-liver-disease", 2), ("portal-hypertension", 1), ("monoclonal-gammopathy", 2),
    ("myelodysplastic-syndrome", 1), ("aplastic-anaemia", 1), ("non-hodgkin-lymphoma", 2),
    ("chronic-lymphocytic-leukaemia", 1), ("multiple-myeloma", 1), ("hodgkin-lymphoma", 1),
)  # fmt: skip
_DRUG_FOR = {
    "hypothyroidism": ("levothyroxine", "50 mcg qd"),
    "autoimmune-thyroiditis": ("levothyroxine", "25 mcg qd"),
    "chronic-hepatitis-b": ("entecavir", "0.5 mg qd"),
    "sle": ("hydroxychloroquine", "200 mg bid"),
    "rheumatoid-arthritis": ("hydroxychloroquine", "200 mg bid"),
}


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    keys = [k for k, _ in choices]
    return rng.choices(keys, weights=[w for _, w in choices])[0]


def _lymphoma_treatment(chart: Chart, rng: random.Random, ctx: Context, onset: date) -> None:
    """R-CHOP-like cycles every 21 days from diagnosis, some running up to D."""
    start = max(onset, _ago(ctx, rng, 30, 900))
    cycles = [d for d in dose_days(start, 6, 21) if d <= ctx.as_of]
    for day in cycles:
        add_course(chart, rng, "rituximab", [day], route="iv", dose="375 mg/m2",
                   edges=washout_edges(ctx.as_of))  # fmt: skip
        add_course(chart, rng, "cyclophosphamide", [day], route="iv", dose="750 mg/m2",
                   edges=washout_edges(ctx.as_of))  # fmt: skip
    if cycles and rng.random() < 0.5:
        concept = codes.CHEMO_PROCEDURE
        chart.procedures.append(
            ProcedureFact(concept, rng.randrange(len(concept.variants)), iso(cycles[-1]))
        )


def _secondary_cause(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = _weighted(rng, _SECONDARY)
    onset = _ago(ctx, rng, 60, 4000)
    if rng.random() < 0.15 and key not in ("chronic-hepatitis-b", "cirrhosis"):
        add_condition(chart, rng, key, onset, resolved=shift(onset, rng.randint(30, 50)))
        return
    add_condition(chart, rng, key, onset, partial=_partial(rng, onset, ctx.as_of))
    if key in _DRUG_FOR:
        _daily(chart, rng, ctx, *_DRUG_FOR[key])
    if key == "rheumatoid-arthritis" and rng.random() < 0.2:
        add_medication(chart, rng, "tocilizumab", "MedicationRequest", _ago(ctx, rng, 1, 200),
                       status="active", route="sc", dose="162 mg q2w")  # fmt: skip
    if key in ("non-hodgkin-lymphoma", "chronic-lymphocytic-leukaemia"):
        _lymphoma_treatment(chart, rng, ctx, onset)
    if key == "cirrhosis":
        _cirrhosis_thrombocytopenia(chart, rng, ctx)


def _cirrhosis_thrombocytopenia(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """Low platelets of portal hypertension, coded as unspecified thrombocytopenia, with a
    splenomegaly and sometimes a TPO-RA before a procedure (inc-2 then has a hint of ITP)."""
    for offset in rng.sample(range(5, 400), 3):
        add_count(chart, rng, ctx.profile, shift(ctx.as_of, -offset), rng.randint(45, 120))
    if rng.random() < 0.5:
        add_condition(chart, rng, "thrombocytopenia-unspecified", _ago(ctx, rng, 30, 900))
    if rng.random() < 0.5:
        add_condition(chart, rng, rng.choice(("splenomegaly", "hypersplenism")),
                      _ago(ctx, rng, 30, 900))  # fmt: skip
    if rng.random() < 0.25:
        add_course(chart, rng, "avatrombopag", dose_days(_ago(ctx, rng, 40, 600), 5, 1),
                   route="oral", dose="60 mg qd", edges=washout_edges(ctx.as_of))  # fmt: skip


_OTHER_THROMBOCYTOPENIA = (
    ("heparin-induced-thrombocytopenia", 4), ("thrombotic-thrombocytopenic-purpura", 2),
    ("disseminated-intravascular-coagulation", 2), ("drug-induced-thrombocytopenia", 3),
    ("inherited-thrombocytopenia", 1), ("posttransfusion-purpura", 1),
)  # fmt: skip


def _other_thrombocytopenia(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = _weighted(rng, _OTHER_THROMBOCYTOPENIA)
    onset = _ago(ctx, rng, 20, 2000)
    if key == "heparin-induced-thrombocytopenia":
        add_medication(chart, rng, "heparin", "MedicationAdministration", shift(onset, -7),
                       status="completed", route="sc", dose="5000 units")  # fmt: skip
    resolved = shift(onset, 30) if rng.random() < 0.25 and shift(onset, 30) <= ctx.as_of else None
    add_condition(chart, rng, key, onset, resolved=resolved)


def _immunodeficiency(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = _weighted(
        rng, (("hiv", 5), ("common-variable-immunodeficiency", 3), ("immunodeficiency", 2))
    )
    add_condition(chart, rng, key, _ago(ctx, rng, 90, 5000))


def _trial_allergy(chart: Chart, rng: random.Random, ctx: Context) -> None:
    substance = codes.ALLERGENS[rng.choice(("cyclophosphamide", "fludarabine", "tocilizumab"))]
    roll = rng.random()
    clinical, verification = (
        ("active", "confirmed") if roll < 0.7
        else ("active", "unconfirmed") if roll < 0.8
        else ("inactive", "confirmed") if roll < 0.85
        else ("resolved", "confirmed") if roll < 0.9
        else ("active", "refuted") if roll < 0.95
        else (None, "entered-in-error")
    )  # fmt: skip
    chart.allergies.append(
        AllergyFact(
            substance, rng.randrange(len(substance.variants)), iso(_ago(ctx, rng, 30, 3000)),
            clinical, verification, rng.choice(("low", "high", "unable-to-assess", None)),
        )
    )  # fmt: skip


def _recent_iv_antibiotic(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """An inpatient on IV antibiotics now: the course starts inside the 7 days before D."""
    start = _ago(ctx, rng, 0, 6)
    add_condition(chart, rng, rng.choice(("pneumonia", "urinary-infection", "cellulitis")), start)
    _antibiotic_course(chart, rng, ctx, start, intravenous=True, done=rng.random() < 0.6)


def _heart_failure(chart: Chart, rng: random.Random, ctx: Context) -> None:
    onset = _ago(ctx, rng, 180, 4000)
    if rng.random() < 0.15:
        add_condition(chart, rng, "heart-failure", onset, resolved=shift(onset, 90))
        return
    add_condition(chart, rng, "heart-failure", onset)
    if rng.random() < 0.6:
        days = sorted(rng.sample(range(0, (ctx.as_of - onset).days), rng.randint(1, 3)))
        for offset in days:
            grade = rng.choices((1, 2, 3, 4), weights=(30, 35, 25, 10))[0]
            add_measure(chart, rng, "nyha", shift(onset, offset), grade, 1)


def _epilepsy(chart: Chart, rng: random.Random, ctx: Context) -> None:
    onset = _ago(ctx, rng, 200, 8000)
    if rng.random() < 0.15:
        add_condition(chart, rng, "epilepsy", onset, resolved=shift(onset, 120))
    else:
        add_condition(chart, rng, "epilepsy", onset, partial=_partial(rng, onset, ctx.as_of))


def _cns_other(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = rng.choice(
        ("cerebral-infarction", "cerebral-infarction", "intracerebral-haemorrhage", "parkinson",
         "cns-disorder")
    )  # fmt: skip
    onset = _ago(ctx, rng, 30, 4000)
    resolved = shift(onset, 20) if rng.random() < 0.2 else None
    add_condition(chart, rng, key, onset, resolved=resolved)


def _severe_herpes(chart: Chart, rng: random.Random, ctx: Context) -> None:
    onset = _ago(ctx, rng, 100, 4000)
    add_condition(chart, rng, "herpes-severe", onset, resolved=shift(onset, 30))


def _recent_herpes(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """A herpes or zoster episode inside the 12 weeks before D (well inside, not on its edge)."""
    onset = _ago(ctx, rng, 0, 80)
    key = rng.choice(("herpes-zoster", "herpes-zoster", "herpes-simplex", "varicella"))
    resolved = shift(onset, 14) if shift(onset, 14) <= ctx.as_of and rng.random() < 0.5 else None
    add_condition(chart, rng, key, onset, resolved=resolved)
    add_course(chart, rng, "valaciclovir", dose_days(onset, 7, 1)[: (ctx.as_of - onset).days + 1],
               route="oral", dose="1 g tid", edges=washout_edges(ctx.as_of))  # fmt: skip


def _old_herpes(chart: Chart, rng: random.Random, ctx: Context) -> None:
    onset = _ago(ctx, rng, 120, 5000)
    key = rng.choice(("herpes-zoster", "herpes-simplex", "varicella"))
    partial = _partial(rng, onset, ctx.as_of)
    if partial is None:
        add_condition(chart, rng, key, onset, resolved=shift(onset, 21))
    else:
        add_condition(chart, rng, key, onset, clinical="resolved", partial=partial)


def _active_malignancy(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = "breast-or-cervix-cancer" if ctx.female and rng.random() < 0.4 else "malignancy"
    onset = _ago(ctx, rng, 30, 2000)
    add_condition(chart, rng, key, onset)
    if rng.random() < 0.4:
        start = max(onset, _ago(ctx, rng, 0, 200))
        cycles = [d for d in dose_days(start, 4, 21) if d <= ctx.as_of]
        for day in cycles:
            add_course(chart, rng, "cyclophosphamide", [day], route="iv", dose="600 mg/m2",
                       edges=washout_edges(ctx.as_of))  # fmt: skip


def _resolved_malignancy(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = rng.choice(
        ("malignancy", "breast-or-cervix-cancer", "skin-cancer-non-melanoma",
         "carcinoma-in-situ-bladder")
    )  # fmt: skip
    onset = _ago(ctx, rng, 800, 6000)
    add_condition(chart, rng, key, onset, resolved=shift(onset, rng.randint(120, 600)))


def _pregnancy(chart: Chart, rng: random.Random, ctx: Context) -> None:
    if not _fertile(ctx):
        return
    roll = rng.random()
    if roll < 0.4:  # pregnant now
        onset = _ago(ctx, rng, 20, 250)
        add_condition(chart, rng, "pregnancy", onset)
        if rng.random() < 0.2:
            add_condition(chart, rng, "pregnancy-thrombocytopenia", shift(onset, 10))
        _hcg(chart, rng, shift(onset, 3), positive=True)
    elif roll < 0.65:  # delivered and breastfeeding
        delivery = _ago(ctx, rng, 20, 300)
        add_condition(chart, rng, "pregnancy", shift(delivery, -270), resolved=delivery)
        add_condition(chart, rng, "lactation", delivery)
    elif roll < 0.9:  # an earlier pregnancy, over
        delivery = _ago(ctx, rng, 400, 3000)
        add_condition(chart, rng, "pregnancy", shift(delivery, -270), resolved=delivery)
    else:  # a positive test, not yet a diagnosis
        _hcg(chart, rng, _ago(ctx, rng, 0, 25), positive=True)


_ON_STUDY_FOREVER = ("on-study", "on-study-intervention", "follow-up")


def _other_trial(chart: Chart, rng: random.Random, ctx: Context) -> None:
    study = rng.choice(codes.OTHER_STUDIES)
    start = _ago(ctx, rng, 60, 900)
    roll = rng.random()
    if roll < 0.45:
        fact = EnrolmentFact(study, rng.choice(_ON_STUDY_FOREVER), iso(start), None)
    elif roll < 0.55:
        fact = EnrolmentFact(study, "on-study", None, None)
    elif roll < 0.7:
        end = max(_ago(ctx, rng, 1, 80), shift(start, 1))
        fact = EnrolmentFact(study, "on-study-observation", iso(start), iso(end))
    elif roll < 0.85:
        begin = _ago(ctx, rng, 300, 1200)
        fact = EnrolmentFact(study, "on-study", iso(begin), iso(shift(begin, rng.randint(30, 200))))
    else:
        fact = EnrolmentFact(study, rng.choice(("off-study", "withdrawn", "ineligible")),
                             iso(start), None)  # fmt: skip
    chart.enrolments.append(fact)


def _ecog(chart: Chart, rng: random.Random, ctx: Context) -> None:
    for offset in sorted(rng.sample(range(0, 400), rng.randint(1, 3)), reverse=True):
        grade = rng.choices((0, 1, 2, 3), weights=(45, 35, 12, 8))[0]
        add_measure(chart, rng, "ecog", shift(ctx.as_of, -offset), grade, 3)


def _echo(chart: Chart, rng: random.Random, ctx: Context) -> None:
    for offset in rng.sample(range(0, 500), rng.randint(1, 2)):
        value = rng.randint(35, 49) if rng.random() < 0.08 else rng.randint(52, 72)
        add_measure(chart, rng, "lvef", shift(ctx.as_of, -offset), value, len(codes.LVEF_CODES))


def _effusion(chart: Chart, rng: random.Random, ctx: Context) -> None:
    add_condition(chart, rng, "pericardial-effusion", _ago(ctx, rng, 10, 700))


def _splenomegaly(chart: Chart, rng: random.Random, ctx: Context) -> None:
    key = rng.choice(("splenomegaly", "splenomegaly", "hepatosplenomegaly",
                      "congestive-splenomegaly"))  # fmt: skip
    onset = _ago(ctx, rng, 90, 2000)
    resolved = shift(onset, 60) if rng.random() < 0.15 else None
    add_condition(chart, rng, key, onset, resolved=resolved)


Maker = Callable[[Chart, random.Random, Context], None]

EXCLUSIONS: tuple[tuple[str, float, float, Maker], ...] = (
    ("secondary-cause", 0.10, 0.12, _secondary_cause),
    ("other-thrombocytopenia", 0.004, 0.03, _other_thrombocytopenia),
    ("immunodeficiency", 0.003, 0.015, _immunodeficiency),
    ("trial-drug-allergy", 0.003, 0.015, _trial_allergy),
    ("iv-antibiotic-now", 0.02, 0.03, _recent_iv_antibiotic),
    ("heart-failure", 0.025, 0.02, _heart_failure),
    ("epilepsy", 0.007, 0.01, _epilepsy),
    ("cns-other", 0.025, 0.025, _cns_other),
    ("severe-herpes", 0.003, 0.01, _severe_herpes),
    ("recent-herpes", 0.008, 0.03, _recent_herpes),
    ("old-herpes", 0.05, 0.08, _old_herpes),
    ("active-malignancy", 0.02, 0.015, _active_malignancy),
    ("resolved-malignancy", 0.02, 0.03, _resolved_malignancy),
    ("pregnancy-or-lactation", 0.08, 0.08, _pregnancy),
    ("other-trial", 0.005, 0.05, _other_trial),
    ("ecog", 0.03, 0.45, _ecog),
    ("echocardiogram", 0.08, 0.30, _echo),
    ("pericardial-effusion", 0.003, 0.01, _effusion),
    ("splenomegaly", 0.005, 0.02, _splenomegaly),
)
"""(name, rate in the general population, rate among ITP patients, maker)."""


def exclusions(chart: Chart, rng: random.Random, ctx: Context, itp: bool) -> None:
    for _name, general_rate, itp_rate, make in EXCLUSIONS:
        if rng.random() < (itp_rate if itp else general_rate):
            make(chart, rng, ctx)
