"""Whether a resource's elements have the JSON types and ranges FHIR R4 gives them, as far as
the rules and the engine read them: one wrong value costs its resource, reported by element.

Checked: no JSON null (FHIR JSON has none); dates and date-times that are real calendar dates
between the years 0001 and 9999 (also what CQL's Date holds); Quantities whose value is a
number CQL's Decimal holds, with text units and codes; Codings of text; integers CQL's
Integer holds; and the elements the rules walk (coding, component, ingredient, ...) as lists of
objects. The element is named, never its value.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from fhir_match.records import Json

__all__ = ["element_problem", "shape_problem"]

_LISTS_OF_OBJECTS = frozenset(
    {
        "coding",
        "component",
        "contained",
        "ingredient",
        "reaction",
        "category",
        "interpretation",
        "referenceRange",
        "extension",
        "bodySite",
        "reasonCode",
        "note",
    }
)
"""Elements of the record types that FHIR R4 makes repeating, of a complex type."""
_LISTS_OF_OBJECTS_EXCEPT = {"category": "AllergyIntolerance"}
"""AllergyIntolerance.category is a list of codes (text)."""
_QUANTITIES = frozenset(
    {
        "valueQuantity",
        "low",
        "high",
        "numerator",
        "denominator",
        "doseQuantity",
        "rateQuantity",
        "quantity",
        "valueAge",
        "onsetAge",
        "performedAge",
        "abatementAge",
    }
)
_R5_ONLY = {
    "MedicationRequest": ("medication",),
    "MedicationStatement": ("medication", "adherence"),
    "MedicationAdministration": ("medication", "occurenceDateTime", "occurencePeriod"),
    "Procedure": ("occurrenceDateTime", "occurrencePeriod", "occurrenceString", "occurrenceAge"),
}
"""Elements R5 gave the record types in place of R4's: read as R4, the resource would seem to
have no drug or no date, so it is reported instead of misread."""
_R5_ONLY_WHY = {
    "medication": "R4 names the drug in medication[x]",
    "adherence": "R4 has no adherence",
    "occurenceDateTime": "R4 dates it by effective[x]",
    "occurencePeriod": "R4 dates it by effective[x]",
    "occurrenceDateTime": "R4 dates it by performed[x]",
    "occurrencePeriod": "R4 dates it by performed[x]",
    "occurrenceString": "R4 dates it by performed[x]",
    "occurrenceAge": "R4 dates it by performed[x]",
}
_COMPARATORS = frozenset({"<", "<=", ">=", ">"})
_TEXT_IN_CODINGS = ("system", "code", "display", "version", "unit")
_DATE_NAMES = frozenset({"start", "end", "issued", "authoredOn", "recorded", "lastOccurrence"})
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?)?)?")
_ZONE = re.compile(r"(?:Z|[+-](?:0\d|1[0-4]):[0-5]\d)$")
_DECIMAL_LIMIT = 10**20
"""CQL's Decimal holds 28 digits, 8 of them after the point."""
_INTEGER_LIMIT = 2**31
"""CQL's Integer is 32 bits."""


def shape_problem(resource: Json) -> str:
    """The first element of ``resource`` whose JSON type or range the rules cannot read, and
    what is wrong with it; "" when there is none. Walked with a stack, not recursion."""
    kind = resource["resourceType"]
    for element in _R5_ONLY.get(kind, ()):
        if element in resource:
            return f"{kind}.{element}: an R5 element (this is FHIR R4): {_R5_ONLY_WHY[element]}"
    if "text" in resource and not isinstance(resource["text"], dict):
        return f"{kind}.text: not a Narrative (an object)"
    return _walk(kind, kind, resource, "")


def element_problem(resource: Json, element: str) -> str:
    """What is wrong with one element of ``resource`` (see shape_problem), or ""."""
    kind = resource["resourceType"]
    if element not in resource:
        return ""
    return _walk(kind, f"{kind}.{element}", resource[element], element)


_Node = tuple[Any, "str | int", "_Node | None"]
"""A container on the walk: its value, its name (an index in a list), and its parent."""


def _walk(kind: str, path: str, value: Any, key: str) -> str:
    """The first element from ``value`` down with a problem, named by its path. Only elements
    with a rule are checked and only containers are stacked, and a path is spelled out only
    for the element reported: this walk visits every element of most records."""
    problem = _element_problem(kind, key, value) if value is None or _checked(key) else ""
    if problem:
        return f"{path}: {problem}"
    stack: list[_Node] = [(value, key, None)]
    while stack:
        node = stack.pop()
        container = node[0]
        if isinstance(container, dict):
            for name, item in container.items():
                if item is None or (_checked(name) and not _plain_text(name, item)):
                    problem = _element_problem(kind, name, item)
                    if problem:
                        return f"{_path(path, node)}.{name}: {problem}"
                if isinstance(item, dict | list):
                    stack.append((item, name, node))
        elif isinstance(container, list):
            for index, item in enumerate(container):
                if item is None:
                    return f"{_path(path, node)}[{index}]: null (FHIR JSON has no nulls)"
                if isinstance(item, dict | list):
                    stack.append((item, index, node))
    return ""


