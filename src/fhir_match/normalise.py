"""2 NORMALISE (pure): make one patient's record uniform before the rules read it.

Real records say the same thing many ways. Here, so that the CQL can say it once:
- a medication named through a Medication resource (referenced or contained), by its
  ingredients, or only by name becomes one ``medicationCodeableConcept`` holding every code,
  plus a drug-name coding for each English or Chinese drug name in its text or displays
  (the same for an AllergyIntolerance's substance, in its code and reactions);
- a result the rules read that is recorded as a component of a panel Observation (a CBC with
  the platelet count inside) becomes an Observation of its own, with the panel's id, status
  and dates;
- a platelet count in any convertible unit is rewritten in 10*9/L, also when written as text
  ("<10", "85 K/uL"); one that cannot be converted is left with its unit (or "(no unit)"),
  so the rules report it, and recorded as a DataIssue; another result the rules read that is
  written as a number with a unit ("35%", "<5 mIU/mL") becomes a Quantity;
- a code system named another way (``urn:oid:2.16.840.1.113883.6.90``, https, a SNOMED
  edition URI) is renamed to the URI the value sets use, and a code padded with spaces is
  trimmed;
- a status or gender written in capitals ("Resolved", "Male"), or a clinical or verification
  status given only as text, becomes the FHIR code the rules compare;
- the hierarchical codes (ICD-10, ATC, ICD-10-PCS) of the record are collected, so the
  engine's value sets can be extended by the subcodes the record actually uses;
- resources no rule can read are left out: an Observation, Condition or medication use
  whose codes are in none of the study's value sets (a routine haemoglobin, an encounter).
  The rules read these types only through value sets, so the results do not change, and
  the engine, whose cost grows with every resource it wraps, does far less work.
Resources that are changed are copied; the input is not modified.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from fhir_match.records import DataIssue, Json, PatientRecord
from fhir_match.shapes import element_problem, shape_problem
from fhir_match.terminology import (
    DRUG_NAME,
    HIERARCHICAL_SYSTEMS,
    ICD10,
    ICD10CM,
    SNOMED,
    Coding,
    Terminology,
    canonical_system,
)
from fhir_match.units import UCUM, UnitMap, UnitProblem, normalise_quantity

__all__ = ["Normalised", "Normaliser", "drug_concept", "medication_concept", "normalise"]

_MEDICATION_USES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
_CODE_ELEMENT = {
    "Observation": "code",
    "Condition": "code",
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
}
"""Types the rules read only through a value set on this element."""
_DIAGNOSIS_SYSTEMS = frozenset({SNOMED, ICD10, ICD10CM})
_READ_WHOLE = frozenset(
    {
        "Patient",
        "ResearchSubject",
        "ResearchStudy",
        "Procedure",
        "AllergyIntolerance",
        "DiagnosticReport",
    }
)
"""Types the rules read by more than a value set (text, status, identifiers): always kept."""


@dataclass(frozen=True)
class Normaliser:
    """What normalising needs: the terminology, and the platelet count's value set and units."""

    terminology: Terminology
    platelet_value_set: str
    platelet_units: UnitMap
    study_value_sets: frozenset[str]
    """The value sets the study's rules use: a resource coded outside all of them is unread."""


