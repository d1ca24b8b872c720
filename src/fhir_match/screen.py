"""Screen patients from FHIR files: read -> group by patient -> evaluate -> NDJSON, streamed.

Memory stays flat in the number of patients: resources are spilled to disk by patient and
evaluated a batch at a time. Unreadable input and patients the engine cannot evaluate are
recorded and skipped; the run goes on, and its summary counts them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import islice
from pathlib import Path
from typing import IO

from fhir_match.config import PROJECT_DIR
from fhir_match.evaluate.engine import CqlEvaluator, NodeCqlEngine, value_sets_used
from fhir_match.evaluate.evaluator import evaluate_batch
from fhir_match.evaluate.study import Study
from fhir_match.exported import CohortRule, ExportedCohort
from fhir_match.files import FHIR_SUFFIXES, fhir_files, read_located
from fhir_match.funnel import Funnel, removed_by
from fhir_match.grouping import group_located
from fhir_match.normalise import Normaliser
from fhir_match.records import CriterionResult, DataIssue, PatientEvaluation, PatientRecord
from fhir_match.terminology import Terminology, load_terminology
from fhir_match.units import load_unit_map

__all__ = [
    "BATCH_SIZE",
    "MAPPINGS_DIR",
    "ScreenSummary",
    "criterion_json",
    "evaluation_json",
    "load_normaliser",
    "path_problem",
    "screen",
    "study_engine",
]

MAPPINGS_DIR = PROJECT_DIR / "mappings"
PLATELET_VALUE_SET = "https://fhir-match.org/fhir/ValueSet/platelet-count"
BATCH_SIZE = 100
"""Patients per engine call: large enough to amortise the round trip, small enough to stream."""


@dataclass
class ScreenSummary:
    """What a run did: counts a coordinator can check against the output."""

    study: Study
    patients: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    criteria: dict[str, Counter[str]] = field(default_factory=dict)
    removed: Counter[str] = field(default_factory=Counter)
    """Patients removed, by the first criterion that rules them out (see funnel.py)."""
    skipped: list[DataIssue] = field(default_factory=list)
    """Files, lines or entries that could not be read."""
    unused: list[DataIssue] = field(default_factory=list)
    """Resources read but not used by the rules (e.g. a platelet count in an unknown unit)."""
    failures: list[DataIssue] = field(default_factory=list)
    """Patients that could not be evaluated."""
    seconds: float = 0.0
    outside: int | None = None
    """Patients read but not in the study's cohort, so not evaluated (None: no cohort found,
    every patient evaluated)."""

    @property
    def complete(self) -> bool:
        """Every input was read and every patient evaluated."""
        return not (self.skipped or self.failures)

    def add(self, evaluation: PatientEvaluation) -> None:
        self.patients += 1
        self.outcomes[evaluation.outcome] += 1
        for result in evaluation.criteria:
            counts = self.criteria.get(result.id)
            if counts is None:
                counts = self.criteria[result.id] = Counter()
            counts[result.result] += 1
        if (criterion := removed_by(evaluation)) is not None:
            self.removed[criterion] += 1

    @property
    def funnel(self) -> Funnel:
        """Every patient read, counted once: removed by a criterion, listed, or not evaluated."""
        return Funnel.of(self.study, self.removed, self.outcomes, len(self.failures))

    def as_json(self) -> dict[str, object]:
        outside = {} if self.outside is None else {"not_in_cohort": self.outside}
        return {
            **outside,
            "patients": self.patients,
            "outcomes": dict(self.outcomes),
            "criteria": {cid: dict(counts) for cid, counts in self.criteria.items()},
            "skipped": len(self.skipped),
            "unused": len(self.unused),
            "failures": len(self.failures),
            "seconds": round(self.seconds, 3),
            "funnel": self.funnel.as_json(),
        }

    def report(self, show: int = 20) -> str:
        rate = self.patients / self.seconds if self.seconds else 0.0
        lines = (
            [] if self.outside is None else [f"not in the cohort (not evaluated): {self.outside}"]
        )
        lines += [
            f"patients: {self.patients} in {self.seconds:.1f}s ({rate:.0f}/s)",
            "outcomes: "
            + ", ".join(
                f"{name} {self.outcomes.get(name, 0)}"
                for name in ("candidate", "potential-candidate", "ineligible")
            ),
            "criteria (met / not-met / unknown):",
        ]
        for cid, counts in self.criteria.items():
            lines.append(
                f"  {cid:7} {counts.get('met', 0):6} {counts.get('not-met', 0):8} "
                f"{counts.get('unknown', 0):8}"
            )
        lines.append(self.funnel.text())
        sections = (
            ("patients not evaluated", self.failures),
            ("input skipped", self.skipped),
            ("data not used", self.unused),
        )
        for title, items in sections:
            if items:
                lines.append(f"{title}: {len(items)}")
                lines.extend(f"  {item}" for item in items[:show])
                if len(items) > show:
                    lines.append(f"  ... and {len(items) - show} more")
        return "\n".join(lines)


def load_normaliser(study: Study, mappings_dir: Path = MAPPINGS_DIR) -> Normaliser:
    """The normaliser for a study whose CQL is translated (see translate_cql)."""
    terminology: Terminology = load_terminology(mappings_dir)
    units = load_unit_map(mappings_dir / "units" / "platelet-count.json")
    study_value_sets = value_sets_used(study.library, study.library_version)
    return Normaliser(terminology, PLATELET_VALUE_SET, units, study_value_sets)


def study_engine(study: Study, normaliser: Normaliser, as_of: date) -> NodeCqlEngine:
    """The CQL engine for a study as of a date, its value sets and parameters loaded."""
    return NodeCqlEngine(
        study.library,
        version=study.library_version,
        value_sets=normaliser.terminology.expansions,
        parameters={"As Of": as_of, **study.parameters},
    )


def criterion_json(result: CriterionResult) -> dict[str, object]:
    """One criterion as the screening result format (criteria.md) writes it."""
    return {
        "id": result.id,
        "kind": result.kind,
        "result": result.result,
        "summary": result.summary,
        "evidence": list(result.evidence),
    }


def evaluation_json(evaluation: PatientEvaluation) -> dict[str, object]:
    """One line of the screening result format (criteria.md)."""
    return {
        "patient": evaluation.patient,
        "study": evaluation.study,
        "as_of": evaluation.as_of,
        "outcome": evaluation.outcome,
        "criteria": [criterion_json(r) for r in evaluation.criteria],
    }


def path_problem(written: Path, inputs: Sequence[Path]) -> str:
    """Why a file the run writes cannot be written there, checked before anything is read: its
    folder is missing, it is a folder, or it is one of the inputs (or would be read as one)."""
    if not written.parent.is_dir():
        return f"cannot write {written}: no such folder {written.parent}"
    if written.is_dir():
        return f"cannot write {written}: it is a folder"
    target = written.resolve()
    for path in inputs:
        source = path.resolve()
        if target == source:
            return f"cannot write {written}: it is the input {path}"
        if source.is_dir() and source in target.parents and written.name.endswith(FHIR_SUFFIXES):
            return f"cannot write {written}: it would be read as an input, inside {path}"
    return ""


def _batches(records: Iterable[PatientRecord], size: int) -> Iterator[list[PatientRecord]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def screen(
    inputs: Sequence[Path],
    study: Study,
    as_of: date,
    normaliser: Normaliser,
    engine: CqlEvaluator,
    output: IO[str],
    progress: Callable[[int], None] = lambda done: None,
    cohort_only: bool = False,
) -> ScreenSummary:
    """Screen every patient in ``inputs`` and write one JSON line per patient to ``output``;
    with ``cohort_only``, only the patients in the study's cohort (see exported.py), the
    others counted in the summary."""
    started = time.perf_counter()
    summary = ScreenSummary(study)
    paths = [p for path in inputs for p in fhir_files(path)]
    exported = None
    if cohort_only:
        rule = CohortRule.of(study, normaliser.terminology)
        exported = ExportedCohort(paths, rule, summary.skipped.append, spill_dir=None)
        records = exported.records()
    else:
        records = group_located(read_located(paths, summary.skipped.append), summary.skipped.append)
    for batch in _batches(records, BATCH_SIZE):
        result = evaluate_batch(batch, study, as_of, normaliser, engine)
        for evaluation in result.evaluations:
            output.write(json.dumps(evaluation_json(evaluation), ensure_ascii=False) + "\n")
            summary.add(evaluation)
        summary.failures.extend(result.failures)
        summary.unused.extend(result.issues)
        summary.skipped.extend(result.skipped)
        progress(summary.patients + len(summary.failures))
    if exported is not None:
        summary.outside = exported.outside
    summary.seconds = time.perf_counter() - started
    return summary