def _path(root: str, node: _Node) -> str:
    names: list[str] = []
    current: _Node | None = node
    while current is not None and current[2] is not None:
        name = current[1]
        names.append(f"[{name}]" if isinstance(name, int) else f".{name}")
        current = current[2]
    return root + "".join(reversed(names))


_TEXT_OR_OBJECT = frozenset({"text", "code", "clinicalStatus", "verificationStatus"})
"""A code or a concept by element name; the statuses also as bare text, as STU3 wrote them."""
_TEXT = frozenset({"system", "display", "version", "unit", "text", "status", "reference"})
_CHECKED_NAMES = frozenset(
    {
        *_LISTS_OF_OBJECTS,
        *_QUANTITIES,
        *_TEXT,
        *_TEXT_OR_OBJECT,
        "valueInteger",
        "valueDecimal",
        "value",
    }
)
_checked_names: dict[str, bool] = {}


def _checked(key: str) -> bool:
    """Whether an element of this name has a rule (remembered: records use few names)."""
    known = _checked_names.get(key)
    if known is None:
        known = _checked_names[key] = key in _CHECKED_NAMES or _is_date_element(key)
    return known


_TEXT_ANYWAY = frozenset({*_TEXT, *_TEXT_OR_OBJECT, "value"})
"""Names whose element is always right when it is text (most elements the walk checks)."""


def _plain_text(name: str, item: Any) -> bool:
    return isinstance(item, str) and name in _TEXT_ANYWAY


def _element_problem(kind: str, key: str, value: Any) -> str:
    if value is None:
        return "null (FHIR JSON has no nulls)"
    if key in _LISTS_OF_OBJECTS and _LISTS_OF_OBJECTS_EXCEPT.get(key) != kind:
        if not isinstance(value, list):
            return "not a list"
        return "" if all(isinstance(item, dict) for item in value) else "not a list of objects"
    if key in _QUANTITIES:
        return _quantity_problem(value)
    if key in _TEXT and not isinstance(value, str) and key != "text":
        return "not text"
    if key in _TEXT_OR_OBJECT and not isinstance(value, str | dict):
        return "neither text nor an object"
    if _is_date_element(key):
        return _date_problem(value)
    if key == "valueInteger" and not (_is_number(value) and isinstance(value, int)):
        return "not an integer"
    if key == "valueInteger" and abs(value) >= _INTEGER_LIMIT:
        return "an integer beyond what CQL's Integer holds"
    if key in ("value", "valueDecimal") and isinstance(value, bool):
        return "true or false where a value is expected"
    if key in ("value", "valueDecimal") and _is_number(value) and not _in_decimal_range(value):
        return "a number beyond what CQL's Decimal holds"
    return ""


def _quantity_problem(quantity: Any) -> str:
    if not isinstance(quantity, dict):
        return "not a Quantity (an object)"
    value = quantity.get("value")
    if "value" in quantity and not _is_number(value):
        return "value is not a number"
    if isinstance(value, int | float) and not _in_decimal_range(value):
        return "value is beyond what CQL's Decimal holds"
    for field in _TEXT_IN_CODINGS:
        if field in quantity and not isinstance(quantity[field], str):
            return f"{field} is not text"
    if "comparator" in quantity and quantity["comparator"] not in _COMPARATORS:
        return "comparator is not one of <, <=, >=, >"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_decimal_range(value: float) -> bool:
    """Within CQL's Decimal (NaN and infinities, which a server's JSON may hold, are not)."""
    return -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT


def _is_date_element(key: str) -> bool:
    return key in _DATE_NAMES or key.endswith(("Date", "DateTime", "Instant"))


def _date_problem(value: Any) -> str:
    """A FHIR date, dateTime or instant: a real calendar date in the years 0001-9999, and a time
    only with a time zone."""
    if not isinstance(value, str):
        return "not a date (text)"
    match = _DATE.match(value)
    rest = value[match.end() :] if match else value
    if match is None or (rest and not (match.group(4) and _ZONE.fullmatch(rest))):
        return "not a FHIR date or date-time"
    year, month, day, hour, minute, second = match.groups()
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return "not a calendar date in the years 0001-9999"
    if hour and not (int(hour) < 24 and int(minute) < 60 and int(second or 0) < 60):
        return "not a time of day"
    return ""
