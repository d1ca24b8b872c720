"""Tests for unit conversion and the platelet unit map in mappings/units/."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhir_match import units
from fhir_match.errors import ConfigError
from fhir_match.units import (
    UCUM,
    UnitMap,
    UnitProblem,
    build_unit_map,
    load_unit_map,
    normalise_quantity,
)

PLATELET_FILE = Path(__file__).resolve().parents[2] / "mappings" / "units" / "platelet-count.json"
PLATELET_DATA = json.loads(PLATELET_FILE.read_text(encoding="utf-8"))
FACTORS = {entry["code"]: Decimal(str(entry["factor"])) for entry in PLATELET_DATA["ucum"]}


@pytest.fixture(scope="module")
def platelets() -> UnitMap:
    return load_unit_map(PLATELET_FILE)


def test_public_names() -> None:
    assert sorted(units.__all__) == sorted(
        ["UCUM", "UnitMap", "UnitProblem", "build_unit_map", "load_unit_map", "normalise_quantity"]
    )


def test_platelet_map_is_canonical_in_10_9_per_litre(platelets: UnitMap) -> None:
    assert platelets.analyte == "platelet-count"
    assert platelets.canonical == "10*9/L"


@pytest.mark.parametrize("entry", PLATELET_DATA["ucum"], ids=lambda entry: entry["code"])
def test_every_ucum_code_converts_by_its_factor(platelets: UnitMap, entry: dict[str, Any]) -> None:
    expected = Decimal(45) * Decimal(str(entry["factor"]))
    assert normalise_quantity(platelets, 45, None, entry["code"], UCUM) == expected
    assert normalise_quantity(platelets, 45, entry["code"]) == expected


@pytest.mark.parametrize("entry", PLATELET_DATA["spellings"], ids=lambda entry: entry["unit"])
def test_every_spelling_converts_like_its_ucum_code(
    platelets: UnitMap, entry: dict[str, Any]
) -> None:
    assert normalise_quantity(platelets, 45, entry["unit"]) == 45 * FACTORS[entry["ucum"]]


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (45000, "/uL", 45),
        (Decimal("45000"), "/mm3", 45),
        (45000.0, "{#}/uL", 45),
        (45, "K/uL", 45),
        (45, "k/ul", 45),
        (45, "x10E3/uL", 45),
        (45, "10^9/L", 45),
        (45, "x10^9/L", 45),
        (45, "\u00d710\u2079/L", 45),  # multiplication sign, superscript nine
        (45, "10E9/L", 45),
        (45, "10*3/\u00b5L", 45),  # micro sign
        (45, "10*3/\u03bcL", 45),  # Greek small mu
        (45, "Gpt/L", 45),
        (45000, "/mm³", 45),
        (45, " 10^9 / L ", 45),
        (45, "10*3/UL", 45),
        (Decimal("7.5"), "thousand/uL", Decimal("7.5")),
        (45, "x10^3/mcL", 45),  # "mc" for micro, as US labs write it
        (45000, "cells/mcL", 45),
        (45, "x10(9)/L", 45),  # exponent in parentheses
        (45, "10(3)/uL", 45),
        (45, "*10^9/L", 45),  # an asterisk for the multiplication sign
    ],
)
def test_converts(
    platelets: UnitMap, value: Decimal | int | float, unit: str, expected: Decimal | int
) -> None:
    assert normalise_quantity(platelets, value, unit) == expected


def test_ucum_code_decides_over_unit_text(platelets: UnitMap) -> None:
    assert normalise_quantity(platelets, 45000, "10^9/L", "/uL", UCUM) == 45


def test_code_of_another_system_is_read_only_without_unit_text(platelets: UnitMap) -> None:
    local = "urn:oid:1.2.3"
    assert normalise_quantity(platelets, 45, "K/uL", "PLT-UNIT", local) == 45
    assert normalise_quantity(platelets, 45, None, "10^9/L", local) == 45


@pytest.mark.parametrize(
    ("value", "unit", "code", "problem"),
    [
        (45, "mg", None, UnitProblem("unknown-unit", "mg")),
        (45, None, "mg", UnitProblem("unknown-unit", "mg")),
        (45, "%", None, UnitProblem("unknown-unit", "%")),
        (45000, None, None, UnitProblem("missing-unit")),
        (45000, "", "", UnitProblem("missing-unit")),
        (None, "10*9/L", None, UnitProblem("missing-value")),
    ],
)
def test_reports_what_it_cannot_convert(
    platelets: UnitMap, value: int | None, unit: str | None, code: str | None, problem: UnitProblem
) -> None:
    assert normalise_quantity(platelets, value, unit, code) == problem


def test_problems_read_as_summary_lines() -> None:
    assert str(UnitProblem("missing-unit")) == "no unit"
    assert str(UnitProblem("missing-value")) == "no value"
    assert "mg" not in str(UnitProblem("unknown-unit", "mg"))  # record text is not quoted


def test_another_analyte_uses_the_same_function() -> None:
    lvef = build_unit_map(
        {"analyte": "lvef", "canonical": "%", "ucum": [{"code": "%", "factor": 1}], "spellings": []}
    )
    assert normalise_quantity(lvef, 55, "%", "%", UCUM) == 55
    assert normalise_quantity(lvef, Decimal("0.55"), "ratio") == UnitProblem(
        "unknown-unit", "ratio"
    )


@pytest.mark.parametrize(
    "data",
    [
        {
            "analyte": "x",
            "canonical": "g/L",
            "ucum": [{"code": "g/L", "factor": 2}],
            "spellings": [],
        },
        {
            "analyte": "x",
            "canonical": "g/L",
            "ucum": [{"code": "g/L", "factor": 1}],
            "spellings": [{"unit": "gram/L", "ucum": "kg/L"}],
        },
        {
            "analyte": "x",
            "canonical": "g/L",
            "ucum": [{"code": "g/L", "factor": 1}, {"code": "mg/L", "factor": 0.001}],
            "spellings": [{"unit": "G/L", "ucum": "mg/L"}],
        },
        {"analyte": "x", "canonical": "g/L"},
        {
            "analyte": "x",
            "canonical": "g/L",
            "ucum": [{"code": "g/L", "factor": "one"}],
            "spellings": [],
        },
    ],
    ids=[
        "canonical-factor-not-1",
        "spelling-to-unlisted-ucum",
        "folded-clash",
        "missing-keys",
        "bad-factor",
    ],
)
def test_build_refuses(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_unit_map(data)


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_unit_map(tmp_path / "none.json")
