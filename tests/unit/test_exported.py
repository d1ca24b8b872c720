"""The cohort found in exported NDJSON files: the cohort searches' rule applied locally, and the
cohort's records read without keeping (or evaluating) anyone else's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_match import exported
from fhir_match.evaluate.study import load_study
from fhir_match.exported import CohortRule, ExportedCohort, file_type
from fhir_match.files import fhir_files, read_located
from fhir_match.grouping import group_located
from fhir_match.records import DataIssue, Json
from fhir_match.screen import MAPPINGS_DIR
from fhir_match.terminology import load_terminology

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def rule() -> CohortRule:
    return CohortRule.of(load_study("kn5501"), load_terminology(MAPPINGS_DIR))


def _condition(code: Json) -> Json:
    return {"resourceType": "Condition", "code": code, "subject": {"reference": "Patient/p"}}


def _use(kind: str = "MedicationRequest", **drug: object) -> Json:
    return {"resourceType": kind, "status": "active", "subject": {"reference": "Patient/p"}, **drug}


def test_public_names() -> None:
    assert sorted(exported.__all__) == [
        "CohortRule",
        "ExportedCohort",
        "file_type",
        "patients_in",
        "referenced",
    ]


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (ICD10CM, "D69.3"),
        (ICD10CM, "D693"),  # dotless, as many EHRs write it
        ("urn:oid:2.16.840.1.113883.6.90", "D69.3"),  # the ICD-10-CM OID
        (ICD10, "D69.300x001"),  # a national subcode, under is-a D69.3
        ("http://hl7.org/fhir/sid/icd-10/", " d69.3 "),  # trailing slash, padded, lower case
        (ICD10CM, "D69.6"),  # thrombocytopenia, unspecified: also in the discovery section
        (ICD10CM, "D69.41"),  # Evans syndrome alone makes inc-2 unknown
        (SNOMED, "441511006"),  # history of ITP, the same
        (SNOMED, "32273002"),
        ("http://snomed.info/sct/731000124108", "2897005"),  # a SNOMED CT edition URI
        ("urn:oid:2.16.840.1.113883.6.96", "13172003"),
    ],
)
def test_a_condition_coded_in_any_spelling_counts(rule: CohortRule, system: str, code: str) -> None:
    assert rule.condition_counts(_condition({"coding": [{"system": system, "code": code}]}))


@pytest.mark.parametrize(
    "code",
    [
        {"text": "ITP"},
        {"text": "Chronic immune thrombocytopenia"},  # a name inside the text, not at its start
        {"text": "Immune Thrombocytopénia"},  # accents and case as a :text search ignores them
        {"coding": [{"system": "urn:local", "code": "X1", "display": "特发性血小板减少性紫癜"}]},
        {"text": "慢性原发免疫性血小板减少症"},
    ],
)
def test_a_condition_named_in_text_or_display_counts(rule: CohortRule, code: Json) -> None:
    assert rule.condition_counts(_condition(code))


@pytest.mark.parametrize(
    "code",
    [
        {"coding": [{"system": ICD10CM, "code": "I10", "display": "Essential hypertension"}]},
        {"text": "慢性肾脏病3期"},
        {"coding": [{"system": ICD10CM, "code": "D69"}]},  # the parent, not the ITP code
        {"coding": "D69.3"},  # not a list: nothing read, nothing counted
    ],
)
def test_a_condition_without_itp_does_not_count(rule: CohortRule, code: Json) -> None:
    assert not rule.condition_counts(_condition(code))


@pytest.mark.parametrize(
    "drug",
    [
        {"medicationCodeableConcept": {"coding": [{"system": ATC, "code": "B02BX05"}]}},
        {"medicationCodeableConcept": {"coding": [{"system": ATC, "code": "B02BX0501"}]}},
        {"medicationCodeableConcept": {"text": "Revolade 25 mg tablet"}},
        {"medicationCodeableConcept": {"text": "艾曲泊帕乙醇胺片"}},
        {"medicationCodeableConcept": {"text": "rhTPO 15000 U"}},
        {"medicationReference": {"reference": "#m", "display": "a tablet"}},  # contained
        {"medicationReference": {"reference": "Medication/tpo"}},
        {
            "medicationReference": {
                "reference": "https://ehr.example/fhir/Medication/tpo/_history/2"
            }
        },
        {"medicationReference": {"reference": "Medication/other", "display": "Nplate 250 mcg"}},
    ],
)
@pytest.mark.parametrize(
    "kind", ["MedicationRequest", "MedicationStatement", "MedicationAdministration"]
)
def test_a_medication_use_of_a_study_drug_counts(
    rule: CohortRule, kind: str, drug: dict[str, object]
) -> None:
    contained = [{"resourceType": "Medication", "id": "m", "code": {"text": "romiplostim"}}]
    medications = {
        "Medication/tpo": {
            "resourceType": "Medication",
            "id": "tpo",
            "code": {"text": "Brand X"},
            "ingredient": [
                {"itemCodeableConcept": {"coding": [{"system": ATC, "code": "B02BX04"}]}}
            ],
        }
    }
    use = {**_use(kind, **drug), "contained": contained}
    assert rule.use_counts(use, medications)


@pytest.mark.parametrize(
    "drug",
    [
        {"medicationCodeableConcept": {"text": "Amlodipine 5 mg tablet"}},
        {"medicationCodeableConcept": {"coding": [{"system": ATC, "code": "H02AB07"}]}},
        {"medicationReference": {"reference": "Medication/unknown"}},
    ],
)
def test_a_medication_use_of_another_drug_does_not_count(
    rule: CohortRule, drug: dict[str, object]
) -> None:
    assert not rule.use_counts(_use("MedicationRequest", **drug), {})


def test_file_types_are_read_from_bulk_data_names() -> None:
    assert file_type(Path("Condition.ndjson")) == "Condition"
    assert file_type(Path("MedicationRequest-2.ndjson.gz")) == "MedicationRequest"
    assert file_type(Path("Observation_1.jsonl")) == "Observation"
    assert file_type(Path("bundle.json")) is None
    assert file_type(Path("export.ndjson")) is None


def _write(folder: Path, name: str, lines: list[Json | str]) -> None:
    text = "".join(
        (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines
    )
    (folder / name).write_text(text, encoding="utf-8")


def _observation(number: int, subject: Json) -> Json:
    return {
        "resourceType": "Observation",
        "id": f"o{number}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "26515-7"}]},
        "subject": subject,
        "valueQuantity": {"value": 20 + number, "unit": "10*9/L"},
    }


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An export of seven patients: four in the cohort each found another way, three not (one
    with a bad line of its own, one named by identifier: reported, or not, all the same)."""
    itp = {"coding": [{"system": ICD10, "code": "D69.3"}]}
    patients: list[Json | str] = [
        {"resourceType": "Patient", "id": f"p{n}", "birthDate": "1980-01-01"} for n in range(1, 6)
    ]
    for n in (6, 7):
        identifier = [{"system": "urn:mrn", "value": str(n)}]
        patients.append({"resourceType": "Patient", "id": f"p{n}", "identifier": identifier})
    _write(tmp_path, "Patient.ndjson", patients)
    _write(
        tmp_path,
        "Condition.ndjson",
        [
            {**_condition(itp), "id": "c1", "subject": {"reference": "Patient/p1"}},
            {
                **_condition({"text": "Hypertension"}),
                "id": "c2",
                "subject": {"reference": "Patient/p2"},
            },
            {
                **_condition(itp),
                "id": "c4",
                "subject": {"reference": "https://ehr.example/fhir/Patient/p4"},
            },
            {
                **_condition(itp),
                "id": "c6",
                "subject": {"identifier": {"system": "urn:mrn", "value": "6"}},
            },
        ],
    )
    _write(
        tmp_path,
        "MedicationRequest.ndjson",
        [
            {
                **_use(medicationReference={"reference": "Medication/tpo"}),
                "id": "m3",
                "subject": {"reference": "Patient/p3"},
            }
        ],
    )
    _write(
        tmp_path,
        "Medication.ndjson",
        [
            {
                "resourceType": "Medication",
                "id": "tpo",
                "code": {"coding": [{"system": ATC, "code": "B02BX04"}]},
            }
        ],
    )
    observations: list[Json | str] = [
        _observation(n, {"reference": f"Patient/p{n}"}) for n in range(1, 6)
    ]
    for n in (6, 7, 99):  # p6 is in the cohort, p7 is not, nobody carries 99
        observations.append(_observation(n, {"identifier": {"system": "urn:mrn", "value": str(n)}}))
    observations.append(
        '{"resourceType": "Observation", "id": "bad", "subject": {"reference": "Patient/p5"'
    )
    observations.append(_observation(7, {"display": "no reference"}))  # reported by grouping
    _write(tmp_path, "Observation.ndjson", observations)
    return tmp_path


