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


def test_requests_end_at_any_line_break_and_long_ones_keep_their_characters() -> None:
    """Lines end at \\n, \\r\\n or \\r; blank lines are skipped; a line far longer than a pipe's
    chunk, full of two-byte characters, and a last line without a line break arrive whole."""
    long_id = "é" * 300_000
    requests = [
        (b"\r\n", {"id": 1, "op": "nope"}),
        (b"\r", {"id": 2, "op": "nope"}),
        (b"\n\n  \n", {"id": long_id, "op": "nope"}),
        (b"", {"id": 4, "op": "nope"}),
    ]
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + end for end, r in requests)
    done = subprocess.run(
        ["node", str(CQL_DIR.parent / "node" / "serve.mjs")],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, long_id, 4]
    assert all("unknown op" in a["error"] for a in answers)


# Speed-ups (node/speedups.mjs): the same results as the libraries alone


def _plain_engine(monkeypatch: pytest.MonkeyPatch, start: NodeCqlEngine) -> None:
    """Start ``start`` now with the speed-ups; engines started after this run without them."""
    start.start()
    monkeypatch.setenv("FHIR_MATCH_CQL_SPEEDUPS", "0")


def test_the_speedups_change_no_value_of_the_fixtures(
    elm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window: JsonValue = {"low": "2021-01-01T00:00:00Z", "high": "2021-12-31T23:59:59Z"}
    fast = _engine(elm_dir)
    fast_helpers = NodeCqlEngine("HelpersTest", elm_dir=elm_dir, parameters={"Window": window})
    fast_helpers.start()
    _plain_engine(monkeypatch, fast)
    plain = _engine(elm_dir)
    plain_helpers = NodeCqlEngine("HelpersTest", elm_dir=elm_dir, parameters={"Window": window})
    with fast, plain, fast_helpers, plain_helpers:
        patients = [ALICE, BOB, CAROL]
        assert fast.evaluate(patients) == plain.evaluate(patients)
        helpers = [_bundle("helpers")]
        assert fast_helpers.evaluate(helpers) == plain_helpers.evaluate(helpers)


def test_the_speedups_change_no_value_of_the_study_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every criteria case through KN5501, each value of each definition, with and without."""
    from fhir_match.evaluate.engine import DEFAULT_ELM_DIR
    from fhir_match.evaluate.evaluator import patient_shell
    from fhir_match.evaluate.study import load_study
    from fhir_match.normalise import normalise
    from fhir_match.records import PatientRecord
    from fhir_match.screen import load_normaliser
    from tests.criteria.conftest import PATIENT_ID, load_cases

    translate_cql()
    elm = shutil.copytree(DEFAULT_ELM_DIR, tmp_path / "elm")  # one translation for both runs
    study = load_study("kn5501")
    normaliser = load_normaliser(study)
    by_date: dict[date, list[Bundle]] = {}
    for case in load_cases():
        record = patient_shell(PatientRecord(f"Patient/{PATIENT_ID}", case.resources))
        by_date.setdefault(case.as_of, []).append(normalise(record, normaliser).bundle)
    assert sum(len(b) for b in by_date.values()) > 100

    def engines() -> dict[date, NodeCqlEngine]:
        return {
            as_of: NodeCqlEngine(
                study.library,
                version=study.library_version,
                value_sets=normaliser.terminology.expansions,
                parameters={"As Of": as_of, **study.parameters},
                elm_dir=elm,
            )
            for as_of in by_date
        }

    fast = engines()
    for engine in fast.values():
        engine.start()
    monkeypatch.setenv("FHIR_MATCH_CQL_SPEEDUPS", "0")
    plain = engines()
    try:
        for as_of, bundles in by_date.items():
            assert fast[as_of].evaluate(bundles) == plain[as_of].evaluate(bundles)
    finally:
        for engine in [*fast.values(), *plain.values()]:
            engine.close()


SHADOWING_CQL = """
library Shadowing version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
context Patient
define "X": 10
define function AddX(a Integer): a + "X"
define function Twice(a Integer): AddX(a) + AddX(a)
define "Alias Named Like A Definition": ({ 1, 2 }) X return AddX(X)
define "Nested": ({ 1 }) X return Twice(1)
define "Plain": AddX(1)
define "Plain Twice": Twice(1)
define "Same Call Again": { AddX(1), AddX(1), Twice(1) }
"""


def test_a_remembered_function_result_is_not_shared_with_a_shadowing_caller(
    tmp_path: Path, helpers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cql-execution looks definitions up through the caller's context: a query alias named like
    a definition is found instead (its quirk, kept). Function results must not leak across."""
    source = tmp_path / "cql"
    source.mkdir()
    (source / "Shadowing.cql").write_text(SHADOWING_CQL)
    elm = translate_cql([helpers_dir, source], tmp_path / "elm")
    fast = NodeCqlEngine("Shadowing", version="1.0.0", elm_dir=elm)
    _plain_engine(monkeypatch, fast)
    plain = NodeCqlEngine("Shadowing", version="1.0.0", elm_dir=elm)
    with fast, plain:
        (fast_outcome,) = fast.evaluate([ALICE])
        (plain_outcome,) = plain.evaluate([ALICE])
    assert fast_outcome == plain_outcome
    values = _values(fast_outcome)
    assert values["Plain"] == 11
    assert values["Plain Twice"] == 22
    assert values["Same Call Again"] == [11, 11, 22]


SYNCHRONOUS_CQL = """
library Synchronous version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
codesystem "LOINC": 'http://loinc.org'
valueset "Type 2 Diabetes": 'http://example.org/fhir/ValueSet/type-2-diabetes'
code "HbA1c": '4548-4' from "LOINC" display 'Hemoglobin A1c'
concept "Lab": { "HbA1c" } display 'Lab'
parameter "Window" Interval<DateTime>
  default Interval[@2023-01-01T00:00:00Z, @2024-12-31T23:59:59Z]
context Patient
define "List Selector": { 1 + 1, Length('abc'), Count([Observation]) }
define "Selectors": { DateTime(2024, 1, 2, 3, 4, 5, 6, 1.5), Date(2024, 2, 29), Time(10, 30) }
define "Concept": "Lab"
define "Code Equivalent": "HbA1c" ~ "Lab"
define "Pairs": from [Observation] A, [Observation] B where A.id < B.id return A.id + '-' + B.id
define "Values Sorted":
  ([Observation] O let V: (O.value as FHIR.Quantity).value where V is not null return V) V
    sort desc
define "By Date Then Id":
  ([Observation] O sort by FHIRHelpers.ToDateTime(effective as FHIR.dateTime) desc, id) O
    return O.id
define "Sum": ([Observation] O return FHIRHelpers.ToDecimal((O.value as FHIR.Quantity).value)) V
  aggregate S starting 0.0: S + Coalesce(V, 0.0)
define "With Diabetes Before": [Observation: "HbA1c"] O
  with [Condition: "Type 2 Diabetes"] C
    such that (C.onset as FHIR.dateTime) before (O.effective as FHIR.dateTime)
  return O.id
define "Without Condition": [Observation] O without [Condition] C such that true return O.id
define "In Window": [Observation] O
  where FHIRHelpers.ToDateTime(O.effective as FHIR.dateTime) during "Window" return O.id
define "Case": case when Count([Observation]) > 2 then 'many'
  when Count([Observation]) > 0 then 'some' else 'none' end
define "Strings": { Combine(Split('a,b,c', ','), ';'), Substring('abcdef', 1, 3) }
define "Matches": Matches('abc', 'a.c')
define "Open Interval": Interval(1, Count([Observation])]
define "Converts": { ConvertsToInteger('12'), ConvertsToInteger('x') }
define "Fails": singleton from ([Observation])
"""


def test_synchronous_evaluation_gives_the_libraries_values_and_errors(
    tmp_path: Path, helpers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Speed-up 0 runs cql-execution without async/await: every construct whose evaluation it
    reorders or rewrites (list, query and date selectors, sort, aggregate, relationships) gives
    what the library alone gives, and a failure names the same definition and location."""
    source = tmp_path / "cql"
    source.mkdir()
    (source / "Synchronous.cql").write_text(SYNCHRONOUS_CQL)
    elm = translate_cql([helpers_dir, source], tmp_path / "elm")
    fast = NodeCqlEngine("Synchronous", version="1.0.0", value_sets=EXPANSION, elm_dir=elm)
    _plain_engine(monkeypatch, fast)
    plain = NodeCqlEngine("Synchronous", version="1.0.0", value_sets=EXPANSION, elm_dir=elm)
    patients = [ALICE, BOB, CAROL]
    with fast, plain:
        names = [n for n in fast.expression_names() if n != "Fails"]
        values = fast.evaluate(patients, names)
        assert values == plain.evaluate(patients, names)
        failures = fast.evaluate(patients, ["Fails"])
        assert failures == plain.evaluate(patients, ["Fails"])
    alice = _values(values[0])
    assert alice["Pairs"] == ["o1-o2", "o1-o3", "o2-o3"]
    assert alice["By Date Then Id"] == ["o3", "o1", "o2"]
    assert alice["List Selector"] == [2, 3, 3]
    assert isinstance(failures[0], PatientFailure)
    assert '"Fails" failed at Synchronous|1.0.0 line' in failures[0].message


def test_the_speedups_refuse_library_code_they_were_not_written_for(tmp_path: Path) -> None:
    """A cql-execution source that changed (here one no speed-up ports, but which speed-up 0
    rewrites) stops the engine at start-up instead of running rewritten code."""
    node_dir = CQL_DIR.parent / "node"
    copy = tmp_path / "node"
    modules = copy / "node_modules"
    modules.mkdir(parents=True)
    for script in ("serve.mjs", "speedups.mjs"):
        shutil.copy(node_dir / script, copy)
    for package in (node_dir / "node_modules").iterdir():
        if package.name != "cql-execution":
            (modules / package.name).symlink_to(package)
    shutil.copytree(node_dir / "node_modules" / "cql-execution", modules / "cql-execution")
    source = modules / "cql-execution" / "lib" / "elm" / "expression.js"
    source.write_text(source.read_text() + "// changed\n")
    done = subprocess.run(
        ["node", str(copy / "serve.mjs")], input="", capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "cql-execution/lib changed" in done.stderr


def test_each_speedup_matches_the_library_code_it_replaces(tmp_path: Path) -> None:
    """FHIR objects, distinct, date parsing, date arithmetic and ages, value by value."""
    script = tmp_path / "selfcheck.mjs"
    script.write_text(SELF_CHECK_JS)
    patients = sorted(str(p) for p in (FIXTURES / "patients").glob("*.json"))
    done = subprocess.run(
        ["node", str(script), str(CQL_DIR.parent / "node"), *patients],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["failures"] == []
    for kind in (
        "fhir values",
        "fhir equals",
        "getCode",
        "distinct",
        "DateTime.parse",
        "age",
        "arithmetic",
    ):
        assert report["counts"].get(kind, 0) > 100, kind


SELF_CHECK_JS = r"""
// Each speed-up against the library code it replaces, on the same inputs. Prints one JSON line.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [nodeDir, ...bundleFiles] = process.argv.slice(2);
const require = createRequire(path.join(nodeDir, 'serve.mjs'));
const speedupsUrl = pathToFileURL(path.join(nodeDir, 'speedups.mjs'));
const { installSpeedups, loadSynchronousEngine, _internals } = await import(speedupsUrl);
const cql = loadSynchronousEngine();
const cqlfhir = require('cql-exec-fhir');
const comparison = require('cql-execution/lib/util/comparison');
const list = require('cql-execution/lib/elm/list');
const quantity = require('cql-execution/lib/datatypes/quantity');
const immutableUtil = require('cql-execution/lib/util/immutableUtil');
const { Uncertainty } = require('cql-execution/lib/datatypes/uncertainty');
const luxon = createRequire(require.resolve('cql-execution'))('luxon');

// The library's own code, kept before the speed-ups replace it.
const ARITHMETIC = ['doAddition', 'doSubtraction', 'doMultiplication'];
const library = {
  distinct: list.toDistinctList,
  key: immutableUtil.toNormalizedKey,
  parseDateTime: cql.DateTime.parse,
  parseDate: cql.Date.parse,
  durationBetween: cql.Date.prototype.durationBetween,
  arithmetic: Object.fromEntries(ARITHMETIC.map((f) => [f, quantity[f]])),
};
const plainSource = cqlfhir.PatientSource.FHIRv401();
const fastSource = cqlfhir.PatientSource.FHIRv401();
const speedups = installSpeedups(fastSource, { resourceKey: () => null });
immutableUtil.toNormalizedKey = (v) => speedups.fhirKey(v) ?? library.key(v);

let seed = 42;
const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
const pick = (a) => a[Math.floor(random() * a.length)];
const int = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1));
const pad = (n, w) => String(n).padStart(w, '0');
const failures = [];
const counts = {};
function check(kind, ok, detail) {
  counts[kind] = (counts[kind] ?? 0) + 1;
  if (!ok && failures.length < 20) failures.push(`${kind}: ${detail}`);
}
const json = (v) => JSON.stringify(v, (k, x) => (Object.is(x, -0) ? '-0' : x));
const show = (v) => {
  if (Object.is(v, -0)) return 'number:-0';
  if (v == null || typeof v !== 'object') return `${typeof v}:${String(v)}`;
  if (Array.isArray(v)) return `list(${v.length})`;
  if (typeof v.getTypeInfo === 'function') return `fhir:${v.getTypeInfo()?.name}:${json(v._json)}`;
  return `${v.constructor?.name}:${json(v)}|${v.timezoneOffset}`;
};
const sameList = (a, b) => a.length === b.length && a.every((v, j) => Object.is(v, b[j]));

