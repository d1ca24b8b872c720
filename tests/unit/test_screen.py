"""`fhir-match screen` end to end on files: Bundles and NDJSON alike; bad input reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_match.cli import EXIT_FAILURE, EXIT_OK, main
from fhir_match.evaluate.study import load_study

FIXTURES = Path(__file__).parents[1] / "fixtures" / "screen"
AS_OF = "2026-06-01"


def _screen(tmp_path: Path, *inputs: Path) -> tuple[int, list[dict[str, Any]]]:
    out = tmp_path / "results.ndjson"
    args = ["screen", "--as-of", AS_OF, "--output", str(out)]
    for path in inputs:
        args += ["--input", str(path)]
    code = main(args)
    return code, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _as_ndjson(bundles: Path, folder: Path) -> Path:
    """The same patients as Bulk Data NDJSON: one file per resource type, in no patient order."""
    from fhir_match.files import fhir_files, read_resources

    folder.mkdir()
    resources = list(read_resources(fhir_files(bundles), lambda issue: None))
    for resource in reversed(resources):
        path = folder / f"{resource['resourceType']}.ndjson"
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(resource, ensure_ascii=False) + "\n")
    return folder


def test_bundles_give_the_documented_format(tmp_path: Path) -> None:
    code, lines = _screen(tmp_path, FIXTURES)
    assert code == EXIT_OK
    study = load_study("kn5501")
    ids = [c.id for c in study.criteria]
    assert {line["patient"] for line in lines} == {
        "Patient/p1",
        "Patient/2b7f3c1e-8d7e-4a51-9a0c-1f2e3d4c5b6a",
    }
    for line in lines:
        assert line["study"] == "kn5501"
        assert line["as_of"] == AS_OF
        assert [c["id"] for c in line["criteria"]] == ids
        for criterion in line["criteria"]:
            assert set(criterion) == {"id", "kind", "result", "summary", "evidence"}
            assert criterion["result"] in ("met", "not-met", "unknown")
    outcomes = {line["patient"]: line["outcome"] for line in lines}
    assert outcomes["Patient/p1"] == "candidate"
    assert outcomes["Patient/2b7f3c1e-8d7e-4a51-9a0c-1f2e3d4c5b6a"] == "ineligible"


def test_ndjson_gives_the_same_results_as_bundles(tmp_path: Path) -> None:
    _, from_bundles = _screen(tmp_path, FIXTURES)
    ndjson = _as_ndjson(FIXTURES, tmp_path / "bulk")
    _, from_ndjson = _screen(tmp_path, ndjson)
    assert sorted(from_ndjson, key=str) == sorted(from_bundles, key=str)


def test_bad_lines_are_reported_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ndjson = _as_ndjson(FIXTURES, tmp_path / "bulk")
    with (ndjson / "Observation.ndjson").open("a", encoding="utf-8") as out:
        out.write('{"resourceType": "Observation", "id": \n')
    code, lines = _screen(tmp_path, ndjson)
    assert code == EXIT_FAILURE
    assert len(lines) == 2
    report = capsys.readouterr().err
    assert "input skipped: 1" in report
    assert f"{ndjson / 'Observation.ndjson'}:" in report
    assert "invalid JSON" in report


def test_an_unconvertible_unit_is_reported_not_guessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = _screen(tmp_path, FIXTURES / "candidate.json")
    (line,) = lines
    platelets = next(c for c in line["criteria"] if c["id"] == "inc-3")
    assert "30 mg" in platelets["summary"]
    assert "Observation/o3" not in platelets["evidence"]
    assert (
        "Observation/o3: platelet count not used: its unit is not a known"
        in capsys.readouterr().err
    )


def test_a_missing_input_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["screen", "--input", str(tmp_path / "nothing-here")])
    assert stopped.value.code == 2


def test_the_summary_ends_with_the_funnel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _screen(tmp_path, FIXTURES)
    report = capsys.readouterr().err
    assert "funnel (full): found 2, not evaluated 0, evaluated 2" in report
    # no ITP: inc-2 and inc-7 are both not met, and the first one removes the patient
    assert "rules them out: inc-2 1\n" in report
    assert "left: candidate 1, potential-candidate 0" in report


def test_cohort_only_lists_the_cohort_as_the_full_screen_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a synthetic population: each cohort patient's line is the full screen's, byte for
    byte, and every patient the full screen lists (and the generator meant to be listed) is
    in the cohort; the others are counted, not evaluated."""
    from datetime import date

    from fhir_match.synth import generate

    population = tmp_path / "population"
    generate(400, 3, population, "ndjson", as_of=date.fromisoformat(AS_OF), itp_share=0.1)
    full, cohort = tmp_path / "full.ndjson", tmp_path / "cohort.ndjson"
    summary = tmp_path / "summary.json"
    fhir = str(population / "fhir")
    assert main(["screen", "--as-of", AS_OF, "--input", fhir, "--output", str(full)]) == EXIT_OK
    args = ["--input", fhir, "--output", str(cohort), "--summary", str(summary)]
    assert main(["screen", "--as-of", AS_OF, "--cohort-only", *args]) == EXIT_OK

    full_lines = {json.loads(line)["patient"]: line for line in full.read_text().splitlines()}
    cohort_lines = {json.loads(line)["patient"]: line for line in cohort.read_text().splitlines()}
    assert cohort_lines
    for patient, line in cohort_lines.items():
        assert line == full_lines[patient]
    listed = {p for p, line in full_lines.items() if json.loads(line)["outcome"] != "ineligible"}
    assert listed
    assert listed <= cohort_lines.keys()
    expected = [
        json.loads(line) for line in (population / "expected.ndjson").read_text().splitlines()
    ]
    assert {e["patient"] for e in expected if e["outcome"] != "ineligible"} <= cohort_lines.keys()
    counts = json.loads(summary.read_text())
    assert counts["not_in_cohort"] == len(full_lines) - len(cohort_lines) > 0
    assert counts["patients"] == len(cohort_lines)
    report = capsys.readouterr().err
    assert f"not in the cohort (not evaluated): {counts['not_in_cohort']}\n" in report