@dataclass(frozen=True)
class Normalised:
    patient: str
    bundle: Json
    """A collection Bundle of the patient's normalised resources, for the engine."""
    hierarchical_codings: frozenset[Coding]
    issues: tuple[DataIssue, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """References made here that stand for a resource of the record: evidence names that one."""
    skipped: tuple[DataIssue, ...] = ()
    """Resources left out because an element has a type or range the rules cannot read."""


def normalise(record: PatientRecord, normaliser: Normaliser) -> Normalised:
    skipped: list[DataIssue] = []
    cleaned = (_with_clean_codings(r) for r in record.resources)
    originals = _well_formed(record, [r for r in cleaned if _may_be_read(r, normaliser)], skipped)
    issues: list[DataIssue] = []
    shared = {
        f"{r['resourceType']}/{r['id']}": r
        for r in originals
        if r["resourceType"] in ("Medication", "Substance") and "id" in r
    }
    resources: list[Json] = []
    aliases: dict[str, str] = {}
    for original in originals:
        resource = _statuses_folded(original)
        kind = resource["resourceType"]
        if kind in _MEDICATION_USES:
            resource = _with_drug_concept(resource, shared, normaliser.terminology)
        elif kind == "AllergyIntolerance":
            resource = _allergy_named(resource, normaliser.terminology)
        elif kind == "Observation" and not _readable(resource, normaliser):
            where = record.where(f"Observation/{resource.get('id', '?')}")
            parts = [
                _with_value_read(part, normaliser, issues, where)
                for part in _readable_components(resource, normaliser)
            ]
            resources.extend(_told_apart(parts, aliases))
            continue
        elif kind == "Observation":
            where = record.where(f"Observation/{resource.get('id', '?')}")
            resource = _with_value_read(resource, normaliser, issues, where)
        if _readable(resource, normaliser):
            resources.append(resource)
    codings = frozenset().union(*(_hierarchical_codings(r) for r in resources if _may_nest(r)))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    return Normalised(record.patient, bundle, codings, tuple(issues), aliases, tuple(skipped))


def _may_be_read(resource: Json, normaliser: Normaliser) -> bool:
    """Whether a rule may read the resource or a part of it. Most of a record is results and
    diagnoses coded outside the study's value sets: they are left out before anything else
    looks at them (the shapes of their other elements do not matter). One whose code cannot
    be read at all is kept, to be reported."""
    kind = resource["resourceType"]
    if kind not in ("Observation", "Condition") or _readable(resource, normaliser):
        return True
    if element_problem(resource, "code"):
        return True
    return kind == "Observation" and bool(_readable_components(resource, normaliser))


def _well_formed(
    record: PatientRecord, resources: list[Json], skipped: list[DataIssue]
) -> list[Json]:
    """The resources whose elements the rules can read (see shapes.py); each other one is
    reported by where it was read and left out, a Patient kept as its bare id, so that the
    rest of the record is still evaluated (with its demographics missing)."""
    kept: list[Json] = []
    for resource in resources:
        problem = shape_problem(resource)
        if not problem:
            kept.append(resource)
            continue
        reference = f"{resource['resourceType']}/{resource.get('id', '?')}"
        skipped.append(DataIssue(record.where(reference), f"not used: {problem}"))
        if resource["resourceType"] == "Patient":
            kept.append({"resourceType": "Patient", "id": resource["id"]})
    return kept


_SYSTEM = re.compile(rb'"system":"([^"\\]*)"')
_PADDED_CODE = re.compile(rb'"code":"(?:\s|[^"\\]*\s")')
"""A code with spaces around it, as fixed-width exports pad them ("32273002  ")."""


def _with_clean_codings(resource: Json) -> Json:
    """The resource with every coding's (and quantity's) system as the value sets name it and
    its code without surrounding spaces: value sets compare both exactly. Found in its JSON
    text first, as nearly every resource needs no change."""
    text = orjson.dumps(resource)
    found = {s.decode() for s in _SYSTEM.findall(text)}
    if all(canonical_system(system) == system for system in found) and not _PADDED_CODE.search(
        text
    ):
        return resource
    cleaned: Json = _cleaned(resource)
    return cleaned


def _cleaned(value: Any) -> Any:
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _cleaned(item) for key, item in value.items()}
    system, code = value.get("system"), value.get("code")
    if isinstance(system, str) and isinstance(code, str):  # a Coding or a Quantity
        result["system"] = canonical_system(system)
        result["code"] = code.strip()
    return result


