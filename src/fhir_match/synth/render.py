"""Facts to FHIR R4 resources (plain JSON dicts), one patient at a time, plus the shared ones.

Rendering is deterministic: a fact and its position give the same resource, id and key order
every time. References are relative (``Patient/<id>``, ``Medication/<id>``,
``ResearchStudy/<id>``); the shared Medication and ResearchStudy resources come from
``shared_resources``.
"""

from __future__ import annotations

from typing import Any

from fhir_match.synth import codes
from fhir_match.synth.codes import Coding, Drug, DrugStyle, Route, Variant
from fhir_match.synth.facts import (
    AllergyFact,
    ConditionFact,
    EnrolmentFact,
    MeasureFact,
    MedicationFact,
    PatientFacts,
    Person,
    PlateletFact,
    ProcedureFact,
)

__all__ = ["PATIENT_IDENTIFIER_SYSTEM", "render_patient", "shared_resources"]

Json = dict[str, Any]

PATIENT_IDENTIFIER_SYSTEM = "https://fhir-match.org/synthetic/patient"
_HL7 = "http://terminology.hl7.org/CodeSystem/"
_MARROW_TEXT = ("巨核细胞增多，产板型巨核细胞减少", "Megakaryocytes increased, impaired maturation")


def _coding(c: Coding) -> Json:
    return {"system": c.system, "code": c.code, "display": c.display}


def _concept(codings: tuple[Coding, ...], text: str | None) -> Json:
    concept: Json = {}
    if codings:
        concept["coding"] = [_coding(c) for c in codings]
    if text:
        concept["text"] = text
    return concept


def _variant(v: Variant) -> Json:
    return _concept(v.codings, v.text)


def _status(system: str, code: str) -> Json:
    return {"coding": [{"system": _HL7 + system, "code": code}]}


def _route(route: Route) -> Json:
    return _concept((route.coding,) if route.coding else (), route.text)


def _patient(p: Person) -> Json:
    resource: Json = {
        "resourceType": "Patient",
        "id": p.id,
        "identifier": [{"system": PATIENT_IDENTIFIER_SYSTEM, "value": p.id}],
        "name": [{"family": p.family, "given": [p.given], "text": p.text}],
    }
    if p.gender is not None:
        resource["gender"] = p.gender
    if p.birth_date is not None:
        resource["birthDate"] = p.birth_date
    return resource


def _condition(c: ConditionFact, rid: str, subject: Json) -> Json:
    resource: Json = {"resourceType": "Condition", "id": rid}
    if c.clinical is not None:
        resource["clinicalStatus"] = _status("condition-clinical", c.clinical)
    if c.verification is not None:
        resource["verificationStatus"] = _status("condition-ver-status", c.verification)
    category = "encounter-diagnosis" if c.clinical is None else "problem-list-item"
    resource["category"] = [_status("condition-category", category)]
    resource["code"] = _variant(c.concept.variants[c.variant])
    resource["subject"] = subject
    if c.onset is not None:
        if c.onset_as_period:
            resource["onsetPeriod"] = {"start": c.onset}
        else:
            resource["onsetDateTime"] = c.onset
    if c.abatement is not None:
        resource["abatementDateTime"] = c.abatement
    if c.recorded is not None:
        resource["recordedDate"] = c.recorded
    return resource


def _medication_element(drug: Drug, style: DrugStyle) -> tuple[str, Json]:
    if style.place == "inline":
        return "medicationCodeableConcept", _concept(style.codings, style.text)
    return "medicationReference", {"reference": f"Medication/{drug.medication_id(style)}"}


