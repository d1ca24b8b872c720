"""The normalise step: drugs named one way, platelets in one unit, unread resources left out."""

from __future__ import annotations

import pytest

from fhir_match.evaluate.engine import translate_cql
from fhir_match.evaluate.study import load_study
from fhir_match.normalise import Normaliser, normalise
from fhir_match.records import Json, PatientRecord
from fhir_match.screen import load_normaliser
from fhir_match.terminology import DRUG_NAME, ICD10

PATIENT = {"resourceType": "Patient", "id": "p"}
SUBJECT = {"reference": "Patient/p"}


@pytest.fixture(scope="module")
def normaliser() -> Normaliser:
    translate_cql()
    return load_normaliser(load_study("kn5501"))


def _run(normaliser: Normaliser, *resources: Json) -> tuple[dict[str, Json], list[str]]:
    result = normalise(PatientRecord("Patient/p", (PATIENT, *resources)), normaliser)
    kept = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in result.bundle["entry"]
    }
    return kept, [str(issue) for issue in result.issues]


def test_a_referenced_medication_becomes_one_named_concept(normaliser: Normaliser) -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m",
        "code": {"text": "美罗华 500mg"},
        "ingredient": [
            {
                "itemCodeableConcept": {
                    "coding": [{"system": "http://www.whocc.no/atc", "code": "L01FA01"}]
                }
            }
        ],
    }
    request = {
        "resourceType": "MedicationRequest",
        "id": "r",
        "status": "completed",
        "intent": "order",
        "subject": SUBJECT,
        "medicationReference": {"reference": "Medication/m"},
    }
    kept, _ = _run(normaliser, medication, request)
    concept = kept["MedicationRequest/r"]["medicationCodeableConcept"]
    assert "medicationReference" not in kept["MedicationRequest/r"]
    assert {"system": "http://www.whocc.no/atc", "code": "L01FA01"} in concept["coding"]
    assert {"system": DRUG_NAME, "code": "rituximab"} in concept["coding"]
    assert "Medication/m" not in kept  # folded into the uses that name it
    assert "medicationReference" in request  # the input is not modified


def test_platelets_are_converted_or_reported(normaliser: Normaliser) -> None:
    def count(oid: str, quantity: Json) -> Json:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
            "valueQuantity": quantity,
        }

    kept, issues = _run(
        normaliser,
        count("a", {"value": 45000, "unit": "/uL"}),
        count("b", {"value": 45, "unit": "K/µL"}),
        count("c", {"value": 45, "unit": "mg"}),
        count("d", {"value": 45}),
    )
    for oid in ("a", "b"):
        assert kept[f"Observation/{oid}"]["valueQuantity"] == {
            "value": 45,
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        }
    assert kept["Observation/c"]["valueQuantity"]["unit"] == "mg"
    assert issues == [
        "Observation/c: platelet count not used: unit 'mg' is not a known unit for this test",
        "Observation/d: platelet count not used: no unit",
    ]


def test_resources_no_rule_reads_are_left_out(normaliser: Normaliser) -> None:
    kept, _ = _run(
        normaliser,
        {"resourceType": "Encounter", "id": "e", "status": "finished", "subject": SUBJECT},
        {
            "resourceType": "Observation",
            "id": "hb",
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        },
        {
            "resourceType": "Condition",
            "id": "htn",
            "subject": SUBJECT,
            "code": {"coding": [{"system": ICD10, "code": "I10"}]},
        },
        {
            "resourceType": "Condition",
            "id": "local",
            "subject": SUBJECT,
            "code": {"coding": [{"system": "urn:hospital:dx", "code": "X1"}], "text": "ITP"},
        },
        {
            "resourceType": "Condition",
            "id": "itp",
            "subject": SUBJECT,
            "code": {"coding": [{"system": ICD10, "code": "D69.300x001"}]},
        },
    )
    assert sorted(kept) == ["Condition/itp", "Condition/local", "Patient/p"]


def test_subcodes_in_use_are_collected(normaliser: Normaliser) -> None:
    result = normalise(
        PatientRecord(
            "Patient/p",
            (
                PATIENT,
                {
                    "resourceType": "Condition",
                    "id": "c",
                    "subject": SUBJECT,
                    "code": {"coding": [{"system": ICD10, "code": "D69.300x001"}]},
                },
            ),
        ),
        normaliser,
    )
    assert result.hierarchical_codings == frozenset({(ICD10, "D69.300x001")})
    additions = normaliser.terminology.hierarchy_additions(result.hierarchical_codings)
    assert (ICD10, "D69.300x001") in additions["https://fhir-match.org/fhir/ValueSet/itp"]
