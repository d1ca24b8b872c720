"""Evidence resources as a coordinator reads them: what, when, which value, which codes.

Pure: a resource (and the Medications it may point to) in, a few display strings out.
Anything unexpected is shown as it is rather than hidden: the reviewer checks the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from fhir_match.normalise import Normaliser
from fhir_match.records import Json
from fhir_match.review.times import shown_time
from fhir_match.units import UnitProblem, normalise_quantity

__all__ = ["Evidence", "EvidenceGroup", "coding_text", "describe", "grouped", "missing"]

SYSTEMS = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
    "http://www.cms.gov/Medicare/Coding/ICD10": "ICD-10-PCS",
    "http://unitsofmeasure.org": "UCUM",
}

_DATES = (
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "performedDateTime",
    "performedPeriod",
    "onsetDateTime",
    "onsetPeriod",
    "authoredOn",
    "dateAsserted",
    "recordedDate",
    "occurrenceDateTime",
    "issued",
    "birthDate",
)
"""Where a resource's date is, in the order the rules read them (Records.cql: an
Observation's effective dateTime, period start, instant, then issued)."""

UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class Evidence:
    reference: str
    kind: str
    """The resource type, in words."""
    what: str
    when: str
    value: str
    codes: tuple[str, ...]
    """Each coding as "display (System code)"."""
    status: str


def coding_text(coding: Json) -> str:
    system = SYSTEMS.get(str(coding.get("system")), str(coding.get("system") or "no system"))
    code = coding.get("code") or ""
    display = coding.get("display")
    return f"{display} ({system} {code})" if display else f"{system} {code}"


def _concept(concept: Json | None) -> tuple[str, tuple[str, ...]]:
    concept = concept or {}
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    name = concept.get("text") or next((c.get("display") for c in codings if c.get("display")), "")
    return str(name or ""), tuple(coding_text(c) for c in codings)


def _when(resource: Json, zone: ZoneInfo) -> str:
    for key in _DATES:
        value = resource.get(key)
        if isinstance(value, dict):
            start = shown_time(str(value.get("start") or ""), zone)
            end = shown_time(str(value.get("end") or ""), zone)
            return f"{start} to {end}" if start and end and start != end else start or end
        if value:
            return shown_time(str(value), zone)
    return ""


def _quantity(quantity: Json) -> str:
    comparator = quantity.get("comparator", "")
    unit = quantity.get("unit") or quantity.get("code") or ""
    return f"{comparator}{quantity.get('value', '')} {unit}".strip()


def _shown_unit(ucum: str) -> str:
    """A UCUM power of ten as the summaries write it: 10*9/L as x10^9/L."""
    return ucum.replace("10*", "x10^")