def _medication_use(m: MedicationFact, rid: str, subject: Json) -> Json:
    resource: Json = {"resourceType": m.form, "id": rid, "status": m.status}
    if m.form == "MedicationRequest":
        resource["intent"] = "order"
    key, value = _medication_element(m.drug, m.drug.styles[m.style])
    resource[key] = value
    resource["subject"] = subject
    dosage: Json = {"text": m.dose}
    if m.route is not None:
        dosage["route"] = _route(m.route)
    if m.form == "MedicationRequest":
        resource["authoredOn"] = m.start
        resource["dosageInstruction"] = [dosage]
    elif m.form == "MedicationStatement":
        if m.asserted:
            resource["dateAsserted"] = m.start
        elif m.end is not None:
            resource["effectivePeriod"] = {"start": m.start, "end": m.end}
        else:
            resource["effectiveDateTime"] = m.start
        resource["dosage"] = [dosage]
    else:
        if m.end is not None:
            resource["effectivePeriod"] = {"start": m.start, "end": m.end}
        else:
            resource["effectiveDateTime"] = m.start
        resource["dosage"] = dosage
    return resource


def _observation(rid: str, status: str, category: str, code: Coding, subject: Json) -> Json:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "category": [_status("observation-category", category)],
        "code": {"coding": [_coding(code)]},
        "subject": subject,
    }


def _platelets(p: PlateletFact, rid: str, subject: Json) -> Json:
    resource = _observation(rid, p.status, "laboratory", codes.PLATELET_CODES[p.code], subject)
    if p.placement == "dateTime":
        resource["effectiveDateTime"] = p.when
    elif p.placement == "period":
        resource["effectivePeriod"] = {"start": p.when, "end": p.when}
    elif p.placement == "instant":
        resource["effectiveInstant"] = p.when
    else:
        resource["issued"] = p.when
    unit = codes.PLATELET_UNITS[p.unit]
    quantity: Json = {"value": p.value * unit.scale}
    if unit.unit is not None:
        quantity["unit"] = unit.unit
    if unit.ucum is not None:
        quantity["system"] = codes.UCUM
        quantity["code"] = unit.ucum
    resource["valueQuantity"] = quantity
    return resource


def _hcg_value(m: MeasureFact) -> Json:
    if codes.HCG_CODES[m.variant].quantitative:
        unit = ("m[IU]/mL", "mIU/mL") if m.style == 0 else ("[IU]/L", "IU/L")
        return {
            "valueQuantity": {
                "value": m.value,
                "unit": unit[1],
                "system": codes.UCUM,
                "code": unit[0],
            }
        }
    positive = m.value == 1
    words = ("Positive", "阳性") if positive else ("Negative", "阴性")
    value: Json = (
        {"valueCodeableConcept": {"text": words[0]}} if m.style == 0 else {"valueString": words[1]}
    )
    flag = "POS" if positive else "NEG"
    value["interpretation"] = [_status("v3-ObservationInterpretation", flag)]
    return value


def _measure(m: MeasureFact, rid: str, subject: Json) -> Json:
    if m.kind == "ecog":
        resource = _observation(rid, m.status, "survey", codes.ECOG_CODE, subject)
        resource["effectiveDateTime"] = m.when
        answers = codes.ECOG_ANSWERS[int(m.value)]
        if m.variant == 0:
            resource["valueInteger"] = int(m.value)
        else:
            answer = answers[0] if m.variant == 1 else answers[-1]
            resource["valueCodeableConcept"] = {"coding": [_coding(answer)]}
    elif m.kind == "lvef":
        resource = _observation(rid, m.status, "imaging", codes.LVEF_CODES[m.variant], subject)
        resource["effectiveDateTime"] = m.when
        resource["valueQuantity"] = {
            "value": m.value,
            "unit": "%",
            "system": codes.UCUM,
            "code": "%",
        }
    elif m.kind == "nyha":
        resource = _observation(rid, m.status, "exam", codes.NYHA_CODE, subject)
        resource["effectiveDateTime"] = m.when
        answer = codes.NYHA_ANSWERS[int(m.value)]
        resource["valueCodeableConcept"] = {"coding": [_coding(answer)]}
    elif m.kind == "hcg":
        coding = codes.HCG_CODES[m.variant].coding
        resource = _observation(rid, m.status, "laboratory", coding, subject)
        resource["effectiveDateTime"] = m.when
        resource.update(_hcg_value(m))
    else:
        resource = _observation(rid, m.status, "laboratory", codes.MARROW_CODE, subject)
        resource["effectiveDateTime"] = m.when
        resource["valueString"] = _MARROW_TEXT[m.style]
    return resource


