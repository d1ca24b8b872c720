"""The CQL bridge against the real translator and the real Node engine (nothing is faked).

The libraries are tests/fixtures/cql/good/*.cql plus cql/FHIRHelpers.cql, translated once per
session; the patients are the hand-written Bundles in tests/fixtures/cql/patients/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from fhir_match.errors import ConfigError, EngineError, TranslationError
from fhir_match.evaluate.engine import (
    CQL_DIR,
    Bundle,
    JsonValue,
    NodeCqlEngine,
    PatientFailure,
    PatientOutcome,
    PatientValues,
    translate_cql,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cql"
DIABETES = "http://example.org/fhir/ValueSet/type-2-diabetes"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
EXPANSION = {DIABETES: [(ICD10, "E11.9")]}
MEASUREMENT_DATE = {"Measurement Date": date(2025, 1, 1)}


def _bundle(name: str) -> Bundle:
    data: Bundle = json.loads((FIXTURES / "patients" / f"{name}.json").read_text())
    return data


ALICE, BOB, CAROL = _bundle("alice"), _bundle("bob"), _bundle("carol")


@pytest.fixture(scope="session")
def helpers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's FHIRHelpers alone: the study libraries beside it are not under test here."""
    directory = tmp_path_factory.mktemp("helpers")
    shutil.copy(CQL_DIR / "FHIRHelpers.cql", directory)
    return directory


@pytest.fixture(scope="session")
def elm_dir(tmp_path_factory: pytest.TempPathFactory, helpers_dir: Path) -> Path:
    return translate_cql([helpers_dir, FIXTURES / "good"], tmp_path_factory.mktemp("elm"))


