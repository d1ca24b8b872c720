"""Bad input costs only itself: each kind in bad_input_kinds.py is mixed into a good synthetic
population and screened for real (files, grouping, normalising, the Node CQL engine).

Two screening runs hold every kind, each in a folder of its own: one of the valid-but-awkward
kinds (it must read all of them as if they were plain, report nothing, exit 0) and one of the
bad kinds (each reported with its file and line, exit 1). In both, every good patient's line
is the clean run's, and each kind's copy of a good patient gets the original's results.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from fhir_match.cli import EXIT_CONFIG, EXIT_FAILURE, main
from fhir_match.evaluate.engine import NodeCqlEngine, translate_cql
from fhir_match.evaluate.evaluator import evaluate_batch
from fhir_match.evaluate.study import Study, load_study
from fhir_match.files import fhir_files, read_located
from fhir_match.grouping import group_located
from fhir_match.normalise import Normaliser
from fhir_match.records import DataIssue, PatientRecord
from fhir_match.screen import ScreenSummary, load_normaliser, screen, study_engine
from fhir_match.synth import generate
from tests.unit.bad_input_kinds import KINDS, MARKER, Case, Expect, Json, Kind, dumps

AS_OF = date(2026, 6, 1)
SEED = 7


@dataclass(frozen=True)
class Population:
    fhir: Path
    clean: dict[str, str]
    """Each patient's output line in a clean run."""
    source: str
    """The patient each kind copies."""
    resources: list[Json]


@dataclass(frozen=True)
class Run:
    cases: dict[str, Case]
    lines: dict[str, str]
    issues: list[DataIssue]
    report: str
    output: str
    complete: bool
    cohort_lines: dict[str, str]
    """The same input screened with cohort_only."""
    cohort_issues: list[DataIssue]


@dataclass(frozen=True)
class Screening:
    study: Study
    normaliser: Normaliser
    engine: NodeCqlEngine


@pytest.fixture(scope="module")
def screening() -> Iterator[Screening]:
    study = load_study("kn5501")
    translate_cql()
    normaliser = load_normaliser(study)
    with study_engine(study, normaliser, AS_OF) as engine:
        yield Screening(study, normaliser, engine)


def _screen(
    screening: Screening, inputs: list[Path], cohort_only: bool = False
) -> tuple[ScreenSummary, str]:
    output = io.StringIO()
    summary = screen(
        inputs,
        screening.study,
        AS_OF,
        screening.normaliser,
        screening.engine,
        output,
        cohort_only=cohort_only,
    )
    return summary, output.getvalue()


def _by_patient(output: str) -> dict[str, str]:
    return {json.loads(line)["patient"]: line for line in output.splitlines()}


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory, screening: Screening) -> Population:
    folder = tmp_path_factory.mktemp("population")
    generate(50, SEED, folder, "ndjson", as_of=AS_OF, itp_share=0.5)
    summary, output = _screen(screening, [folder / "fhir"])
    assert summary.complete
    clean = _by_patient(output)
    source = next(p for p, line in clean.items() if json.loads(line)["outcome"] == "candidate")
    owned = [
        located.resource
        for located in read_located(fhir_files(folder / "fhir"), lambda issue: None)
        if source.removeprefix("Patient/") in dumps(located.resource)
    ]
    owned.sort(key=lambda r: r["resourceType"] != "Patient")
    return Population(folder / "fhir", clean, source, owned)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _run(screening: Screening, population: Population, root: Path, expect: Expect) -> Run:
    source_id = population.source.removeprefix("Patient/")
    cases: dict[str, Case] = {}
    for number, kind in enumerate(KINDS):
        if kind.expect != expect:
            continue
        tag = f"bf{number:03d}"
        clone = json.loads(dumps(population.resources).replace(source_id, tag))
        case = Case(root / "kinds" / f"{number:03d}-{_slug(kind.name)}", tag, clone)
        kind.build(case)
        cases[kind.name] = case
    inputs = [population.fhir, root / "kinds"]
    summary, output = _screen(screening, inputs)
    issues = [*summary.skipped, *summary.unused, *summary.failures]
    report = summary.report(show=len(issues) + 1)
    cohort, cohort_output = _screen(screening, inputs, cohort_only=True)
    cohort_issues = [*cohort.skipped, *cohort.unused, *cohort.failures]
    return Run(
        cases,
        _by_patient(output),
        issues,
        report,
        output,
        summary.complete,
        _by_patient(cohort_output),
        cohort_issues,
    )


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, screening: Screening, population: Population
) -> dict[Expect, Run]:
    return {
        expect: _run(screening, population, tmp_path_factory.mktemp(expect), expect)
        for expect in ("read", "skip")
    }


def test_there_are_more_than_a_hundred_kinds() -> None:
    assert len({kind.name for kind in KINDS}) == len(KINDS) >= 100


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_a_kind_costs_only_itself(
    kind: Kind, runs: dict[Expect, Run], population: Population
) -> None:
    run = runs[kind.expect]
    case = run.cases[kind.name]
    for patient, line in population.clean.items():
        assert run.lines.get(patient) == line, f"{patient} changed"
    if case.cloned:
        source_id = population.source.removeprefix("Patient/")
        expected = population.clean[population.source].replace(source_id, case.tag)
        assert run.lines.get(case.patient) == expected
    about = [issue for issue in run.issues if str(case.folder) in issue.where]
    if kind.expect == "read":
        assert about == []
    else:
        assert about, f"nothing reported about {case.folder}"
        for where in case.where:
            assert any(issue.where.startswith(where) for issue in about), (where, about)
    assert MARKER not in run.report
    assert MARKER not in run.output


