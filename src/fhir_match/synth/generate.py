"""Make a population: patient by patient, facts -> expected answers and FHIR, streamed to disk.

Each patient has its own ``random.Random`` seeded from (seed, index), so a patient does not
depend on the patients before it, the output does not depend on anything but (patients, seed,
as_of, format, itp_share), and the run never reads the clock.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from fhir_match.errors import ConfigError
from fhir_match.synth import codes
from fhir_match.synth.charting import add_condition, add_count, lab_profile
from fhir_match.synth.edges import ANY_EDGES, ITP_EDGES, TAIL_EDGES, apply_edge
from fhir_match.synth.expected import CRITERIA, Outcome, Result, expected_results, outcome
from fhir_match.synth.facts import Chart, PatientFacts
from fhir_match.synth.general import Context, background, exclusions
from fhir_match.synth.itp import itp_course
from fhir_match.synth.people import AGE_EDGES, make_person
from fhir_match.synth.render import render_patient, shared_resources
from fhir_match.synth.timeline import age_at, shift, span
from fhir_match.synth.writers import BundleWriter, NdjsonWriter, PopulationWriter, dump

__all__ = [
    "DEFAULT_AS_OF",
    "DEFAULT_ITP_SHARE",
    "GENERATOR_VERSION",
    "Format",
    "GenerationSummary",
    "expected_line",
    "generate",
    "patient_facts",
    "start_chart",
]

GENERATOR_VERSION = "1"
"""Bump when the same arguments would make different files."""
DEFAULT_AS_OF = date(2026, 6, 1)
DEFAULT_ITP_SHARE = 0.04
Format = Literal["bundles", "ndjson"]

_ITP_EDGE_RATE = 0.45
_GENERAL_EDGE_RATE = 0.02
_ITP_AGE_EDGE_RATE = 0.08
_GENERAL_AGE_EDGE_RATE = 0.01
_REFUTED_ITP_RATE = 0.003
_HINTS_OF_ITP = frozenset(
    {codes.ITP, codes.ITP_HISTORY, codes.ITP_TEXT, codes.EVANS, codes.THROMBOCYTOPENIA_UNSPECIFIED}
)


@dataclass(frozen=True)
class GenerationSummary:
    """What a run wrote (also in manifest.json)."""

    out: Path
    patients: int
    seed: int
    as_of: date
    format: Format
    itp_share: float
    outcomes: Mapping[str, int]
    cohorts: Mapping[str, int]
    resources: Mapping[str, int]

    def manifest(self) -> dict[str, object]:
        return {
            "generator": "fhir_match.synth",
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "patients": self.patients,
            "as_of": self.as_of.isoformat(),
            "format": self.format,
            "itp_share": self.itp_share,
            "fhir": "fhir/",
            "expected": "expected.ndjson",
            "outcomes": dict(sorted(self.outcomes.items())),
            "cohorts": dict(sorted(self.cohorts.items())),
            "resources": dict(sorted(self.resources.items())),
        }


def _age(birth: str | None, as_of: date) -> int:
    return age_at(span(birth)[0], as_of) if birth else 45


def _refuted_itp(chart: Chart, rng: random.Random, ctx: Context) -> None:
    """A thrombocytopenia worked up as ITP and found to be something else (drug-induced): the
    ITP Condition is refuted, and nothing else hints at ITP (criteria.md: not-met)."""
    hinted = any(_HINTS_OF_ITP & c.concept.sets for c in chart.conditions) or any(
        codes.THROMBOPOIETIC in m.drug.classes for m in chart.medications
    )
    if hinted:
        return
    onset = shift(ctx.as_of, -rng.randint(60, 1500))
    add_condition(chart, rng, "itp", onset, verification="refuted", recorded_only=False)
    add_condition(chart, rng, "drug-induced-thrombocytopenia", onset, resolved=shift(onset, 40))
    for offset in (0, 7, 30):
        add_count(chart, rng, ctx.profile, shift(onset, offset), rng.randint(20, 90) + 4 * offset)
    chart.cohort = "thrombocytopenia-itp-refuted"


def start_chart(
    seed: int, index: int, as_of: date, itp_share: float
) -> tuple[Chart, random.Random, Context]:
    """Patient ``index`` of the population ``seed`` before any edge: person, background, ITP
    course and exclusions (tests put their own edges on it)."""
    rng = random.Random(f"fhir-match-synth:{seed}:{index}")  # noqa: S311 - test data
    itp = rng.random() < itp_share
    age_edge_rate = _ITP_AGE_EDGE_RATE if itp else _GENERAL_AGE_EDGE_RATE
    age_edge = rng.choice(AGE_EDGES) if rng.random() < age_edge_rate else None
    person = make_person(rng, seed, index, as_of, itp, age_edge)
    female = person.gender == "female"
    ctx = Context(as_of, lab_profile(rng), _age(person.birth_date, as_of), female)
    chart = Chart(person, "general")
    if age_edge is not None:
        chart.edges.append(age_edge)
    background(chart, rng, ctx, routine_counts=not itp)
    if itp:
        itp_course(chart, rng, ctx)
    exclusions(chart, rng, ctx, itp)
    if not itp and rng.random() < _REFUTED_ITP_RATE:
        _refuted_itp(chart, rng, ctx)
    return chart, rng, ctx


def patient_facts(seed: int, index: int, as_of: date, itp_share: float) -> PatientFacts:
    """Patient ``index`` of the population ``seed``: the same arguments, the same facts."""
    chart, rng, ctx = start_chart(seed, index, as_of, itp_share)
    itp = chart.cohort.startswith("itp-")
    if itp and rng.random() < _ITP_EDGE_RATE:
        newly = chart.cohort == "itp-newly-diagnosed"
        group = rng.choice((ANY_EDGES,) if newly else (TAIL_EDGES, ITP_EDGES, ANY_EDGES))
        apply_edge(chart, rng, ctx, group)
    elif not itp and rng.random() < _GENERAL_EDGE_RATE:
        apply_edge(chart, rng, ctx, ANY_EDGES)
    return chart.freeze()


def expected_line(facts: PatientFacts, results: Mapping[str, Result], verdict: Outcome) -> str:
    """One line of expected.ndjson (criteria as an object, plus how the patient was made)."""
    return dump(
        {
            "patient": f"Patient/{facts.person.id}",
            "outcome": verdict,
            "criteria": {criterion: results[criterion] for criterion in CRITERIA},
            "cohort": facts.cohort,
            "edges": list(facts.edges),
        }
    )


def _check(patients: int, seed: int, out: Path, fmt: str, itp_share: float) -> None:
    if patients < 0 or seed < 0:
        raise ConfigError("patients and seed must be 0 or more")
    if fmt not in ("bundles", "ndjson"):
        raise ConfigError(f"unknown format {fmt!r} (bundles or ndjson)")
    if not 0.0 <= itp_share <= 1.0:
        raise ConfigError("itp_share must be between 0 and 1")
    if (out / "fhir").exists() or (out / "expected.ndjson").exists():
        raise ConfigError(f"{out} already holds a population; choose an empty folder")


def generate(
    patients: int,
    seed: int,
    out: Path,
    format: Format = "bundles",
    *,
    as_of: date = DEFAULT_AS_OF,
    itp_share: float = DEFAULT_ITP_SHARE,
) -> GenerationSummary:
    """Write ``patients`` patients to ``out``: FHIR in ``out/fhir/``, the intended screening
    answers in ``out/expected.ndjson``, the run's arguments and counts in
    ``out/manifest.json``."""
    _check(patients, seed, out, format, itp_share)
    out.mkdir(parents=True, exist_ok=True)
    outcomes: Counter[str] = Counter()
    cohorts: Counter[str] = Counter()
    folder = out / "fhir"
    writer: PopulationWriter = NdjsonWriter(folder) if format == "ndjson" else BundleWriter(folder)
    try:
        writer.write_shared(shared_resources())
        with (out / "expected.ndjson").open("w", encoding="utf-8", newline="\n") as expected:
            for index in range(patients):
                facts = patient_facts(seed, index, as_of, itp_share)
                results = expected_results(facts, as_of)
                verdict = outcome(results)
                writer.write_patient(index, facts.person.id, render_patient(facts))
                expected.write(expected_line(facts, results, verdict) + "\n")
                outcomes[verdict] += 1
                cohorts[facts.cohort] += 1
    finally:
        writer.close()
    summary = GenerationSummary(
        out, patients, seed, as_of, format, itp_share, outcomes, cohorts, writer.resources
    )
    with (out / "manifest.json").open("w", encoding="utf-8", newline="\n") as stream:
        stream.write(json.dumps(summary.manifest(), ensure_ascii=False, indent=2) + "\n")
    return summary