// 1. FHIR objects: every element, paths and explicit choices, equality and equivalence.
const PATHS = ['code.coding', 'value', 'valueQuantity', 'onsetDateTime', 'effectivePeriod',
  'medicationCodeableConcept', 'status.value', 'noSuchElement'];
function sameFhir(a, b, where, depth) {
  const same = show(a) === show(b);
  check('fhir values', same, `${where}: ${show(a)} / ${show(b)}`);
  if (!same || a == null || typeof a !== 'object' || depth > 5) return;
  if (Array.isArray(a)) {
    a.forEach((x, i) => sameFhir(x, b[i], `${where}[${i}]`, depth + 1));
    return;
  }
  if (typeof a.getTypeInfo !== 'function') return;
  const names = Object.keys(a);
  const fastNames = [];
  for (const k in b) fastNames.push(k);
  check('fhir elements', names.join() === fastNames.join(), where);
  const types = (x) => JSON.stringify(x._typeHierarchy());
  check('fhir types', types(a) === types(b), where);
  for (const n of [...names, ...PATHS]) sameFhir(a.get(n), b.get(n), `${where}.${n}`, depth + 1);
}
const UCUM = { system: 'http://unitsofmeasure.org', code: 'mg', unit: 'mg', value: 5 };
const crafted = {
  resourceType: 'Bundle',
  entry: [
    { resourceType: 'Patient', id: 'p', birthDate: '1980-05',
      _birthDate: { extension: [{ url: 'u', valueString: 'x' }] },
      name: [{ given: ['A', 'B'], _given: [null, { id: 'g2' }] }],
      deceasedBoolean: false, multipleBirthInteger: 2 },
    { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' },
      _valueString: { extension: [{ url: 'u', valueCode: 'c' }] },
      effectivePeriod: { start: '2020-01-01T10:00:00+02:00' }, issued: '2020-01-02T00:00:00.000Z' },
    { resourceType: 'Observation', id: 'o2', status: 'final',
      code: { coding: [{ system: 's', code: '1' }] }, valueQuantity: UCUM,
      effectiveDateTime: '2020-02-29',
      component: [{ code: { text: 'c' }, valueTime: '10:30:00' }] },
    { resourceType: 'Observation', id: 'o3', status: 'final',
      code: { coding: [{ system: 's', code: '1' }, { system: 't', code: '2', display: 'd' }] },
      valueQuantity: UCUM,
      effectiveDateTime: '2020-02-29' },
    { resourceType: 'Condition', id: 'c1', code: { coding: [{ system: 's', code: '1' }] },
      onsetPeriod: { end: '2019' }, abatementString: 'gone', _recordedDate: { id: 'r' } },
    { resourceType: 'MedicationRequest', id: 'm1', status: 'active', intent: 'order',
      medicationCodeableConcept: { text: 'drug' },
      dosageInstruction: [{ timing: { repeat: { boundsPeriod: { start: '2021-03' } } },
        route: { text: 'iv' } }] },
  ].map((resource) => ({ resource })),
};
const read = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));
const bundles = [crafted, ...bundleFiles.map(read)];
const quiet = console.error;
console.error = () => {};
for (const bundle of bundles) {
  plainSource.reset();
  plainSource.loadBundles([bundle]);
  const plainPatient = plainSource.currentPatient();
  const fastPatient = speedups.patientFor(bundle);
  for (const type of new Set(bundle.entry.map((e) => e.resource.resourceType))) {
    const details = { datatype: `{http://hl7.org/fhir}${type}` };
    const a = plainPatient.findRecords(details.datatype, details);
    const b = fastPatient.findRecords(details.datatype, details);
    sameFhir(a, b, `${bundle.entry[0].resource.id}:${type}`, 0);
    const CODED = ['code', 'medication', 'vaccineCode', 'status', 'category', 'noSuchElement'];
    for (let i = 0; i < a.length; i++) {
      for (const field of CODED) {
        const want = json(a[i].getCode(field));
        const first = b[i].getCode(field);
        const again = b[i].getCode(field);
        const same = want === json(first) && want === json(again);
        const fresh = !Array.isArray(first) || first !== again;
        check('getCode', same && fresh, `${type}.${field}: ${want} / ${json(first)}`);
      }
    }
    const parts = (r) => [r, r.code, r.code?.coding?.[0], r.id, r.meta, r.subject];
    for (let i = 0; i < a.length; i++) {
      for (let j = 0; j < a.length; j++) {
        const [pa, qa, pb, qb] = [parts(a[i]), parts(a[j]), parts(b[i]), parts(b[j])];
        for (let k = 0; k < pa.length; k++) {
          for (const f of ['equals', 'equivalent']) {
            const x = comparison[f](pa[k], qa[k]);
            const y = comparison[f](pb[k], qb[k]);
            check(`fhir ${f}`, Object.is(x, y), `${type} ${i}/${j} part ${k}: ${x} / ${y}`);
          }
        }
      }
    }
  }
}
console.error = quiet;