def _procedure(p: ProcedureFact, rid: str, subject: Json) -> Json:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": p.status,
        "code": _variant(p.concept.variants[p.variant]),
        "subject": subject,
        "performedDateTime": p.when,
    }


def _allergy(a: AllergyFact, rid: str, subject: Json) -> Json:
    resource: Json = {"resourceType": "AllergyIntolerance", "id": rid}
    if a.clinical is not None:
        resource["clinicalStatus"] = _status("allergyintolerance-clinical", a.clinical)
    resource["verificationStatus"] = _status("allergyintolerance-verification", a.verification)
    resource["type"] = "allergy"
    resource["category"] = ["food" if a.substance.key == "seafood" else "medication"]
    if a.criticality is not None:
        resource["criticality"] = a.criticality
    resource["code"] = _variant(a.substance.variants[a.variant])
    resource["patient"] = subject
    resource["recordedDate"] = a.recorded
    return resource


def _enrolment(e: EnrolmentFact, rid: str, subject: Json) -> Json:
    resource: Json = {"resourceType": "ResearchSubject", "id": rid, "status": e.status}
    if e.start is not None:
        period = {"start": e.start}
        if e.end is not None:
            period["end"] = e.end
        resource["period"] = period
    resource["study"] = {"reference": f"ResearchStudy/{e.study.id}"}
    resource["individual"] = subject
    return resource


def render_patient(facts: PatientFacts) -> list[Json]:
    """The patient's resources: the Patient first, then one resource per fact."""
    pid = facts.person.id
    subject = {"reference": f"Patient/{pid}"}
    resources = [_patient(facts.person)]
    resources += [_condition(c, f"{pid}-c{n}", subject) for n, c in enumerate(facts.conditions, 1)]
    resources += [_platelets(p, f"{pid}-o{n}", subject) for n, p in enumerate(facts.platelets, 1)]
    offset = len(facts.platelets)
    resources += [
        _measure(m, f"{pid}-o{offset + n}", subject) for n, m in enumerate(facts.measures, 1)
    ]
    resources += [
        _medication_use(m, f"{pid}-m{n}", subject) for n, m in enumerate(facts.medications, 1)
    ]
    resources += [_procedure(p, f"{pid}-p{n}", subject) for n, p in enumerate(facts.procedures, 1)]
    resources += [_allergy(a, f"{pid}-a{n}", subject) for n, a in enumerate(facts.allergies, 1)]
    resources += [_enrolment(e, f"{pid}-r{n}", subject) for n, e in enumerate(facts.enrolments, 1)]
    return resources


def _medication(drug: Drug, style: DrugStyle) -> Json:
    resource: Json = {"resourceType": "Medication", "id": drug.medication_id(style)}
    if style.place == "ingredient":
        resource["code"] = {"text": style.text}
        resource["ingredient"] = [
            {"itemCodeableConcept": _concept(style.codings, None), "isActive": True}
        ]
    else:
        resource["code"] = _concept(style.codings, style.text)
    return resource


def _study(study: codes.Study) -> Json:
    return {
        "resourceType": "ResearchStudy",
        "id": study.id,
        "identifier": [{"system": study.identifier_system, "value": study.identifier}],
        "title": study.title,
        "status": "active",
    }


COORDINATOR = {
    "resourceType": "Practitioner",
    "id": "coordinator-1",
    "active": True,
    "name": [{"family": "Coordinator", "given": ["Casey"]}],
    "telecom": [{"system": "email", "value": "coordinator@example.org"}],
}
"""The hospital's study coordinator: the ``fhirUser`` of the review app's local test user
(scripts/keycloak-realm.json), whom a decision's Provenance names."""


def shared_resources() -> list[Json]:
    """Every Medication a patient may reference, every ResearchStudy, and the coordinator."""
    medications = [
        _medication(drug, style)
        for drug in codes.DRUGS.values()
        for style in drug.styles
        if style.place != "inline"
    ]
    studies = [_study(s) for s in (codes.KN5501, *codes.OTHER_STUDIES)]
    return [*medications, *studies, COORDINATOR]
