"""Reading FHIR JSON in every shape a user may hand us, and grouping it by patient."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fhir_match.files import fhir_files, read_resources
from fhir_match.grouping import group_by_patient, patient_of
from fhir_match.records import DataIssue, Json


def _read(path: Path) -> tuple[list[Json], list[DataIssue]]:
    issues: list[DataIssue] = []
    resources = list(read_resources(fhir_files(path), issues.append))
    return resources, issues


def test_transaction_bundle_gets_local_references(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6d3c9c52-0b7e-4b8e-9f0e-3f1d2c4b5a69",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:0a4e6a70-a1b8-4a8f-b5d6-2b2a8f0c6e11",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "subject": {"reference": "urn:uuid:6d3c9c52-0b7e-4b8e-9f0e-3f1d2c4b5a69"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "DELETE", "url": "Patient/old"}},
        ],
    }
    (tmp_path / "tx.json").write_text(json.dumps(bundle))
    resources, issues = _read(tmp_path)
    assert issues == []
    assert resources[0]["id"] == "6d3c9c52-0b7e-4b8e-9f0e-3f1d2c4b5a69"
    assert resources[1]["subject"]["reference"] == "Patient/6d3c9c52-0b7e-4b8e-9f0e-3f1d2c4b5a69"


def test_searchset_absolute_urls_and_history_become_local(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": "https://ehr.example/fhir/Condition/c1",
                "resource": {
                    "resourceType": "Condition",
                    "id": "c1",
                    "subject": {"reference": "https://ehr.example/fhir/Patient/p1/_history/3"},
                },
            },
        ],
    }
    (tmp_path / "page.json").write_text(json.dumps(bundle))
    resources, _ = _read(tmp_path)
    assert resources[0]["subject"]["reference"] == "Patient/p1"


def test_ndjson_references_are_localised_whatever_form_the_text_takes(tmp_path: Path) -> None:
    """Single resources skip the walk when their text shows every reference already local; an
    escape, a spaced key or a non-local reference must still be localised."""
    escaped = "https:\\/\\/ehr.example\\/fhir\\/Patient\\/p1"
    lines = [
        '{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}',
        '{"resourceType":"Condition","id":"c2","subject":{"reference" : "ABS/Patient/p1"}}',
        '{"resourceType":"Condition","id":"c3","subject":{"reference":"ESC"},'
        '"note":[{"text":"say \\"hi\\""}]}',
        '{"resourceType":"Condition","id":"c4","subject":{"\\u0072eference":"ABS/Patient/p1"}}',
        '{"resourceType":"Condition","id":"c5","code":{"text":"reference"},'
        '"subject":{"reference":"Patient/p1"},"evidence":[{"detail":[{"reference":"ABS/Observation/o1"}]}]}',
    ]
    lines = [
        line.replace("ABS", "https://ehr.example/fhir").replace("ESC", escaped) for line in lines
    ]
    (tmp_path / "Condition.ndjson").write_text("\n".join(lines) + "\n")
    resources, issues = _read(tmp_path)
    assert not issues
    assert [r["subject"]["reference"] for r in resources] == ["Patient/p1"] * 5
    assert resources[0] == json.loads(lines[0])
    assert resources[4]["evidence"][0]["detail"][0]["reference"] == "Observation/o1"


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_is_read(tmp_path: Path) -> None:
    lines = [
        json.dumps({"resourceType": "Patient", "id": "p1"}),
        '{"resourceType": "Patient", "id": ',
        json.dumps(["not", "a", "resource"]),
        "",
        json.dumps({"resourceType": "Patient", "id": "bad id with spaces"}),
        json.dumps({"resourceType": "Patient", "id": "p2"}),
    ]
    path = tmp_path / "Patient.ndjson"
    path.write_text("\n".join(lines) + "\n")
    resources, issues = _read(path)
    assert [r["id"] for r in resources] == ["p1", "p2"]
    assert [i.where for i in issues] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert "invalid JSON" in issues[0].reason
    assert "not an object" in issues[1].reason
    assert "Patient.id" in issues[2].reason
    assert "bad id" not in str(issues[2])


def test_gzipped_ndjson_and_unreadable_files(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "Observation.ndjson.gz", "wt") as out:
        out.write(json.dumps({"resourceType": "Observation", "id": "o1"}) + "\n")
    (tmp_path / "broken.json.gz").write_bytes(b"not gzip at all")
    (tmp_path / "notes.txt").write_text("ignored: not a FHIR file name")
    resources, issues = _read(tmp_path)
    assert [r["id"] for r in resources] == ["o1"]
    assert len(issues) == 1
    assert issues[0].where.endswith("broken.json.gz")


def test_grouping_collects_each_patient_and_the_shared_resources_they_use() -> None:
    resources: list[Json] = [
        {"resourceType": "Medication", "id": "m1", "code": {"text": "rituximab"}},
        {
            "resourceType": "MedicationRequest",
            "id": "r1",
            "status": "active",
            "subject": {"reference": "Patient/b"},
            "medicationReference": {"reference": "Medication/m1"},
        },
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/a"}},
        {"resourceType": "Patient", "id": "b"},
        {"resourceType": "AllergyIntolerance", "id": "ai1", "patient": {"reference": "Patient/b"}},
        {"resourceType": "Patient", "id": "a"},
        {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/ghost"}},
        {"resourceType": "Medication", "id": "unused"},
    ]
    groups = {
        g.patient: [f"{r['resourceType']}/{r['id']}" for r in g.resources]
        for g in group_by_patient(resources)
    }
    assert groups == {
        "Patient/a": ["Patient/a", "Observation/o1"],
        "Patient/b": [
            "Patient/b",
            "MedicationRequest/r1",
            "AllergyIntolerance/ai1",
            "Medication/m1",
        ],
        "Patient/ghost": ["Observation/o2"],
    }


def test_patient_of_reads_each_compartment_field() -> None:
    assert (
        patient_of({"resourceType": "ResearchSubject", "individual": {"reference": "Patient/x"}})
        == "Patient/x"
    )
    assert patient_of({"resourceType": "Condition", "subject": {"reference": "Group/g"}}) is None
    assert patient_of({"resourceType": "Medication", "id": "m"}) is None
