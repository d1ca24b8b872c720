"""Seeding a synthetic population into the real FHIR server, and removing it by its tag."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource
from fhir_match.seed import TAG_SYSTEM, remove_tagged, seed
from fhir_match.synth.generate import generate

TYPES = (
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "Medication",
    "Procedure",
    "AllergyIntolerance",
    "ResearchSubject",
    "ResearchStudy",
    "Practitioner",
)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("population") / "pop"
    generate(25, seed=11, out=out, format="bundles")
    return out / "fhir"


def _totals(fhir: FhirClient) -> dict[str, int]:
    return {t: fhir.total(Search(t)) for t in TYPES}


def test_seed_then_remove_leaves_the_server_as_it_was(
    fhir: FhirClient, population: Path, tmp_path: Path
) -> None:
    tag = f"test-seed-{uuid.uuid4().hex[:10]}"
    token = f"{TAG_SYSTEM}|{tag}"
    bystander = fhir.create(
        parse_resource({"resourceType": "Patient", "name": [{"family": "Kept"}]})
    )
    before = _totals(fhir)

    summary = seed(fhir, [population], tag, tmp_path / "state", workers=3)
    assert summary.failed == []
    assert summary.skipped == []
    assert summary.patients == 25
    assert fhir.total(Search("Patient").where("_tag", token)) == 25
    tagged = sum(fhir.total(Search(t).where("_tag", token)) for t in TYPES)
    assert tagged == summary.resources

    # A second run with the same state resumes: finished patients are not sent again (the
    # shared Medications and ResearchStudies are, idempotently), and nothing is duplicated.
    again = seed(fhir, [population], tag, tmp_path / "state", workers=3)
    assert again.patients == 25
    assert again.resources < summary.resources
    assert sum(fhir.total(Search(t).where("_tag", token)) for t in TYPES) == tagged

    removed = remove_tagged(fhir, tag)
    assert removed == tagged
    assert _totals(fhir) == before
    assert fhir.read("Patient", str(bystander.id)).id == bystander.id
    fhir.delete("Patient", str(bystander.id))