_STATUS_CODES = {
    "clinicalStatus": frozenset(
        {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
    ),
    "verificationStatus": frozenset(
        {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
    ),
}
"""The codes of Condition's and AllergyIntolerance's status concepts (allergies use a subset)."""


def _fold_status(text: str) -> str:
    return "-".join(text.replace("_", " ").split()).lower()


def _statuses_folded(resource: Json) -> Json:
    """The resource with its status (and gender) codes in lower case ("Cancelled", "Resolved",
    "Male" are sent by some interfaces) and a clinical or verification status that is only
    text ("Resolved") or a bare code (STU3's "resolved") coded; the rules compare the codes
    alone."""
    result = resource
    for field in ("status", "gender"):  # a Patient's gender is a code the rules compare too
        value = resource.get(field)
        if isinstance(value, str) and value != _fold_status(value):
            result = {**result, field: _fold_status(value)}
    if resource["resourceType"] not in ("Condition", "AllergyIntolerance"):
        return result
    for element, codes in _STATUS_CODES.items():
        concept = resource.get(element)
        if isinstance(concept, str):  # a bare code, as FHIR STU3 wrote these statuses
            concept = {"text": concept}
            result = {**result, element: concept}
        if not isinstance(concept, dict):
            continue
        codings = _codings(concept)
        if codings:
            folded = [
                {**c, "code": _fold_status(c["code"])}
                if isinstance(c.get("code"), str) and c["code"] != _fold_status(c["code"])
                else c
                for c in codings
            ]
            if folded != codings:
                result = {**result, element: {**concept, "coding": folded}}
        elif isinstance(concept.get("text"), str) and _fold_status(concept["text"]) in codes:
            coding = {"code": _fold_status(concept["text"])}
            result = {**result, element: {**concept, "coding": [coding]}}
    return result


def _readable(resource: Json, normaliser: Normaliser) -> bool:
    """Whether any rule of the study can read this resource."""
    kind: str = resource["resourceType"]
    if kind in _READ_WHOLE:
        return True
    element = _CODE_ELEMENT.get(kind)
    if element is None:
        return False
    codings = [
        (c["system"], c["code"])
        for c in _codings(resource.get(element))
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]
    terminology = normaliser.terminology
    if any(normaliser.study_value_sets & terminology.value_sets_of(*c) for c in codings):
        return True
    # A Condition with no diagnosis code (uncoded, or only a hospital's local code) may still
    # name its disease in text: inc-2 reads ITP that way.
    return kind == "Condition" and not any(system in _DIAGNOSIS_SYSTEMS for system, _ in codings)


_RESULT_ELEMENTS = frozenset(
    {
        *(f"value{kind}" for kind in ("Quantity", "CodeableConcept", "String", "Boolean")),
        *(f"value{kind}" for kind in ("Integer", "Range", "Ratio", "SampledData", "Time")),
        *(f"value{kind}" for kind in ("DateTime", "Period")),
        "dataAbsentReason",
        "interpretation",
        "referenceRange",
    }
)
"""What an Observation and each of its components have of their own: a component's result
replaces the panel's."""


def _readable_components(panel: Json, normaliser: Normaliser) -> list[Json]:
    """An unreadable Observation's components that a rule reads, each as an Observation."""
    components = panel.get("component")
    if not isinstance(components, list):
        return []
    shell = {k: v for k, v in panel.items() if k not in _RESULT_ELEMENTS and k != "component"}
    parts = []
    for component in components:
        if not isinstance(component, dict):
            continue
        result = {k: v for k, v in component.items() if k in _RESULT_ELEMENTS}
        part = {**shell, "code": component.get("code"), **result}
        if _readable(part, normaliser):
            parts.append(part)
    return parts


def _told_apart(parts: list[Json], aliases: dict[str, str]) -> list[Json]:
    """The components of one panel, under ids of their own when there are several: the engine
    takes two resources with one type and id for the same resource, and would drop all but
    one of them. Each new id is recorded as an alias of the panel, which evidence names."""
    if len(parts) < 2 or not isinstance(parts[0].get("id"), str):
        return parts
    panel = parts[0]["id"]
    named = []
    for number, part in enumerate(parts, 1):
        part_id = f"{panel}.component-{number}"
        aliases[f"Observation/{part_id}"] = f"Observation/{panel}"
        named.append({**part, "id": part_id})
    return named


def _codings(concept: Any) -> list[Json]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _with_drug_concept(use: Json, shared: dict[str, Json], terminology: Terminology) -> Json:
    """The use with one ``medicationCodeableConcept`` that names the drug every way it can."""
    concept = use.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        concept = _referenced_concept(use.get("medicationReference"), use, shared)
    result = {k: v for k, v in use.items() if k != "medicationReference"}
    result["medicationCodeableConcept"] = _named(concept, terminology)
    return result


def drug_concept(use: Json, medications: Mapping[str, Json], terminology: Terminology) -> Json:
    """The concept a medication use names its drug by, as the rules read it (its own, or its
    contained or referenced Medication's, plus drug-name codings): finding a cohort in files
    must judge a drug exactly as the rules will."""
    concept: Json = _with_drug_concept(use, dict(medications), terminology)[
        "medicationCodeableConcept"
    ]
    return concept


def medication_concept(
    medication: Json, medications: Mapping[str, Json], terminology: Terminology
) -> Json:
    """A Medication's code and ingredients as one concept, drug-name codings added."""
    return _named(_medication_concept(medication, dict(medications)), terminology)


_LOCAL_REFERENCE = re.compile(r"([A-Z][A-Za-z]+/[A-Za-z0-9.\-]+)(?:/_history/[A-Za-z0-9.\-]+)?")


def _resolved(reference: Any, holder: Json, shared: dict[str, Json]) -> Json | None:
    """The Medication (or Substance) a reference points to: contained in ``holder``, or in the
    record, also when the reference is absolute or versioned (https://ehr/fhir/Medication/1,
    Medication/1/_history/2)."""
    target = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(target, str):
        return None
    if target.startswith("#"):
        return _contained(holder, target[1:])
    local = _LOCAL_REFERENCE.search(target)
    return shared.get(target) or (shared.get(local.group(1)) if local else None)


def _referenced_concept(reference: Any, holder: Json, shared: dict[str, Json]) -> Json:
    """A concept for a reference: the referenced resource's code and ingredients, and the
    reference's display (which often names the drug when the code is a local one)."""
    target = _resolved(reference, holder, shared)
    concept = _medication_concept(target, shared) if target is not None else {}
    display = reference.get("display") if isinstance(reference, dict) else None
    if isinstance(display, str):
        text = concept.get("text")
        concept = {**concept, "text": f"{text} / {display}" if text else display}
    return concept


def _contained(resource: Json, local_id: str) -> Json | None:
    contained = resource.get("contained")
    for inner in contained if isinstance(contained, list) else []:
        if isinstance(inner, dict) and inner.get("id") == local_id:
            return inner
    return None


def _medication_concept(medication: Json, shared: dict[str, Json]) -> Json:
    """A Medication's code and its ingredients' codes (inline, or a referenced Medication's or
    Substance's), as one concept."""
    code: Json = medication["code"] if isinstance(medication.get("code"), dict) else {}
    codings = list(_codings(code))
    texts: list[str] = [code["text"]] if isinstance(code.get("text"), str) else []
    ingredients = medication.get("ingredient")
    for ingredient in ingredients if isinstance(ingredients, list) else []:
        if not isinstance(ingredient, dict):
            continue
        item = ingredient.get("itemCodeableConcept")
        if "itemReference" in ingredient:
            item = _ingredient_concept(ingredient["itemReference"], medication, shared)
        codings.extend(_codings(item))
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            texts.append(item["text"])
    concept: Json = {"coding": codings}
    if texts:
        concept["text"] = " / ".join(texts)
    return concept


def _ingredient_concept(reference: Any, medication: Json, shared: dict[str, Json]) -> Json:
    """An ingredient given by reference: its target's own code (not its ingredients again, so a
    cycle of references ends), and the reference's display."""
    target = _resolved(reference, medication, shared)
    code = target.get("code") if target is not None else None
    concept: Json = dict(code) if isinstance(code, dict) else {}
    display = reference.get("display") if isinstance(reference, dict) else None
    if isinstance(display, str):
        concept["text"] = f"{concept['text']} / {display}" if concept.get("text") else display
    return concept


def _named(concept: Json, terminology: Terminology) -> Json:
    """The concept plus a drug-name coding for every drug its text or displays name."""
    codings = _codings(concept)
    texts = [concept.get("text")] + [c.get("display") for c in codings]
    names: set[str] = set()
    for text in texts:
        if isinstance(text, str) and text:
            names |= terminology.drug_names_in(text)
    names -= {str(c.get("code")) for c in codings if c.get("system") == DRUG_NAME}
    if not names:
        return concept
    added = [{"system": DRUG_NAME, "code": name} for name in sorted(names)]
    return {**concept, "coding": [*codings, *added]}


def _allergy_named(allergy: Json, terminology: Terminology) -> Json:
    """The allergy with drug-name codings in its code and in each reaction's substance (records
    often code the allergy generically, "drug allergy", and name the drug in reaction.substance)."""
    result = dict(allergy)
    if isinstance(allergy.get("code"), dict):
        result["code"] = _named(allergy["code"], terminology)
    reactions = allergy.get("reaction")
    if isinstance(reactions, list):
        result["reaction"] = [
            {**r, "substance": _named(r["substance"], terminology)}
            if isinstance(r, dict) and isinstance(r.get("substance"), dict)
            else r
            for r in reactions
        ]
    return result


def _is_platelet_count(observation: Json, normaliser: Normaliser) -> bool:
    return any(
        isinstance(c.get("system"), str)
        and isinstance(c.get("code"), str)
        and normaliser.platelet_value_set
        in normaliser.terminology.value_sets_of(c["system"], c["code"])
        for c in _codings(observation.get("code"))
    )


_COUNT_TEXT = re.compile(r"\s*(<=|>=|<|>|≤|≥)?\s*(\d+(?:\.\d+)?)\s*(.*?)\s*")
_COMPARATORS = {"≤": "<=", "≥": ">="}
_LONGEST_RESULT_TEXT = 64
"""A result written as text longer than this is not a number with a unit: left as text."""
_LONGEST_NUMBER = 19
"""Digits (and point) of a number read from text: CQL's Decimal holds 20 before the point."""
_DECIMAL_LIMIT = 10**20


def _quantity_from_text(text: str) -> Json | None:
    """A count written as text ("<10", "85 K/uL", "85") as a Quantity; None if it is no number."""
    match = _COUNT_TEXT.fullmatch(text) if len(text) <= _LONGEST_RESULT_TEXT else None
    if match is None:
        return None
    comparator, number, unit = match.groups()
    if len(number) > _LONGEST_NUMBER:
        return None
    quantity: Json = {"value": _json_number(Decimal(number))}
    if comparator:
        quantity["comparator"] = _COMPARATORS.get(comparator, comparator)
    if unit:
        quantity["unit"] = unit
    return quantity


def _with_value_read(
    observation: Json, normaliser: Normaliser, issues: list[DataIssue], where: str
) -> Json:
    """A platelet count in the canonical unit; another result written as text that is a number
    with a plain unit ("35%", "<5 mIU/mL", "2") as a Quantity, so the rules read it like one.
    Text with digits beyond the number ("55-60%", "II-III") stays text."""
    if _is_platelet_count(observation, normaliser):
        return _platelets_in_canonical_unit(observation, normaliser.platelet_units, issues, where)
    text = observation.get("valueString")
    if not isinstance(text, str) or not _readable(observation, normaliser):
        return observation
    quantity = _quantity_from_text(text)
    if quantity is None or any(c.isdigit() for c in quantity.get("unit", "")):
        return observation
    result = {k: v for k, v in observation.items() if k != "valueString"}
    result["valueQuantity"] = quantity
    return result


def _platelets_in_canonical_unit(
    observation: Json, units: UnitMap, issues: list[DataIssue], where: str
) -> Json:
    text = observation.get("valueString")
    if isinstance(text, str):
        parsed = _quantity_from_text(text)
        if parsed is None:
            issues.append(DataIssue(where, "platelet count not used: its text is not a number"))
            return observation
        observation = {k: v for k, v in observation.items() if k != "valueString"}
        observation["valueQuantity"] = parsed
    number = observation.get("valueInteger")
    if isinstance(number, int):  # a count without a unit: reported like a unit-less quantity
        observation = {k: v for k, v in observation.items() if k != "valueInteger"}
        observation["valueQuantity"] = {"value": number}
    quantity = observation.get("valueQuantity")
    if not isinstance(quantity, dict):
        return observation
    value = quantity.get("value")
    converted = normalise_quantity(
        units,
        value if isinstance(value, int | float) and not isinstance(value, bool) else None,
        quantity.get("unit"),
        quantity.get("code"),
        quantity.get("system"),
    )
    if isinstance(converted, UnitProblem):
        issues.append(DataIssue(where, f"platelet count not used: {converted}"))
        if converted.kind == "missing-unit":
            # Keep it visible to the rules as unconvertible rather than unit-less.
            return {**observation, "valueQuantity": {**quantity, "unit": "(no unit)"}}
        return observation
    if abs(converted) >= _DECIMAL_LIMIT:
        issues.append(DataIssue(where, "platelet count not used: beyond what CQL's Decimal holds"))
        return observation
    canonical = {
        "value": _json_number(converted),
        "unit": units.canonical,
        "system": UCUM,
        "code": units.canonical,
    }
    if quantity.get("comparator"):  # "<10" stays a bound: the rules decide what it proves
        canonical["comparator"] = quantity["comparator"]
    return {**observation, "valueQuantity": canonical}


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_HIERARCHICAL_MARKS = tuple(orjson.dumps(system) for system in HIERARCHICAL_SYSTEMS)


def _may_nest(resource: Json) -> bool:
    """Whether the resource may hold a code of a hierarchical system: a "system" equal to one is
    that quoted string in its JSON. Most resources (LOINC-coded results) hold none, and
    serialising one is far cheaper than walking it."""
    text = orjson.dumps(resource)
    return any(mark in text for mark in _HIERARCHICAL_MARKS)


def _hierarchical_codings(value: Any) -> set[Coding]:
    """Every (system, code) of a hierarchical system anywhere in ``value``: walked with a stack,
    not recursion, as this visits every element of every resource of the population."""
    found: set[Coding] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            system = item.get("system")
            if system in HIERARCHICAL_SYSTEMS and isinstance(item.get("code"), str):
                found.add((system, item["code"]))
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        else:
            stack.extend(v for v in item if isinstance(v, dict | list))
    return found