def test_the_cohort_and_its_records_are_what_the_full_read_gives_for_them(
    rule: CohortRule, export: Path
) -> None:
    paths = fhir_files(export)
    issues: list[DataIssue] = []
    cohort = ExportedCohort(paths, rule, issues.append, spill_dir=None)
    assert cohort.cohort == {"Patient/p1", "Patient/p3", "Patient/p4", "Patient/p6"}
    records = list(cohort.records())
    assert cohort.outside == 3

    full_issues: list[DataIssue] = []
    full = list(group_located(read_located(paths, full_issues.append), full_issues.append))
    assert records == [r for r in full if r.patient in cohort.cohort]
    # Another patient's bad line and unplaceable record are reported as by the full read, once.
    assert issues == full_issues
    assert [issue.where for issue in issues] == [
        f"{export / 'Observation.ndjson'}:9",
        f"{export / 'Observation.ndjson'}:10",
        f"{export / 'Observation.ndjson'}:8",
    ]


def test_a_patient_not_in_the_cohort_is_not_kept(rule: CohortRule, export: Path) -> None:
    kept: list[str] = []

    def keep(resource: Json) -> bool:
        kept.append(f"{resource['resourceType']}/{resource.get('id')}")
        return False

    list(read_located(fhir_files(export), lambda issue: None, keep))
    assert "Observation/bad" not in kept  # a bad line is reported, never offered to keep
    cohort = ExportedCohort(fhir_files(export), rule, lambda issue: None, spill_dir=None)
    patients = {record.patient for record in cohort.records()}
    assert patients == {"Patient/p1", "Patient/p3", "Patient/p4", "Patient/p6"}
