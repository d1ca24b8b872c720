"""3 EVALUATE: one study as of one date, patient records in, per-criterion results out.

The CQL library decides each criterion; this module normalises the records, extends the
engine's value sets with the subcodes the records use, and turns the engine's answers into
CriterionResults and an outcome. It does no I/O of its own beyond driving the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_match.evaluate.eligibility import outcome
from fhir_match.evaluate.engine import CqlEvaluator, JsonValue, PatientFailure
from fhir_match.evaluate.study import Study
from fhir_match.normalise import Normalised, Normaliser, normalise
from fhir_match.records import CriterionResult, DataIssue, PatientEvaluation, PatientRecord

__all__ = ["BatchResult", "evaluate_batch", "patient_shell"]

_RESULTS = frozenset({"met", "not-met", "unknown"})


@dataclass(frozen=True)
class BatchResult:
    evaluations: tuple[PatientEvaluation, ...]
    """One per patient that evaluated, in input order."""
    failures: tuple[DataIssue, ...]
    """Patients the engine could not evaluate: their reference and the engine's reason."""
    issues: tuple[DataIssue, ...]
    """Data that was read but not used (e.g. a platelet count in an unknown unit)."""
    skipped: tuple[DataIssue, ...] = ()
    """Resources left out: an element of a type or range the rules cannot read."""


def patient_shell(record: PatientRecord) -> PatientRecord:
    """The record with a bare Patient added when it has none, so the engine can run it: its
    other resources are still evaluated, and its demographics are reported as missing."""
    if any(r["resourceType"] == "Patient" for r in record.resources):
        return record
    shell = {"resourceType": "Patient", "id": record.patient.removeprefix("Patient/")}
    return PatientRecord(record.patient, (shell, *record.resources))


def evaluate_batch(
    records: Sequence[PatientRecord],
    study: Study,
    as_of: date,
    normaliser: Normaliser,
    engine: CqlEvaluator,
) -> BatchResult:
    failures: list[DataIssue] = []
    normalised: list[Normalised] = []
    readable: list[PatientRecord] = []
    for record in records:
        try:
            normalised.append(normalise(patient_shell(record), normaliser))
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            # A shape shapes.py does not know: this patient only, named without the data.
            reason = f"not evaluated: normalising failed ({type(exc).__name__})"
            failures.append(DataIssue(record.where(record.patient), reason))
            continue
        readable.append(record)
    codings = frozenset().union(*(n.hierarchical_codings for n in normalised))
    additions = normaliser.terminology.hierarchy_additions(codings)
    if additions:
        engine.add_codes(additions)
    ids = [c.id for c in study.criteria]
    answers = engine.evaluate([n.bundle for n in normalised], ids)
    evaluations: list[PatientEvaluation] = []
    for record, normalised_record, answer in zip(readable, normalised, answers, strict=True):
        if isinstance(answer, PatientFailure):
            reason = f"not evaluated: {_without_data(answer.message)}"
            failures.append(DataIssue(record.where(record.patient), reason))
            continue
        try:
            criteria = tuple(
                _criterion(study, cid, answer.values.get(cid), normalised_record.aliases)
                for cid in ids
            )
        except ValueError as exc:
            failures.append(DataIssue(record.where(record.patient), f"not evaluated: {exc}"))
            continue
        evaluations.append(
            PatientEvaluation(
                patient=record.patient,
                study=study.id,
                as_of=as_of.isoformat(),
                outcome=outcome(study, criteria),
                criteria=criteria,
            )
        )
    issues = tuple(issue for n in normalised for issue in n.issues)
    skipped = tuple(issue for n in normalised for issue in n.skipped)
    return BatchResult(tuple(evaluations), tuple(failures), issues, skipped)


_ENGINE_CAUSE = re.compile(r'^("[^"]*" failed(?: at [^(]*)?(?: \([^)]*\))?):')


def _without_data(message: str) -> str:
    """The engine's message up to the failing definition and CQL line: the cause after it is
    the engine's own words and may quote a value of the record."""
    match = _ENGINE_CAUSE.match(message)
    return match.group(1) if match else message


def _criterion(
    study: Study, criterion_id: str, value: JsonValue, aliases: Mapping[str, str]
) -> CriterionResult:
    """The engine's Tuple for one criterion, checked against the shape every study returns;
    evidence made in normalising is named by the record's resource it stands for."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{criterion_id} returned no result")
    result: Any = value.get("result")
    summary = value.get("summary")
    evidence = value.get("evidence") or []
    if result not in _RESULTS or not isinstance(evidence, list):
        raise ValueError(f"{criterion_id} returned a malformed result")
    return CriterionResult(
        id=criterion_id,
        kind=study.criterion(criterion_id).kind,
        result=result,
        summary=summary if isinstance(summary, str) else "",
        evidence=tuple(
            dict.fromkeys(aliases.get(str(e), str(e)) for e in evidence if e is not None)
        ),
    )
