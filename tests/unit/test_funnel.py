"""The attrition funnel (pure): who removes whom, counts that add up, and its FHIR form."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from fhir_match.discovery import BatchReport
from fhir_match.evaluate.eligibility import outcome
from fhir_match.evaluate.study import load_study
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.funnel import Funnel, removals, removed_by
from fhir_match.records import CriterionResult, DataIssue, PatientEvaluation, Result
from fhir_match.screen import ScreenSummary
from fhir_match.writeback import EXT_FUNNEL, RunInfo, RunState, funnel_of, snapshot_group
from worker.runs import Run, State, batch_totals, run_funnel

STUDY = load_study("kn5501")
RUN = RunInfo("run-1", "2026-06-01", "2026-06-01T02:00:00+00:00")


def patient(number: int, **results: Result) -> PatientEvaluation:
    """Every criterion in the study's order, passing unless ``results`` says otherwise
    (keyword ``inc_3`` is criterion inc-3); the outcome follows from them."""
    criteria = tuple(
        CriterionResult(
            c.id,
            c.kind,
            results.get(c.id.replace("-", "_"), "met" if c.kind == "inclusion" else "not-met"),
            "",
            (),
        )
        for c in STUDY.criteria
    )
    return PatientEvaluation(
        f"Patient/{number}", STUDY.id, "2026-06-01", outcome(STUDY, criteria), criteria
    )


def funnel_of_all(evaluations: Sequence[PatientEvaluation], not_evaluated: int = 0) -> Funnel:
    outcomes: Counter[str] = Counter(e.outcome for e in evaluations)
    return Funnel.of(STUDY, removals(evaluations), outcomes, not_evaluated)


COHORT = [
    patient(1),
    patient(2, inc_4="unknown", inc_5="unknown"),  # deferred: still a candidate
    patient(3, inc_3="unknown"),  # potential candidate
    patient(4, inc_2="not-met", inc_3="not-met"),
    patient(5, inc_3="unknown", exc_7="met"),
    patient(6, inc_1="not-met"),
    patient(7, exc_2="met", exc_9="met"),
]


def test_the_first_criterion_that_rules_a_patient_out_removes_them() -> None:
    assert removed_by(COHORT[3]) == "inc-2"  # not inc-3, which comes later
    assert removed_by(COHORT[4]) == "exc-7"  # an exclusion met; the unknown before it is not
    assert removed_by(COHORT[5]) == "inc-1"
    assert removed_by(COHORT[6]) == "exc-2"


def test_unknowns_and_passing_results_remove_nobody() -> None:
    assert [removed_by(e) for e in COHORT[:3]] == [None, None, None]
    assert removed_by(patient(8, inc_3="unknown", exc_4="unknown", exc_12="unknown")) is None


def test_removed_exactly_when_ineligible() -> None:
    for evaluation in COHORT:
        assert (removed_by(evaluation) is not None) == (evaluation.outcome == "ineligible")


def test_every_patient_is_counted_once_in_the_studys_order() -> None:
    funnel = funnel_of_all(COHORT, not_evaluated=2)

    assert [c for c, _ in funnel.removed] == [c.id for c in STUDY.criteria]
    removed = {c: n for c, n in funnel.removed if n}
    assert removed == {"inc-1": 1, "inc-2": 1, "exc-2": 1, "exc-7": 1}
    assert (funnel.candidates, funnel.potential_candidates) == (2, 1)
    assert funnel.evaluated == len(COHORT)
    assert funnel.found == len(COHORT) + 2
    assert funnel.scope == "full"


def test_batch_counts_summed_by_the_run_give_the_funnel_of_all_its_patients() -> None:
    batches = [COHORT[:4], COHORT[4:]]
    reports = [
        BatchReport(
            patients=len(batch),
            evaluated=len(batch),
            outcomes=Counter(e.outcome for e in batch),
            removed=removals(batch),
        ).as_json()
        for batch in batches
    ]
    reports.append({"patients": 3, "failed_batches": 1, "failures": ["timed out"]})
    run = Run(
        "r",
        "kn5501",
        State.DONE,
        queued="2026-06-01T00:00:00+00:00",
        cohort=len(COHORT) + 3,
        full=True,
        batches=batch_totals(reports),
    )

    assert run_funnel(run, STUDY) == funnel_of_all(COHORT, not_evaluated=3)


def test_an_incremental_run_counts_only_the_patients_it_re_evaluated() -> None:
    report = BatchReport(
        patients=10,
        unchanged=9,
        evaluated=1,
        outcomes=Counter({"ineligible": 1}),
        removed=Counter({"inc-3": 1}),
    )
    run = Run(
        "r",
        "kn5501",
        State.DONE,
        queued="2026-06-01T00:00:00+00:00",
        cohort=10,
        full=False,
        batches=batch_totals([report.as_json()]),
    )

    funnel = run_funnel(run, STUDY)

    assert funnel.scope == "incremental"
    assert (funnel.found, funnel.evaluated, funnel.not_evaluated) == (1, 1, 0)
    assert dict(funnel.removed)["inc-3"] == 1


def test_the_group_carries_the_funnel_and_reads_back_the_same() -> None:
    funnel = funnel_of_all(COHORT, not_evaluated=2)

    group = to_json(
        parse_resource(
            snapshot_group(
                STUDY,
                "ResearchStudy/1",
                RUN,
                [("Patient/1", "candidate")],
                funnel,
                RunState("complete"),
            )
        )
    )

    assert funnel_of(group) == funnel
    (extension,) = [e for e in group["extension"] if e["url"] == EXT_FUNNEL]
    parts = extension["extension"]
    assert [p["url"] for p in parts[:4]] == ["scope", "found", "evaluated", "notEvaluated"]
    assert [p["url"] for p in parts[-2:]] == ["candidate", "potentialCandidate"]
    assert parts[0] == {"url": "scope", "valueCode": "full"}
    assert parts[1] == {"url": "found", "valueInteger": 9}
    assert parts[4] == {
        "url": "removed",
        "extension": [
            {"url": "criterion", "valueCode": "inc-1"},
            {"url": "count", "valueInteger": 1},
        ],
    }
    assert len(parts) == 4 + len(STUDY.criteria) + 2


def test_a_group_without_a_funnel_reads_as_none() -> None:
    assert funnel_of({"resourceType": "Group", "type": "person", "actual": True}) is None


def test_the_screen_summary_records_the_funnel() -> None:
    summary = ScreenSummary(STUDY)
    for evaluation in COHORT:
        summary.add(evaluation)
    summary.failures.append(DataIssue("Patient/9", "not evaluated: engine error"))

    data = summary.as_json()

    assert {"patients", "outcomes", "criteria", "skipped", "failures", "seconds"} <= set(data)
    assert summary.funnel == funnel_of_all(COHORT, not_evaluated=1)
    assert data["funnel"] == {
        "scope": "full",
        "found": 8,
        "not_evaluated": 1,
        "evaluated": 7,
        "removed": {c.id: dict(summary.funnel.removed)[c.id] for c in STUDY.criteria},
        "candidates": 2,
        "potential_candidates": 1,
    }
    assert list(data["funnel"]["removed"])[:2] == ["inc-1", "inc-2"]
    report = summary.report()
    assert "funnel (full): found 8, not evaluated 1, evaluated 7" in report
    assert "rules them out: inc-1 1, inc-2 1, exc-2 1, exc-7 1" in report
    assert "left: candidate 2, potential-candidate 1" in report
