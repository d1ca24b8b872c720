"""Synthetic populations loaded into the real FHIR server, and discovery runs over them:
what the discovery and review tests share."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from fhir_match.fhir import FhirClient
from fhir_match.fhir.models import parse_resource
from fhir_match.seed import remove_tagged, seed
from fhir_match.synth.generate import generate
from fhir_match.tagging import TAG_SYSTEM
from worker import runs
from worker.process import WorkerProcess
from worker.tasks import SINCE_MARGIN, discover

AS_OF = "2026-06-01"
RUN_TIMEOUT_S = 300
STUDY = "kn5501"
SEED_ATTEMPTS = 3
"""A busy server times some transactions out; loading resumes where it stopped."""


@dataclass(frozen=True)
class Population:
    tag: str
    folder: Path
    expected: dict[str, dict[str, Any]]
    """The generator's intended answer per patient."""
    group: str = ""
    """The id of the population's Group (its registry), when it was loaded with one."""

    @property
    def listed(self) -> dict[str, str]:
        return {p: e["outcome"] for p, e in self.expected.items() if e["outcome"] != "ineligible"}


@contextmanager
def loaded_population(
    fhir: FhirClient,
    folder: Path,
    patients: int,
    seed_number: int,
    itp_share: float,
    name: str,
    *,
    group: bool = False,
) -> Iterator[Population]:
    """Generate a population, load it under a run tag of its own, and remove it after; with
    ``group``, also its Group (id: the tag)."""
    generate(patients, seed_number, folder, "ndjson", itp_share=itp_share)
    tag = f"test-{name}-{uuid.uuid4().hex[:8]}"
    group_id = tag if group else ""
    for _ in range(SEED_ATTEMPTS):
        loaded = seed(fhir, [folder / "fhir"], tag, folder / "seed.done", workers=2, group=group_id)
        if not loaded.failed:
            break
    assert not loaded.failed
    assert not loaded.skipped
    expected = {
        e["patient"]: e
        for e in map(json.loads, (folder / "expected.ndjson").read_text().splitlines())
    }
    try:
        yield Population(tag, folder, expected, group_id)
    finally:
        remove_tagged(fhir, tag)


def run_discovery(
    store: redis.Redis, worker: WorkerProcess, population: Population, **kwargs: Any
) -> runs.Run:
    """Enqueue a run on the test worker and wait for its record to say it ended."""
    options = {"study_id": STUDY, "as_of": AS_OF, "tag": population.tag, "mode": "full"}
    result = discover.apply_async(kwargs={**options, **kwargs}, queue=worker.queue)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = runs.load_run(store, result.id)
        if run is not None and run.state in runs.FINAL:
            return run
        time.sleep(0.2)  # polling the run's record for its end, not waiting for an effect
    pytest.fail(f"run {result.id} did not end within {RUN_TIMEOUT_S}s")


def look_back_from_now(store: redis.Redis, scope: str) -> datetime:
    """Make the next incremental run of ``scope`` look back from now, as if the last run had
    started 5 minutes from now: what was loaded and written before is unchanged, and only
    what is written after this is a change. The moment it looks back from."""
    last = runs.last_run(store, scope)
    assert last is not None
    since = datetime.now(UTC).replace(microsecond=0)
    runs.remember_last_run(store, scope, replace(last, started=(since + SINCE_MARGIN).isoformat()))
    return since


def add_normal_platelet_count(fhir: FhirClient, patient: str, tag: str) -> None:
    """A normal platelet count for ``patient`` two days before the screening date: it rules
    a candidate out (inc-3)."""
    count = {
        "resourceType": "Observation",
        "meta": {"tag": [{"system": TAG_SYSTEM, "code": tag}]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-05-30",
        "valueQuantity": {
            "value": 250,
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        },
    }
    fhir.create(parse_resource(count))
