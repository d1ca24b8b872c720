"""Bulk Data export against the real server (FHIR_BASE_URL), always restricted to a few patients.

An export without patients walks the whole server (10,000 seeded patients locally): never here.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from fhir_match.errors import FatalFhirError
from fhir_match.fhir import FhirClient
from fhir_match.fhir.bulk import export

from .conftest import RunTag

PLATELETS = "777-3"
HEART_RATE = "8867-4"


def _entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    return {**entry, "fullUrl": full_url} if full_url else entry


def _patient_with_records(tag: RunTag, family: str) -> list[dict[str, Any]]:
    """A patient, an ITP Condition, a platelet count and a heart rate, in that order."""
    ref = f"urn:uuid:{uuid.uuid4()}"
    patient = tag.mark({"resourceType": "Patient", "name": [{"family": family}]})
    condition = tag.mark(
        {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D69.3"}]},
            "subject": {"reference": ref},
        }
    )

    def observation(code: str) -> dict[str, Any]:
        return tag.mark(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": ref},
            }
        )

    return [
        _entry(patient, ref),
        _entry(condition),
        _entry(observation(PLATELETS)),
        _entry(observation(HEART_RATE)),
    ]


def test_export_of_named_patients_holds_exactly_their_filtered_records(
    fhir: FhirClient, run_tag: RunTag, tmp_path: Path
) -> None:
    entries = [e for name in ("Ann", "Bea", "Cal") for e in _patient_with_records(run_tag, name)]
    result = fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    ids = [e.response.location.split("/")[1] for e in result.entry]
    # Per patient: Patient, Condition, platelets, heart rate. Cal is not asked for.
    ann, bea = ids[0:4], ids[4:8]

    exported = export(
        fhir,
        tmp_path,
        types=["Patient", "Condition", "Observation"],
        type_filters=[f"Observation?code={PLATELETS},26515-7"],
        patients=[f"Patient/{ann[0]}", f"Patient/{bea[0]}"],
        deadline_s=120.0,
        # HAPI answers Retry-After: 120 to every poll, however soon the job will be done.
        max_poll_interval_s=2.0,
    )

    found: dict[str, set[str]] = {}
    for path in exported.files:
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            assert path.name.startswith(f"{resource['resourceType']}-")
            assert run_tag.coding in resource["meta"]["tag"]
            found.setdefault(resource["resourceType"], set()).add(resource["id"])
    assert found == {
        "Patient": {ann[0], bea[0]},
        "Condition": {ann[1], bea[1]},
        "Observation": {ann[2], bea[2]},
    }
    assert exported.errors == ()
    assert exported.transaction_time.startswith("20")
    # The kick-off, at least one poll, one download per file, the clean-up DELETE.
    assert exported.requests >= 1 + 1 + len(exported.files) + 1


def test_an_unknown_patient_fails_the_kick_off_with_the_servers_words(
    fhir: FhirClient, tmp_path: Path
) -> None:
    missing = f"Patient/fhir-match-missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(FatalFhirError) as err:
        export(fhir, tmp_path, types=["Patient"], patients=[missing])
    assert (err.value.method, err.value.status) == ("POST", 404)
    assert err.value.url.endswith("/Patient/$export")
    assert missing in err.value.outcome
    assert list(tmp_path.iterdir()) == []
