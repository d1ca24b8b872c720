"""3 EVALUATE: one study as of one date, patient records in, per-criterion results out.

The CQL library decides each criterion; this module normalises the records, extends the
engine's value sets with the subcodes the records use, and turns the engine's answers into
CriterionResults and an outcome. It does no I/O of its own beyond driving the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_match.evaluate.eligibility import outcome
from fhir_match.evaluate.engine import CqlEvaluator, JsonValue, PatientFailure
from fhir_match.evaluate.study import Study
from fhir_match.normalise import Normaliser, normalise
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
    normalised = [normalise(patient_shell(record), normaliser) for record in records]
    codings = frozenset().union(*(n.hierarchical_codings for n in normalised))
    additions = normaliser.terminology.hierarchy_additions(codings)
    if additions:
        engine.add_codes(additions)
    ids = [c.id for c in study.criteria]
    answers = engine.evaluate([n.bundle for n in normalised], ids)
    evaluations: list[PatientEvaluation] = []
    failures: list[DataIssue] = []
    for record, normalised_record, answer in zip(records, normalised, answers, strict=True):
        if isinstance(answer, PatientFailure):
            failures.append(DataIssue(record.patient, f"not evaluated: {answer.message}"))
            continue
        try:
            criteria = tuple(
                _criterion(study, cid, answer.values.get(cid), normalised_record.aliases)
                for cid in ids
            )
        except ValueError as exc:
            failures.append(DataIssue(record.patient, f"not evaluated: {exc}"))
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
    return BatchResult(tuple(evaluations), tuple(failures), issues)


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