// 2. distinct: the first of each group of equal keys, in order.
const dt = (s) => library.parseDateTime.call(cql.DateTime, s);
const day = (s) => library.parseDate.call(cql.Date, s);
const coded = (display, i) => ({
  resource: { resourceType: 'Condition', id: `c${i}`,
    code: { coding: [{ system: 's', code: '1', display }], text: 't' } },
});
const conditionBundle = {
  resourceType: 'Bundle',
  entry: [{ resource: { resourceType: 'Patient', id: 'p' } }, ...['x', 'x', undefined].map(coded)],
};
const conditions = speedups.patientFor(conditionBundle)
  .findRecords('', { datatype: '{http://hl7.org/fhir}Condition' });
const fhirValues = [...conditions, ...conditions.map((c) => c.code),
  ...conditions.map((c) => c.code.coding[0]), ...conditions.map((c) => c.id)];
const DATETIMES = ['2020-01-01T10:00:00+02:00', '2020-01-01T08:00:00Z', '2020-01-01T08:00',
  '2020-01-01T08:00:00.000+00:00', '2020-01-01T13:30:00+05:30', '2020-01-01'];
const atoms = [
  () => pick([0, -0, 1, 1.5, NaN, Infinity, '1', '0', 'a', 'a"b', 'a,b', '', null, undefined,
    true, false]),
  () => new cql.Code(pick(['1', '2', undefined]), pick(['s', undefined]), pick([undefined, 'v']),
    pick([undefined, 'd'])),
  () => day(pick(['2020', '2020-01', '2020-01-02', '2020-01-03'])),
  () => dt(pick(DATETIMES)),
  () => pick([new Uncertainty(1, 1), new Uncertainty(1, 2)]),
  () => pick([new cql.Quantity(1, 'mg'), new cql.Interval(1, 2)]),
  () => pick(fhirValues),
];
function value(depth = 0) {
  const r = random();
  if (depth > 2 || r < 0.55) return pick(atoms)();
  if (r < 0.75) return Array.from({ length: int(0, 2) }, () => value(depth + 1));
  const tuple = {};
  for (const k of ['a', 'b', 'c']) if (random() < 0.7) tuple[k] = value(depth + 1);
  return tuple;
}
const [c0, c1, c2] = conditions;
const lists = [
  [0, -0], [-0, 0], [NaN, NaN], ['1', 1], [1, 1.0], [null, undefined], [true, 'true'],
  [dt(DATETIMES[0]), dt(DATETIMES[1]), dt(DATETIMES[4])],
  [new cql.Code('1', 's'), new cql.Code('1', 's'), new cql.Code('1', 's', undefined, 'd')],
  [c0.code, c1.code, c2.code, c0.code.coding[0], c1.code.coding[0]], [c0, c0, c1],
  [{ a: 1, b: 2 }, { b: 2, a: 1 }, { a: 1 }], [{ a: null }, {}, { a: undefined }],
  [{ __instance: 5, a: 1 }, { a: 1 }], [[1, 2], [1, 2], [2, 1]], [new Uncertainty(1, 1), 1],
  [day('2020-01'), day('2020-01')],
];
for (let i = 0; i < 3000; i++) {
  const pool = Array.from({ length: int(1, 5) }, () => value());
  lists.push(Array.from({ length: int(0, 6) }, () => pick(pool)));
}
for (const items of lists) {
  const ok = sameList(library.distinct(items), list.toDistinctList(items));
  check('distinct', ok, items.map(show).join(' '));
}
// A tuple's encoding is kept only while nothing can change it: Start/End set, in place, the
// offset of a DateTime equal to the minimum or maximum DateTime.
const { MIN_DATETIME_VALUE, MAX_DATETIME_VALUE } = require('cql-execution/lib/datatypes/datetime');
for (const end of [MIN_DATETIME_VALUE, MAX_DATETIME_VALUE]) {
  const moment = end.copy();
  const tuple = { at: moment, id: 'x' };
  const unchanged = { at: end.copy(), id: 'x' };
  for (const offset of [0, 2, 0, -5]) {
    moment.timezoneOffset = offset;
    const items = [tuple, unchanged, { id: 'x', at: moment }];
    const ok = sameList(library.distinct(items), list.toDistinctList(items));
    check('distinct', ok, `${end} with its offset changed to ${offset}`);
  }
}