def _engine(elm_dir: Path, **overrides: object) -> NodeCqlEngine:
    options: dict[str, object] = {
        "version": "1.0.0",
        "value_sets": EXPANSION,
        "parameters": MEASUREMENT_DATE,
        "elm_dir": elm_dir,
    }
    options.update(overrides)
    return NodeCqlEngine("EngineTest", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_engine(elm_dir: Path) -> Iterator[NodeCqlEngine]:
    """For tests that change nothing in the engine; the others start their own."""
    with _engine(elm_dir) as engine:
        yield engine


@pytest.fixture
def engine(elm_dir: Path) -> Iterator[NodeCqlEngine]:
    with _engine(elm_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def outcomes(shared_engine: NodeCqlEngine) -> dict[str | None, PatientOutcome]:
    return {o.patient_id: o for o in shared_engine.evaluate([ALICE, BOB, CAROL])}


def _values(outcome: PatientOutcome) -> dict[str, object]:
    assert isinstance(outcome, PatientValues), outcome
    return dict(outcome.values)


def _has_diabetes(engine: NodeCqlEngine, bundle: Bundle) -> object:
    (outcome,) = engine.evaluate([bundle], ["Has Diabetes"])
    return _values(outcome)["Has Diabetes"]


# Translation


def test_every_library_translates_to_elm(elm_dir: Path) -> None:
    names = sorted(p.name for p in elm_dir.glob("[!.]*.json"))
    assert names == [
        "EngineCommon-1.0.0.json",
        "EngineTest-1.0.0.json",
        "FHIRHelpers-4.0.1.json",
        "HelpersTest-1.0.0.json",
    ]


def test_an_unchanged_source_tree_is_not_translated_again(elm_dir: Path, helpers_dir: Path) -> None:
    before = (elm_dir / "EngineTest-1.0.0.json").stat().st_mtime_ns
    translate_cql([helpers_dir, FIXTURES / "good"], elm_dir)
    assert (elm_dir / "EngineTest-1.0.0.json").stat().st_mtime_ns == before


def test_a_translation_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(TranslationError) as caught:
        translate_cql([FIXTURES / "bad"], tmp_path / "elm")
    assert len(caught.value.messages) == 1
    message = caught.value.messages[0]
    assert message.startswith("tests/fixtures/cql/bad/Broken.cql:7:17: ")
    assert "Add" in message
    assert "Broken.cql:7:17" in str(caught.value)
    assert not (tmp_path / "elm").exists()  # nothing is written when anything fails


def test_a_missing_source_directory_is_a_translation_error(tmp_path: Path) -> None:
    with pytest.raises(TranslationError, match="cannot read source directory"):
        translate_cql([tmp_path / "absent"], tmp_path / "elm")


# Evaluation


def test_values_for_a_patient_who_meets_everything(
    outcomes: dict[str | None, PatientOutcome],
) -> None:
    values = _values(outcomes["alice"])
    assert values["Patient"] == "Patient/alice"
    assert values["Age"] == 54
    assert values["Born Before 2000"] is True  # Patient.birthDate via FHIRHelpers.ToDate
    assert values["Gender"] == "female"
    assert values["Diabetes"] == ["Condition/c1"]
    assert values["Has Diabetes"] is True
    assert values["Diabetes Onset Before Measurement Date"] is True  # onset via ToDateTime
    # The preliminary result of June is left out; the latest final one wins.
    assert values["Latest HbA1c"] == "Observation/o1"
    assert values["Latest HbA1c Value"] == {"value": 8.1, "unit": "%"}
    assert values["HbA1c Above 7 Percent"] is True  # Observation.value via ToQuantity
    assert values["Diabetes Criterion"] == {
        "result": "met",
        "summary": "Type 2 diabetes on the problem list",
        "evidence": ["Condition/c1"],
    }
    assert values["Evidence Resources"] == ["Condition/c1", "Observation/o1", "Observation/o2"]
    assert values["Diabetes Twice"] == ["Condition/c1"]  # union is distinct
    assert "Hidden" not in values  # private definitions are not evaluated


def test_values_for_a_patient_who_meets_little(
    outcomes: dict[str | None, PatientOutcome],
) -> None:
    values = _values(outcomes["bob"])
    assert values["Age"] == 15
    assert values["Born Before 2000"] is False
    # E11.65 is not in the expansion as loaded (see the add-codes test).
    assert values["Has Diabetes"] is False
    assert values["Diabetes Criterion"] == {
        "result": "not met",
        "summary": "Type 2 diabetes on the problem list",
        "evidence": [],
    }
    assert values["Latest HbA1c Value"] == {"value": 48, "unit": "mmol/mol"}
    assert values["Weighs Over 60 kg"] is True  # 154 [lb_av] converted by UCUM
    # An unconverted FHIR element comes back as its FHIR JSON.
    assert values["Latest HbA1c Element"] == {
        "value": 48,
        "unit": "mmol/mol",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/mol",
    }


def test_a_failing_patient_is_an_error_entry_and_the_others_still_get_values(
    outcomes: dict[str | None, PatientOutcome],
) -> None:
    failure = outcomes["carol"]
    assert isinstance(failure, PatientFailure)
    assert '"Only Condition" failed at EngineTest|1.0.0 line 61:' in failure.message
    assert "SingletonFrom" in failure.message
    for data in ("carol", "c3", "c4", "E11.9", "I10", "1985"):
        assert data not in failure.message
    assert isinstance(outcomes["alice"], PatientValues)
    assert isinstance(outcomes["bob"], PatientValues)


def test_only_the_named_expressions_are_evaluated(shared_engine: NodeCqlEngine) -> None:
    (outcome,) = shared_engine.evaluate([CAROL], ["Age", "Has Diabetes"])
    assert outcome == PatientValues("carol", {"Age": 39, "Has Diabetes": True})


def test_the_public_expressions_are_listed(shared_engine: NodeCqlEngine) -> None:
    names = shared_engine.expression_names()
    assert names[:3] == ("Patient", "Age", "Born Before 2000")
    assert "Only Condition" in names
    assert "Hidden" not in names


def test_a_bundle_without_a_patient_is_an_error_entry(shared_engine: NodeCqlEngine) -> None:
    not_a_patient: Bundle = {"resourceType": "Bundle", "type": "collection", "entry": []}
    first, second = shared_engine.evaluate([not_a_patient, ALICE], ["Age"])
    assert first == PatientFailure(None, "not a Bundle with a Patient resource")
    assert second == PatientValues("alice", {"Age": 54})


def test_an_empty_batch_needs_no_engine(elm_dir: Path) -> None:
    engine = _engine(elm_dir)
    assert engine.evaluate([]) == []
    assert engine.pid is None


def test_added_codes_make_a_subcode_match(engine: NodeCqlEngine) -> None:
    assert _has_diabetes(engine, BOB) is False
    engine.add_codes({DIABETES: [(ICD10, "E11.65"), (ICD10, "E11.9")]})
    assert _has_diabetes(engine, BOB) is True
    (outcome,) = engine.evaluate([BOB], ["Diabetes Criterion"])
    assert _values(outcome)["Diabetes Criterion"] == {
        "result": "met",
        "summary": "Type 2 diabetes on the problem list",
        "evidence": ["Condition/c2"],
    }


def test_codes_added_before_the_engine_starts_are_loaded_with_it(engine: NodeCqlEngine) -> None:
    engine.add_codes({DIABETES: [(ICD10, "E11.65")]})
    assert engine.pid is None
    assert _has_diabetes(engine, BOB) is True


def test_the_engine_is_restarted_with_its_codes_when_killed(engine: NodeCqlEngine) -> None:
    engine.add_codes({DIABETES: [(ICD10, "E11.65")]})
    assert _has_diabetes(engine, BOB) is True
    first_pid = engine.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    _wait_for_exit(first_pid)
    assert _has_diabetes(engine, BOB) is True
    assert engine.pid not in (None, first_pid)


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Our child: it stays a zombie until the engine reaps it, which is the case to test.
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return
        time.sleep(0.02)


def test_an_unknown_expression_is_refused_and_the_engine_stays_up(
    shared_engine: NodeCqlEngine,
) -> None:
    shared_engine.start()
    pid = shared_engine.pid
    with pytest.raises(EngineError, match=r"no Patient expression.*Nope"):
        shared_engine.evaluate([ALICE], ["Nope"])
    (outcome,) = shared_engine.evaluate([ALICE], ["Age"])
    assert outcome == PatientValues("alice", {"Age": 54})
    assert shared_engine.pid == pid


def test_a_missing_value_set_is_a_configuration_error(elm_dir: Path) -> None:
    with _engine(elm_dir, value_sets={}) as engine, pytest.raises(ConfigError, match=DIABETES):
        engine.start()


def test_an_unknown_library_is_a_configuration_error(elm_dir: Path) -> None:
    with _engine(elm_dir, version="9.9.9") as engine:
        with pytest.raises(ConfigError, match=re.escape("EngineTest version '9.9.9' is not in")):
            engine.evaluate([ALICE])
        assert engine.pid is None


def test_a_parameter_of_the_wrong_type_is_a_configuration_error(elm_dir: Path) -> None:
    wrong = _engine(elm_dir, parameters={"Measurement Date": 2025})
    with wrong as engine, pytest.raises(ConfigError, match='"Measurement Date": 2025 is not a'):
        engine.start()


def test_no_call_waits_past_its_timeout(elm_dir: Path) -> None:
    with _engine(elm_dir, timeout_s=0.001) as engine:
        with pytest.raises(EngineError, match=r"did not load EngineTest within 0\.001 s"):
            engine.evaluate([ALICE])
        assert engine.pid is None


def test_every_fhirhelpers_conversion_works(elm_dir: Path) -> None:
    window: JsonValue = {"low": "2021-01-01T00:00:00Z", "high": "2021-12-31T23:59:59Z"}
    with NodeCqlEngine("HelpersTest", elm_dir=elm_dir, parameters={"Window": window}) as engine:
        (outcome,) = engine.evaluate([_bundle("helpers")])
    values = _values(outcome)
    # A period without an end is ongoing: a closed, unbounded high end.
    assert values["Ongoing Period"] == {
        "low": "2020-01-01T00:00:00+00:00",
        "high": None,
        "lowClosed": True,
        "highClosed": True,
    }
    assert values["Period Includes Date"] is True
    # A period without a start, and a range without a high: unknown (open) ends.
    assert values["Onset Period Without Start"] == {
        "low": None,
        "high": "2019-01-01",
        "lowClosed": False,
        "highClosed": True,
    }
    assert values["Abatement Range Without High"] == {
        "low": {"value": 5, "unit": "a"},
        "high": None,
        "lowClosed": True,
        "highClosed": False,
    }
    assert values["Concept"] == {
        "codes": [
            {"system": "http://snomed.info/sct", "code": "123", "version": None, "display": "X"}
        ],
        "display": "thing",
    }
    assert values["Code Matches"] is True
    # Sorted on converted ids: FHIR-typed sort keys would misorder.
    assert values["Observations"] == [
        f"Observation/{i}"
        for i in ("bool", "cmp", "int", "nonucum", "r", "str", "time", "unitless", "unitonly")
    ]
    assert values["Ratio"] == {
        "numerator": {"value": 1, "unit": "mg"},
        "denominator": {"value": 2, "unit": "mL"},
    }
    assert values["Quantity With Comparator"] is None
    assert values["Quantity Outside UCUM"] is None
    assert values["Quantity With Display Unit Only"] is None  # not UCUM: would fail the patient
    assert values["Quantity Without Unit"] == {"value": 3, "unit": "1"}
    assert values["Boolean Is True"] is True
    assert values["String Plus"] == "hi!"
    assert values["Integer Plus One"] == 42
    assert values["Time"] == "10:30:00"
    assert values["Issued In Window"] == ["r"]  # an instant, and an Interval parameter
    assert values["Birth Date"] == "1980-05"
    assert values["Patient Id"] == "p"
    assert values["Identifier"] == "MRN1"
    assert values["Encounter Finished"] is True


# The wire protocol itself


def test_protocol_errors_get_an_answer_and_the_process_stays_up(elm_dir: Path) -> None:
    load = {
        "id": "L",
        "op": "load",
        "elmDir": str(elm_dir),
        "library": "EngineTest",
        "version": "1.0.0",
        "valueSets": {DIABETES: []},
        "parameters": {"Measurement Date": "2025-01-01"},
    }
    lines = [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"id": 1, "op": "explode"}),
        json.dumps({"id": 2, "op": "evaluate", "bundles": []}),
        json.dumps(load),
        json.dumps({"id": 3, "op": "evaluate", "bundles": [ALICE], "expressions": ["Age"]}),
    ]
    done = subprocess.run(
        ["node", str(CQL_DIR.parent / "node" / "serve.mjs")],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a["id"], a["ok"]) for a in answers] == [
        (None, False),
        (None, False),
        (1, False),
        (2, False),
        ("L", True),
        (3, True),
    ]
    assert answers[0]["error"].startswith("request is not JSON")
    assert "unknown op" in answers[2]["error"]
    assert "no library loaded" in answers[3]["error"]
    assert answers[5]["results"] == [{"patientId": "alice", "values": {"Age": 54}}]
