"""Conversion of a measured quantity to its analyte's canonical UCUM unit, by a unit map.

A unit map names the canonical unit, the UCUM codes it accepts with their factors, and the
non-UCUM spellings labs actually send (K/uL, x10^9/L, 10*3/µL, ...) with the UCUM code each one
means. A quantity converts only through a listed code or spelling: a count whose unit is
missing or unknown is reported, never guessed (45000 with no unit is probably /uL, and is still
not converted).

Only `load_unit_map` touches the file system; everything else is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from fhir_match.errors import ConfigError

__all__ = [
    "UCUM",
    "UnitMap",
    "UnitProblem",
    "build_unit_map",
    "load_unit_map",
    "normalise_quantity",
]

UCUM = "http://unitsofmeasure.org"

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_SPACES = re.compile(r"\s+")
_PARENTHESISED_EXPONENT = re.compile(r"10\((\d+)\)")
_LEADING_TIMES = re.compile(r"^\*(?=10)")


@dataclass(frozen=True)
class UnitMap:
    """One analyte's units: UCUM code -> factor to canonical, and folded spelling -> UCUM code."""

    analyte: str
    canonical: str
    factors: Mapping[str, Decimal]
    spellings: Mapping[str, str]


@dataclass(frozen=True)
class UnitProblem:
    """Why a quantity was not converted; `str()` gives the line for a summary, which does not
    quote the unit (record text may be anything)."""

    kind: Literal["missing-value", "missing-unit", "unknown-unit"]
    unit: str = ""

    def __str__(self) -> str:
        if self.kind == "missing-value":
            return "no value"
        if self.kind == "missing-unit":
            return "no unit"
        return "its unit is not a known unit for this test"


def _fold(spelling: str) -> str:
    """A unit spelling reduced to compare loosely: no spaces, the micro sign, Greek mu and the
    "mc" of mcL as u, the multiplication sign and a leading * as x, superscript and parenthesised
    exponents as ^digits (10⁹, 10(9) -> 10^9), case-folded."""
    text = _SPACES.sub("", spelling)
    text = _SUPERSCRIPT_RUN.sub(lambda run: "^" + run.group().translate(_SUPERSCRIPTS), text)
    text = _PARENTHESISED_EXPONENT.sub(r"10^\1", text)
    text = text.replace("\u00b5", "u").replace("\u03bc", "u").replace("\u00d7", "x").casefold()
    return _LEADING_TIMES.sub("x", text).replace("mcl", "ul")


def normalise_quantity(
    unit_map: UnitMap,
    value: Decimal | int | float | None,
    unit: str | None,
    code: str | None = None,
    system: str | None = None,
) -> Decimal | UnitProblem:
    """The value in the map's canonical unit, or why it cannot be converted.

    Arguments follow FHIR Quantity. A UCUM code (system UCUM, or a code with no system) decides
    alone, since it is the computable part; otherwise the unit text decides; a code from another
    system is read as text only when there is no unit text.
    """
    if value is None:
        return UnitProblem("missing-value")
    if code and system in (None, UCUM):
        spelling = code
    elif unit:
        spelling = unit
    elif code:
        spelling = code
    else:
        return UnitProblem("missing-unit")
    factor = unit_map.factors.get(spelling)
    if factor is None:
        ucum = unit_map.spellings.get(_fold(spelling))
        if ucum is None:
            return UnitProblem("unknown-unit", spelling)
        factor = unit_map.factors[ucum]
    return Decimal(str(value)) * factor


def build_unit_map(data: Mapping[str, Any]) -> UnitMap:
    """A unit map from its JSON form (see mappings/units/platelet-count.json).

    Every UCUM code also joins the spellings under its folded form, so "10*3/UL" finds 10*3/uL;
    two spellings that fold alike must mean the same factor.
    """
    try:
        analyte = str(data["analyte"])
        canonical = str(data["canonical"])
        factors = {str(entry["code"]): Decimal(str(entry["factor"])) for entry in data["ucum"]}
        listed = [(str(entry["unit"]), str(entry["ucum"])) for entry in data["spellings"]]
    except (KeyError, TypeError, InvalidOperation) as exc:
        raise ConfigError(f"unit map is malformed ({exc!r})") from exc
    if factors.get(canonical) != 1:
        raise ConfigError(f"unit map {analyte}: canonical {canonical} needs factor 1")
    spellings: dict[str, str] = {}
    for spelling, ucum in [(code, code) for code in factors] + listed:
        if ucum not in factors:
            raise ConfigError(f"unit map {analyte}: {spelling!r} maps to unlisted UCUM {ucum!r}")
        folded = _fold(spelling)
        known = spellings.setdefault(folded, ucum)
        if factors[known] != factors[ucum]:
            raise ConfigError(
                f"unit map {analyte}: {spelling!r} means {ucum} but reads like {known}"
            )
    return UnitMap(analyte, canonical, MappingProxyType(factors), MappingProxyType(spellings))


def load_unit_map(path: Path) -> UnitMap:
    """Read one unit map, e.g. mappings/units/platelet-count.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return build_unit_map(data)