// 3. date strings: the same DateTime/Date (or null) as the library's parse.
const two = (lo, hi) => pad(int(lo, hi), 2);
const shapes = [
  () => pad(int(0, 9999), 4),
  () => `${pad(int(0, 9999), 4)}-${two(0, 13)}`,
  () => `${pad(int(1, 2100), 4)}-${two(0, 13)}-${two(0, 32)}`,
  () => `${pad(int(1, 2100), 4)}-${two(1, 12)}-${two(1, 31)}T${two(0, 25)}:${two(0, 61)}`
    + pick(['', `:${two(0, 61)}`, `:${two(0, 61)}.${pad(int(0, 999), 3)}`, `:00.${int(0, 99999)}`])
    + pick(['', 'Z', `+${two(0, 16)}:${two(0, 61)}`, `-${two(0, 16)}:${two(0, 61)}`,
      `+${two(0, 14)}`]),
];
const FORMATS = { 4: 'yyyy', 7: 'yyyy-MM', 10: 'yyyy-MM-dd' };
for (let i = 0; i < 8000; i++) {
  const s = pick(shapes)();
  check('DateTime.parse', show(cql.DateTime.parse(s)) === show(dt(s)), s);
  check('Date.parse', show(cql.Date.parse(s)) === show(day(s)), s);
  if (_internals.checkedValid(s, false)) {
    check('checkedValid', luxon.DateTime.fromFormat(s, FORMATS[s.length]).isValid, s);
  }
}