@pytest.mark.parametrize("expect", ["read", "skip"])
def test_the_cohort_only_path_reads_the_same_and_reports_the_same(
    expect: Expect, runs: dict[Expect, Run]
) -> None:
    """Screened with cohort_only, every listed patient is there with the same line, and what
    is reported is what the full screen reports, less what normalising found in the records
    of patients it did not evaluate."""
    run = runs[expect]
    listed = {p for p, line in run.lines.items() if json.loads(line)["outcome"] != "ineligible"}
    assert listed <= run.cohort_lines.keys()
    for patient, line in run.cohort_lines.items():
        assert line == run.lines[patient]
    assert [i for i in run.cohort_issues if i not in run.issues] == []
    for issue in run.issues:
        if issue not in run.cohort_issues:
            assert issue.reason.startswith("not used: "), issue
            assert issue.where.split()[-1] not in run.cohort_lines, issue


def test_valid_kinds_read_cleanly_and_bad_ones_mark_the_run(runs: dict[Expect, Run]) -> None:
    assert runs["read"].complete
    assert not runs["skip"].complete


def test_a_batch_with_poisoned_records_evaluates_the_neighbours_unchanged(
    screening: Screening, population: Population
) -> None:
    """The discovery path evaluates batches of records fetched from a server: a bad value
    there costs only its resource, the neighbours' results are the same."""
    issues: list[DataIssue] = []
    located = read_located(fhir_files(population.fhir), issues.append)
    records = list(group_located(located, issues.append))[:20]
    assert issues == []
    args = (screening.study, AS_OF, screening.normaliser, screening.engine)
    clean = evaluate_batch(records, *args)
    poisons: list[Json] = [
        {"valueQuantity": {"value": True, "unit": "10*9/L"}},
        {"valueQuantity": {"value": 1e20, "unit": "10*9/L"}},
        {"valueQuantity": {"value": 20, "unit": ["K/uL"]}},
        {"code": {"coding": {"system": "http://loinc.org", "code": "26515-7"}}},
        {"effectiveDateTime": "2026-13-45"},
        {"status": None},
    ]
    poisoned = []
    for number, poison in enumerate(poisons):
        record = records[number]
        extra = {
            "resourceType": "Observation",
            "id": f"poison-{number}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "26515-7"}]},
            "subject": {"reference": record.patient},
            "effectiveDateTime": "2026-05-20",
            "valueQuantity": {"value": 20, "unit": "10*9/L"},
            **poison,
        }
        poisoned.append(PatientRecord(record.patient, (*record.resources, extra)))
    result = evaluate_batch([*poisoned, *records[len(poisons) :]], *args)
    assert result.evaluations == clean.evaluations
    assert result.failures == ()
    assert [issue.where for issue in result.skipped] == [
        f"Observation/poison-{number}" for number in range(len(poisons))
    ]


def _cli(*args: str) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stopped:
        main(["screen", "--as-of", AS_OF.isoformat(), *args])
    return int(stopped.value.code or 0), stderr.getvalue()


@pytest.mark.parametrize(
    "kind",
    [
        "output in a missing folder",
        "output is the input file",
        "output would be read as an input",
        "output is a folder",
        "summary in a missing folder",
        "input does not exist",
    ],
)
def test_a_bad_path_stops_before_anything_is_read(
    kind: str, tmp_path: Path, population: Population
) -> None:
    patients = population.fhir / "Patient.ndjson"
    before = patients.read_bytes()
    args = {
        "output in a missing folder": [
            "--input",
            str(patients),
            "--output",
            str(tmp_path / "no" / "o.ndjson"),
        ],
        "output is the input file": ["--input", str(patients), "--output", str(patients)],
        "output would be read as an input": [
            "--input",
            str(population.fhir),
            "--output",
            str(population.fhir / "r.ndjson"),
        ],
        "output is a folder": ["--input", str(patients), "--output", str(tmp_path)],
        "summary in a missing folder": [
            "--input",
            str(patients),
            "--summary",
            str(tmp_path / "no" / "s.json"),
        ],
        "input does not exist": ["--input", str(tmp_path / "nothing.ndjson")],
    }[kind]
    code, stderr = _cli(*args)
    assert code == EXIT_CONFIG
    assert stderr.startswith("fhir-match: ")
    assert patients.read_bytes() == before
    assert not (population.fhir / "r.ndjson").exists()
    assert list(tmp_path.iterdir()) == []


def test_the_command_reports_bad_input_by_file_and_line_and_exits_1(
    tmp_path: Path, population: Population, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ndjson"
    good = (population.fhir / "Patient.ndjson").read_text().splitlines()[0]
    bad.write_bytes(f'{{"resourceType": "Obs {MARKER}\n'.encode() + f"{good}\n".encode())
    output = tmp_path / "out.ndjson"
    code = main(
        ["screen", "--as-of", AS_OF.isoformat(), "--input", str(bad), "--output", str(output)]
    )
    assert code == EXIT_FAILURE
    assert len(output.read_text().splitlines()) == 1
    assert not (tmp_path / "out.ndjson.partial").exists()
    stderr = capsys.readouterr().err
    assert f"{bad}:1: invalid JSON" in stderr
    assert MARKER not in stderr
