"""ITP courses: diagnosis, lines of therapy with their responses, and the platelet counts between.

A course is planned first (which lines, when, how each went), then written: each line becomes
the orders, statements, administrations or procedure a hospital would record, and the counts
follow the responses (low at diagnosis and before each new line, up after a response, down
again at relapse). The sequences follow the Chinese adult ITP guideline (2020): corticosteroids
(+/- IVIG, +/- rhTPO) first, then TPO receptor agonists or rhTPO, rituximab, and then
immunosuppressants, danazol, decitabine or vincristine, with splenectomy now rare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date

from fhir_match.synth import codes
from fhir_match.synth.charting import (
    add_condition,
    add_count,
    add_course,
    add_measure,
    add_medication,
    choose_route,
    dose_days,
)
from fhir_match.synth.facts import Chart, ProcedureFact
from fhir_match.synth.general import Context, washout_edges
from fhir_match.synth.timeline import iso, shift

__all__ = ["PHENOTYPES", "Line", "itp_course", "plan_lines"]

PHENOTYPES = (
    ("itp-newly-diagnosed", 14),
    ("itp-remission", 7),
    ("itp-observation", 5),
    ("itp-tpo-responding", 17),
    ("itp-tpo-failure", 15),
    ("itp-refractory", 34),
    ("itp-splenectomy", 8),
)
"""ITP patients by where they are in their course (weights). Refractory patients are
over-sampled: they are the ones the study looks for."""

_DIAGNOSED_DAYS_AGO = {
    "itp-newly-diagnosed": (14, 84),
    "itp-remission": (730, 3650),
    "itp-observation": (365, 2900),
    "itp-tpo-responding": (180, 2900),
    "itp-tpo-failure": (270, 2900),
    "itp-refractory": (400, 4400),
    "itp-splenectomy": (1100, 5500),
}
_LEVEL = {"complete": (100, 320), "partial": (30, 99), "none": (3, 29)}
_TPO_RA = (("hetrombopag", 30), ("eltrombopag", 35), ("avatrombopag", 20), ("romiplostim", 15))
_LATER = ("immunosuppressant", "danazol", "decitabine", "vincristine", "tpo-ra")


@dataclass(frozen=True)
class Line:
    therapy: str
    start: date
    response: str
    concurrent: bool = False
    """Given alongside the previous line (IVIG or rhTPO with the first corticosteroid)."""


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _first_line(rng: random.Random, dx: date, response: str) -> list[Line]:
    lines = [Line("steroid", dx, response)]
    if rng.random() < 0.4:
        lines.append(Line("ivig", dx, response, concurrent=True))
    if rng.random() < 0.2:
        lines.append(Line("rhtpo", shift(dx, rng.randint(0, 5)), response, concurrent=True))
    return lines


def _later_lines(phenotype: str, rng: random.Random) -> list[tuple[str, str]]:
    """(therapy, response) for every line after the first, in order."""
    if phenotype == "itp-tpo-responding":
        switch = [("tpo-ra", "none")] if rng.random() < 0.3 else []
        return [*switch, ("tpo-ra", rng.choice(("complete", "partial", "partial")))]
    if phenotype == "itp-tpo-failure":
        lines = [(rng.choice(("tpo-ra", "rhtpo")), "none")]
        if rng.random() < 0.6:
            lines.append(("tpo-ra", "none"))
        if rng.random() < 0.4:
            lines.append((rng.choice(("immunosuppressant", "danazol")), "none"))
        return lines
    if phenotype == "itp-refractory":
        lines = [(rng.choice(("tpo-ra", "tpo-ra", "rhtpo")), rng.choice(("none", "partial"))),
                 ("rituximab", rng.choice(("none", "none", "partial")))]  # fmt: skip
        lines += [(rng.choice(_LATER), "none") for _ in range(rng.randint(0, 2))]
        return lines
    if phenotype == "itp-splenectomy":
        lines = [("tpo-ra", "none")] if rng.random() < 0.4 else []
        lines.append(("splenectomy", "complete"))
        if rng.random() < 0.6:
            lines.append((rng.choice(("tpo-ra", "steroid")), rng.choice(("none", "partial"))))
        return lines
    return []


def plan_lines(phenotype: str, dx: date, as_of: date, rng: random.Random) -> list[Line]:
    """The course from diagnosis to D: later lines spread over the time there was, each after
    the previous one failed or relapsed; the last one starts at least three weeks before D."""
    first = {
        "itp-newly-diagnosed": rng.choice(("complete", "complete", "partial", "none")),
        "itp-remission": "complete",
        "itp-observation": "partial",
    }.get(phenotype, rng.choice(("complete", "partial", "none")))
    lines = _first_line(rng, dx, first)
    later = _later_lines(phenotype, rng)
    if not later:
        return lines
    gaps = [rng.randint(60, 360) for _ in later]
    room = (as_of - dx).days - 21
    scale = min(1.0, room / sum(gaps))
    start = dx
    for (therapy, response), gap in zip(later, gaps, strict=True):
        start = shift(start, max(14, int(gap * scale)))
        lines.append(Line(therapy, min(start, shift(as_of, -21)), response))
    return lines


# --- writing the therapy -------------------------------------------------------------------


def _long_course(
    chart: Chart, rng: random.Random, ctx: Context, drug: str, start: date, stop: date | None,
    route: str, dose: str,
) -> None:  # fmt: skip
    """A drug taken daily for months: orders renewed every three months, or one statement;
    ``stop`` None means still taken at D (the last order or the statement is active)."""
    end = stop or ctx.as_of
    style = rng.randrange(len(codes.DRUGS[drug].styles))
    chosen = choose_route(rng, route)
    if rng.random() < 0.6:
        renewals = [shift(start, n) for n in range(0, max(1, (end - start).days), 90)]
        for n, day in enumerate(renewals):
            last = n == len(renewals) - 1
            status = "active" if last and stop is None else rng.choice(("completed", "stopped"))
            add_medication(chart, rng, drug, "MedicationRequest", day, status=status,
                           route=chosen, dose=dose, style=style)  # fmt: skip
        return
    add_medication(
        chart, rng, drug, "MedicationStatement", start,
        status="active" if stop is None else "completed", route=chosen, dose=dose,
        end=stop if stop is not None and stop > start else None, style=style,
    )  # fmt: skip


def _steroid(chart: Chart, rng: random.Random, ctx: Context, line: Line, stop: date) -> None:
    """High-dose dexamethasone (one or two 4-day pulses) or prednisone 1 mg/kg tapered over
    one to two months (methylprednisolone for some)."""
    if rng.random() < 0.55:
        for cycle in range(rng.randint(1, 2)):
            doses = dose_days(shift(line.start, 14 * cycle), 4, 1)
            add_course(chart, rng, "dexamethasone", [d for d in doses if d <= ctx.as_of],
                       route=rng.choice(("oral", "iv")), dose="40 mg qd",
                       edges=washout_edges(ctx.as_of))  # fmt: skip
        return
    drug = "methylprednisolone" if rng.random() < 0.15 else "prednisone"
    end = min(stop, shift(line.start, rng.randint(28, 70)), ctx.as_of)
    _long_course(chart, rng, ctx, drug, line.start, end, "oral", "1 mg/kg qd, tapered")


def _ivig(chart: Chart, rng: random.Random, ctx: Context, line: Line) -> None:
    days = 5 if rng.random() < 0.6 else 2
    doses = [d for d in dose_days(line.start, days, 1) if d <= ctx.as_of]
    add_course(
        chart,
        rng,
        "ivig",
        doses,
        route="iv",
        dose="0.4 g/kg qd" if days == 5 else "1 g/kg qd",
        edges=washout_edges(ctx.as_of),
    )


def _rituximab(chart: Chart, rng: random.Random, ctx: Context, start: date) -> None:
    doses = [d for d in dose_days(start, 4, 7) if d <= ctx.as_of]
    dose = "375 mg/m2 weekly" if rng.random() < 0.5 else "100 mg weekly"
    add_course(chart, rng, "rituximab", doses, route="iv", dose=dose,
               edges=washout_edges(ctx.as_of))  # fmt: skip


def _splenectomy(chart: Chart, rng: random.Random, line: Line) -> None:
    if rng.random() < 0.9:
        concept = codes.SPLENECTOMY
        chart.procedures.append(
            ProcedureFact(concept, rng.randrange(len(concept.variants)), iso(line.start))
        )
    if rng.random() < 0.5:
        add_condition(chart, rng, "asplenia", shift(line.start, 1), recorded_only=False)


def _write_line(
    chart: Chart, rng: random.Random, ctx: Context, line: Line, stop: date | None
) -> None:
    """The records of one line; ``stop`` is when it ended (None: still given at D)."""
    therapy = line.therapy
    if therapy == "steroid":
        _steroid(chart, rng, ctx, line, stop or ctx.as_of)
    elif therapy == "ivig":
        _ivig(chart, rng, ctx, line)
    elif therapy == "rhtpo":
        doses = [d for d in dose_days(line.start, 14, 1) if d <= ctx.as_of]
        add_course(chart, rng, "rhtpo", doses, route="sc", dose="300 U/kg qd",
                   edges=washout_edges(ctx.as_of))  # fmt: skip
    elif therapy == "tpo-ra":
        drug = _pick(rng, dict(_TPO_RA))
        route = "sc" if drug == "romiplostim" else "oral"
        _long_course(chart, rng, ctx, drug, line.start, stop, route, "daily")
    elif therapy == "rituximab":
        _rituximab(chart, rng, ctx, line.start)
    elif therapy == "immunosuppressant":
        drug = rng.choice(("cyclosporine", "azathioprine", "mycophenolate", "sirolimus"))
        _long_course(chart, rng, ctx, drug, line.start, stop, "oral", "bid")
    elif therapy == "danazol":
        _long_course(chart, rng, ctx, "danazol", line.start, stop, "oral", "200 mg bid")
    elif therapy == "decitabine":
        doses = [shift(line.start, 28 * c + d) for c in range(3) for d in range(3)]
        add_course(chart, rng, "decitabine", [d for d in doses if d <= ctx.as_of], route="iv",
                   dose="3.5 mg/m2", edges=washout_edges(ctx.as_of))  # fmt: skip
    elif therapy == "vincristine":
        doses = [d for d in dose_days(line.start, 4, 7) if d <= ctx.as_of]
        add_course(chart, rng, "vincristine", doses, route="iv", dose="1.4 mg/m2",
                   edges=washout_edges(ctx.as_of))  # fmt: skip
    else:
        _splenectomy(chart, rng, line)


# --- diagnosis and counts ------------------------------------------------------------------


def _diagnosis(chart: Chart, rng: random.Random, ctx: Context, dx: date, phenotype: str) -> None:
    """How the ITP is on record: mostly a coded, active Condition; sometimes only in a way
    criteria.md sends to chart review (text, D69.6, history of ITP, Evans), or not at all."""
    if phenotype == "itp-remission":
        add_condition(chart, rng, "itp", dx, resolved=shift(dx, rng.randint(180, 540)))
        return
    roll = rng.random()
    if roll < 0.84:
        acute = phenotype == "itp-newly-diagnosed" and rng.random() < 0.3
        add_condition(chart, rng, "itp-acute" if acute else "itp", dx)
        if (ctx.as_of - dx).days > 400 and rng.random() < 0.15:
            add_condition(chart, rng, "itp-acute", dx, resolved=shift(dx, 90))
        if rng.random() < 0.2:
            add_condition(chart, rng, "thrombocytopenia-unspecified", shift(dx, -10))
    elif roll < 0.88:
        add_condition(chart, rng, "itp-text", dx)
    elif roll < 0.92:
        add_condition(chart, rng, "thrombocytopenia-unspecified", dx)
    elif roll < 0.95:
        add_condition(chart, rng, "itp-history", dx)
    elif roll < 0.97:
        add_condition(chart, rng, "evans", dx)
    if rng.random() < 0.5:
        add_measure(chart, rng, "marrow", shift(dx, rng.randint(1, 10)), 0, 1,
                    style=rng.randrange(2))  # fmt: skip


_CURRENT = {
    "itp-newly-diagnosed": None,
    "itp-remission": (150, 350),
    "itp-observation": (30, 125),
    "itp-tpo-responding": (45, 260),
    "itp-tpo-failure": (4, 70),
    "itp-refractory": (3, 80),
    "itp-splenectomy": (5, 90),
}
"""Where the counts are at D, by phenotype (None: as the first line's response left them)."""


def _segment(
    rng: random.Random, start: date, end: date, level: tuple[int, int], busy: bool
) -> list[tuple[date, int]]:
    """Counts from ``start`` to ``end``: weekly at first, then every few weeks or months."""
    points: list[tuple[date, int]] = []
    day = start
    step = 0
    while day < end:
        points.append((day, rng.randint(*level)))
        step += 1
        day = shift(day, 7 if step < 3 else rng.randint(21, 60) if busy else rng.randint(60, 150))
    return points


def _counts(
    rng: random.Random, lines: list[Line], phenotype: str, dx: date, as_of: date
) -> list[tuple[date, int]]:
    sequential = [line for line in lines if not line.concurrent]
    points = [(shift(dx, -rng.randint(0, 3)), rng.randint(2, 30))]
    for n, line in enumerate(sequential):
        last = n == len(sequential) - 1
        end = shift(as_of, 60) if last else sequential[n + 1].start
        level = _LEVEL[line.response]
        current = _CURRENT[phenotype]
        busy = phenotype not in ("itp-remission", "itp-observation")
        if last and current is not None:
            early = _segment(rng, shift(line.start, 7), shift(line.start, 28), level, busy)
            points += early + _segment(rng, shift(line.start, 28), end, current, busy)
        else:
            points += _segment(rng, shift(line.start, 7), end, level, busy)
        if not last:
            points.append((shift(end, -rng.randint(1, 5)), rng.randint(3, 28)))
    return points


def _follow_up(rng: random.Random, as_of: date) -> date:
    """The last day with counts: most are followed up to D, some beyond it (counts after D
    must not count), some were lost to follow-up more than 180 days before D."""
    roll = rng.random()
    if roll < 0.08:
        return shift(as_of, -rng.randint(200, 400))
    if roll < 0.23:
        return shift(as_of, 60)
    return as_of


_ONGOING_PHENOTYPES = ("itp-tpo-responding", "itp-tpo-failure", "itp-refractory", "itp-splenectomy")
_LONG_THERAPIES = ("tpo-ra", "immunosuppressant", "danazol")


def _stop(line: Line, sequential: list[Line], phenotype: str, as_of: date) -> date | None:
    """When a line ended: when the next one started; the last line of a patient still on
    treatment is still given at D (None); any other last line ended after three months."""
    later = [s.start for s in sequential if s.start > line.start]
    if later:
        return later[0]
    if phenotype in _ONGOING_PHENOTYPES and line.therapy in _LONG_THERAPIES:
        return None
    return min(as_of, shift(line.start, 90))


def itp_course(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """An ITP patient's whole course: diagnosis, therapy records and platelet counts."""
    phenotype = _pick(rng, dict(PHENOTYPES))
    chart.cohort = phenotype
    low, high = _DIAGNOSED_DAYS_AGO[phenotype]
    dx = shift(ctx.as_of, -rng.randint(low, high))
    _diagnosis(chart, rng, ctx, dx, phenotype)
    lines = plan_lines(phenotype, dx, ctx.as_of, rng)
    sequential = [line for line in lines if not line.concurrent]
    for line in lines:
        _write_line(chart, rng, ctx, line, _stop(line, sequential, phenotype, ctx.as_of))
    last_day = _follow_up(rng, ctx.as_of)
    for day, value in _counts(rng, lines, phenotype, dx, ctx.as_of):
        if day <= last_day:
            add_count(chart, rng, ctx.profile, day, value)