// 4. whole years between dates, month ends and 29 February included.
const days = (y, m) => new Date(Date.UTC(y, m, 0)).getUTCDate();
const dates = [];
for (const y of [1999, 2000, 2001, 2004, 2023, 2024, 2100]) {
  for (let m = 1; m <= 12; m++) {
    for (const d of [1, 28, 29, 30, 31]) if (d <= days(y, m)) dates.push(new cql.Date(y, m, d));
  }
}
for (let i = 0; i < 3000; i++) {
  const [y, m] = [int(1900, 2100), int(1, 12)];
  dates.push(new cql.Date(y, m, int(1, days(y, m))));
}
dates.push(new cql.Date(2000, 5, null), new cql.Date(1999, null, null));
const febs = [];
for (const y of [1999, 2000, 2001, 2003, 2004, 2005, 2023, 2024, 2025]) {
  febs.push(new cql.Date(y, 2, 28), new cql.Date(y, 3, 1));
  if (days(y, 2) === 29) febs.push(new cql.Date(y, 2, 29));
}
const pairs = febs.flatMap((a) => febs.map((b) => [a, b]));
for (let i = 0; i < 10000; i++) pairs.push([pick(dates), pick(dates)]);
for (const [a, b] of pairs) {
  const x = library.durationBetween.call(a, b, 'year');
  const y = a.durationBetween(b, 'year');
  const ok = Object.is(x.low, y.low) && Object.is(x.high, y.high);
  check('age', ok, `${a} ${b}: ${x.low},${x.high} / ${y.low},${y.high}`);
}

// 5. arithmetic on dates and quantities, twice (the second time from the cache).
const UNITS = ['day', 'days', 'week', 'month', 'year', 'mg', 'g', '1', 'h'];
const operands = [
  () => new cql.Quantity(pick([0, -0, 1, 2, 28, 180, 0.5]), pick(UNITS)),
  () => pick([0, -0, 1, 2, 7, 0.5, 180]),
  () => pick(febs),
  () => dt(pick(['2020-01-31T10:00:00+02:00', '2024-02-29T23:30:00Z',
    '2020-03-08T02:30:00-05:00'])),
];
const outcome = (f, a, b) => {
  try {
    return show(f(a, b));
  } catch (e) {
    return `throws ${e.message}`;
  }
};
for (let i = 0; i < 4000; i++) {
  const f = pick(ARITHMETIC);
  const [a, b] = [pick(operands)(), pick(operands)()];
  const x = outcome(library.arithmetic[f], a, b);
  for (let k = 0; k < 2; k++) {
    const y = outcome(quantity[f], a, b);
    check('arithmetic', x === y, `${f}(${show(a)}, ${show(b)}): ${x} / ${y}`);
  }
}

console.log(JSON.stringify({ counts, failures }));
"""
