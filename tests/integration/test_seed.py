"""Seeding a synthetic population into the real FHIR server, and removing it by its tag.

The server may hold other data (the demo's population, other tests' runs, a sandbox's
records, and other tests loading and removing populations at the same time): the test looks
only at the resources its own population names, and at one bystander it made itself, never
at a count of everything of a type.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.files import fhir_files, read_resources
from fhir_match.grouping import patient_of
from fhir_match.seed import TAG_SYSTEM, remove_tagged, seed
from fhir_match.synth.generate import generate

State = dict[str, tuple[dict[str, Any], frozenset[str]]]
"""Per reference that exists on the server: its content without meta, and its run tags."""


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("population") / "pop"
    generate(25, seed=11, out=out, format="bundles")
    return out / "fhir"


def _references(folder: Path) -> list[str]:
    """Every resource the population's files hold, as ``Type/id``."""
    return sorted(
        {
            f"{r['resourceType']}/{r['id']}"
            for r in read_resources(fhir_files(folder), lambda issue: None)
        }
    )


def _owned(folder: Path) -> set[str]:
    """The resources of the population's own patients (not the shared Medications, say)."""
    return {
        f"{r['resourceType']}/{r['id']}"
        for r in read_resources(fhir_files(folder), lambda issue: None)
        if patient_of(r) is not None
    }


def _state(fhir: FhirClient, references: list[str]) -> State:
    """What the server holds now under ``references``, read in one batch."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": ref}} for ref in references],
    }
    state: State = {}
    for ref, entry in zip(references, fhir.batch(bundle).entry or [], strict=True):
        status = str(entry.response.status if entry.response else "")
        if not status.startswith("200"):
            assert status.startswith(("404", "410")), f"{ref}: {status}"
            continue
        resource = to_json(entry.resource) if entry.resource else {}
        meta = resource.pop("meta", {})
        tags = frozenset(t["code"] for t in meta.get("tag", []) if t.get("system") == TAG_SYSTEM)
        state[ref] = (resource, tags)
    return state


def test_seed_then_remove_leaves_the_server_as_it_was(
    fhir: FhirClient, population: Path, tmp_path: Path
) -> None:
    tag = f"test-seed-{uuid.uuid4().hex[:10]}"
    token = f"{TAG_SYSTEM}|{tag}"
    references = _references(population)
    owned = _owned(population)
    types = sorted({ref.split("/")[0] for ref in references})
    bystander = fhir.create(
        parse_resource({"resourceType": "Patient", "name": [{"family": "Kept"}]})
    )
    before = _state(fhir, references)

    summary = seed(fhir, [population], tag, tmp_path / "state", workers=3)
    assert summary.failed == []
    assert summary.skipped == []
    assert summary.patients == 25
    assert summary.resources == len(references)
    assert fhir.total(Search("Patient").where("_tag", token)) == 25
    tagged = sum(fhir.total(Search(t).where("_tag", token)) for t in types)
    assert tagged == summary.resources
    assert all(tag in tags for _, tags in _state(fhir, references).values())

    # A second run with the same state resumes: finished patients are not sent again (the
    # shared Medications and ResearchStudies are, idempotently), and nothing is duplicated.
    again = seed(fhir, [population], tag, tmp_path / "state", workers=3)
    assert again.patients == 25
    assert again.resources < summary.resources
    assert sum(fhir.total(Search(t).where("_tag", token)) for t in types) == tagged

    # A shared resource (a Medication, the study) that other data still uses loses this tag
    # and stays as it was; everything else this run loaded is deleted. Other tests may load
    # and remove the same shared resources meanwhile, so only this tag's traces are counted.
    removed = remove_tagged(fhir, tag)
    after = _state(fhir, references)
    assert removed == tagged - len(after)
    assert not set(after) & owned
    for ref, (content, tags) in after.items():
        assert tag not in tags, ref
        assert ref not in before or content == before[ref][0], ref
    assert sum(fhir.total(Search(t).where("_tag", token)) for t in types) == 0
    assert fhir.read("Patient", str(bystander.id)).id == bystander.id
    fhir.delete("Patient", str(bystander.id))