def _canonical(resource: Json, normaliser: Normaliser | None) -> str:
    """A platelet count in the study's canonical unit, as the rules read it; empty when the
    resource is no platelet count or its unit does not convert (the record's value stands)."""
    quantity = resource.get("valueQuantity")
    if normaliser is None or not isinstance(quantity, dict):
        return ""
    codings = [c for c in (resource.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
    if not any(
        isinstance(c.get("system"), str)
        and isinstance(c.get("code"), str)
        and normaliser.platelet_value_set
        in normaliser.terminology.value_sets_of(c["system"], c["code"])
        for c in codings
    ):
        return ""
    value = quantity.get("value")
    converted = normalise_quantity(
        normaliser.platelet_units,
        value if isinstance(value, int | float) and not isinstance(value, bool) else None,
        quantity.get("unit"),
        quantity.get("code"),
        quantity.get("system"),
    )
    if isinstance(converted, UnitProblem):
        return ""
    number = format(converted.normalize(), "f")
    unit = _shown_unit(normaliser.platelet_units.canonical)
    return f"{quantity.get('comparator', '')}{number} {unit}"


def _value(resource: Json, normaliser: Normaliser | None) -> str:
    """The value; a measure the study reads in a canonical unit shown in it first, with the
    record's own value and unit beside it when they differ."""
    if isinstance(resource.get("valueQuantity"), dict):
        recorded = _quantity(resource["valueQuantity"])
        canonical = _canonical(resource, normaliser)
        if not canonical:
            return recorded
        if canonical == _shown_unit(recorded):
            return canonical
        return f"{canonical} (recorded as {recorded})"
    if isinstance(resource.get("valueCodeableConcept"), dict):
        return _concept(resource["valueCodeableConcept"])[0]
    for key in ("valueString", "valueInteger", "valueBoolean", "conclusion"):
        if key in resource:
            return str(resource[key])
    dose = (
        (resource.get("dosage") or {})
        if resource.get("resourceType") == "MedicationAdministration"
        else {}
    )
    if isinstance(dose.get("dose"), dict):
        return _quantity(dose["dose"])
    return ""


def _status(resource: Json) -> str:
    parts = []
    for key in ("clinicalStatus", "verificationStatus"):
        concept: Json = resource.get(key) or {}
        codings: list[Json] = concept.get("coding") or [{}]
        shown = codings[0].get("code") or _concept(concept)[0]
        if shown:
            parts.append(str(shown))
    if resource.get("status"):
        parts.append(str(resource["status"]))
    return ", ".join(parts)


def _medication(resource: Json, medications: Mapping[str, Json]) -> tuple[str, tuple[str, ...]]:
    if isinstance(resource.get("medicationCodeableConcept"), dict):
        return _concept(resource["medicationCodeableConcept"])
    reference = (resource.get("medicationReference") or {}).get("reference", "")
    medication = medications.get(str(reference))
    if medication is None:
        display = (resource.get("medicationReference") or {}).get("display")
        return str(display or reference), ()
    name, codes = _concept(medication.get("code"))
    ingredients = [
        _concept(i.get("itemCodeableConcept"))[0] for i in medication.get("ingredient") or []
    ]
    if not name:
        name = " + ".join(i for i in ingredients if i)
    return name, codes


def describe(
    resource: Json,
    medications: Mapping[str, Json],
    zone: ZoneInfo = UTC,
    normaliser: Normaliser | None = None,
) -> Evidence:
    """One evidence resource in a reviewer's words, its times in the site's ``zone``, its
    measures in the study's units (``normaliser``: the study's, as discovery uses it)."""
    kind = str(resource.get("resourceType"))
    reference = f"{kind}/{resource.get('id')}"
    if kind.startswith("Medication") and kind != "Medication":
        what, codes = _medication(resource, medications)
    elif kind == "Patient":
        born, gender = resource.get("birthDate", "unknown"), resource.get("gender", "unknown")
        what = f"born {born}, gender {gender}"
        codes = ()
    else:
        what, codes = _concept(resource.get("code"))
    words = {
        "MedicationRequest": "Medication order",
        "MedicationStatement": "Medication statement",
        "MedicationAdministration": "Medication given",
        "AllergyIntolerance": "Allergy or intolerance",
        "DiagnosticReport": "Report",
    }
    return Evidence(
        reference=reference,
        kind=words.get(kind, kind),
        what=what or "(not named in the record)",
        when=_when(resource, zone),
        value=_value(resource, normaliser),
        codes=codes,
        status=_status(resource) if kind != "Patient" else "",
    )


def missing(reference: str, allowed: bool) -> Evidence:
    """A cited resource the app cannot show: deleted since the run, not in the grant, or
    on another server than the EHR (the app reads evidence from the EHR only)."""
    kind = reference.split("/", 1)[0]
    if "://" in reference:
        why = "not on the EHR's FHIR server: not read"
    elif allowed:
        why = "no longer on the FHIR server"
    else:
        why = "your access does not include it"
    return Evidence(reference, kind, f"({why})", "", "", (), "")


@dataclass(frozen=True)
class EvidenceGroup:
    """Evidence that reads the same but for its date (thirty orders of one drug): one line
    with the count and the first and last date, the references kept for checking."""

    first: Evidence
    whens: tuple[str, ...]
    references: tuple[str, ...]

    @property
    def span(self) -> str:
        dated = sorted(w for w in self.whens if w)
        if len(self.references) == 1 or not dated:
            return self.first.when
        return f"{len(self.references)} times, {dated[0][:10]} to {dated[-1][:10]}"


def grouped(evidence: list[Evidence]) -> list[EvidenceGroup]:
    """Evidence lines merged when kind, what, value, status and codes agree; in first-seen
    order. Values keep lines apart: two platelet counts are two facts."""
    groups: dict[tuple[object, ...], list[Evidence]] = {}
    for item in evidence:
        key = (item.kind, item.what, item.value, item.status, item.codes)
        groups.setdefault(key, []).append(item)
    return [
        EvidenceGroup(items[0], tuple(i.when for i in items), tuple(i.reference for i in items))
        for items in groups.values()
    ]
