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
        "Observation/c: platelet count not used: its unit is not a known unit for this test",
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


def test_oid_systems_renamed_and_padded_codes_trimmed(normaliser: Normaliser) -> None:
    kept, _ = _run(
        normaliser,
        {
            "resourceType": "Condition",
            "id": "itp",
            "subject": SUBJECT,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.6.96", "value": "kept"}],
            "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.90", "code": "D69.3 "}]},
        },
    )
    condition = kept["Condition/itp"]
    assert condition["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10-cm",
        "code": "D69.3",
    }
    # an identifier's system is not a code system: left as written
    assert condition["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.6.96"


def test_platelet_counts_written_as_text_or_in_a_panel(normaliser: Normaliser) -> None:
    loinc = "http://loinc.org"
    kept, issues = _run(
        normaliser,
        {
            "resourceType": "Observation",
            "id": "text",
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": loinc, "code": "777-3"}]},
            "valueString": "< 10 K/uL",
        },
        {
            "resourceType": "Observation",
            "id": "words",
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": loinc, "code": "777-3"}]},
            "valueString": "clumped",
        },
        {
            "resourceType": "Observation",
            "id": "cbc",
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": loinc, "code": "58410-2"}]},
            "effectiveDateTime": "2026-05-01",
            "component": [
                {"code": {"coding": [{"system": loinc, "code": "718-7"}]}, "valueQuantity": {}},
                {
                    "code": {"coding": [{"system": loinc, "code": "777-3"}]},
                    "valueQuantity": {"value": 45000, "unit": "/uL"},
                },
            ],
        },
    )
    assert kept["Observation/text"]["valueQuantity"] == {
        "value": 10,
        "comparator": "<",
        "unit": "10*9/L",
        "system": "http://unitsofmeasure.org",
        "code": "10*9/L",
    }
    cbc = kept["Observation/cbc"]
    assert cbc["code"]["coding"][0]["code"] == "777-3"
    assert cbc["valueQuantity"]["value"] == 45
    assert cbc["effectiveDateTime"] == "2026-05-01"
    assert "component" not in cbc
    assert issues == ["Observation/words: platelet count not used: its text is not a number"]


def test_statuses_are_folded_to_their_codes(normaliser: Normaliser) -> None:
    kept, _ = _run(
        normaliser,
        {
            "resourceType": "Condition",
            "id": "itp",
            "subject": SUBJECT,
            "clinicalStatus": {"text": "Resolved"},
            "verificationStatus": {"coding": [{"code": "Entered in Error"}]},
            "code": {"coding": [{"system": ICD10, "code": "D69.3"}]},
        },
        {
            "resourceType": "Condition",
            "id": "stu3",
            "subject": SUBJECT,
            "verificationStatus": "refuted",
            "code": {"coding": [{"system": ICD10, "code": "D69.3"}]},
        },
        {
            "resourceType": "Procedure",
            "id": "spl",
            "status": "Not-Done",
            "subject": SUBJECT,
        },
    )
    condition = kept["Condition/itp"]
    assert condition["clinicalStatus"]["coding"] == [{"code": "resolved"}]
    assert condition["verificationStatus"]["coding"] == [{"code": "entered-in-error"}]
    assert kept["Condition/stu3"]["verificationStatus"] == {
        "text": "refuted",
        "coding": [{"code": "refuted"}],
    }
    assert kept["Procedure/spl"]["status"] == "not-done"


def test_other_results_written_as_a_number_become_quantities(normaliser: Normaliser) -> None:
    def result(oid: str, code: str, text: str) -> Json:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueString": text,
        }

    kept, _ = _run(
        normaliser,
        result("ef", "10230-1", "35 %"),
        result("hcg", "2106-3", "<2.0 mIU/mL"),
        result("range", "10230-1", "55-60%"),
        result("word", "2106-3", "Positive"),
    )
    assert kept["Observation/ef"]["valueQuantity"] == {"value": 35, "unit": "%"}
    assert kept["Observation/hcg"]["valueQuantity"] == {
        "value": 2,
        "comparator": "<",
        "unit": "mIU/mL",
    }
    assert kept["Observation/range"]["valueString"] == "55-60%"
    assert kept["Observation/word"]["valueString"] == "Positive"
