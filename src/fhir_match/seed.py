"""Load a population into a FHIR server with tagged transactions, and remove it by its tag.

This is how the product is tried on a test server (the local HAPI, or the public HAPI
sandbox with synthetic data only): every resource carries the run tag in ``meta.tag``, so
``remove`` deletes exactly what one run loaded. Loading is idempotent (PUT by id), runs
transactions in parallel, and records finished patients in a state file so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from fhir_match.errors import DataError, FhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.files import fhir_files, read_resources
from fhir_match.grouping import group_by_patient, patient_of
from fhir_match.records import DataIssue, Json, PatientRecord
from fhir_match.tagging import TAG_SYSTEM, tag_token, tagged

__all__ = [
    "DELETES_PER_BATCH",
    "PATIENTS_PER_TRANSACTION",
    "TAG_SYSTEM",
    "SeedSummary",
    "population_group",
    "remove_tagged",
    "seed",
    "state_path",
    "summary_json",
    "tagged_transaction",
]

PATIENTS_PER_TRANSACTION = 10
SHARED_PER_TRANSACTION = 100
_REFER_TO_ALL = ("Provenance", "Group")
"""Deleted first: they refer to resources of every type (evidence, members)."""
_SHARED_LAST = (
    "Patient",
    "Medication",
    "ResearchStudy",
    "Organization",
    "Practitioner",
    "Location",
    "Substance",
)
"""Deleted last, in this order: what other resources refer to."""
DELETES_PER_BATCH = 50
"""Small batches: each delete also removes the resource's search index rows."""

Progress = Callable[[int], None]


@dataclass
class SeedSummary:
    patients: int = 0
    resources: int = 0
    skipped: list[DataIssue] = field(default_factory=list)
    failed: list[DataIssue] = field(default_factory=list)


def tagged_transaction(resources: Iterable[Json], tag: str) -> Json:
    """A transaction that PUTs each resource by its id, with the run tag added."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": tagged(r, tag),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


def _chunks(items: Iterable[PatientRecord], size: int) -> Iterator[list[PatientRecord]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _shared(paths: Sequence[Path], on_issue: Callable[[DataIssue], None]) -> list[Json]:
    """Resources that belong to no patient (Medication, ResearchStudy): loaded first, once."""
    shared: dict[str, Json] = {}
    for resource in read_resources(paths, on_issue):
        if patient_of(resource) is None and "id" in resource:
            shared[f"{resource['resourceType']}/{resource['id']}"] = resource
    return list(shared.values())


def _read_state(state: Path) -> set[str]:
    if not state.exists():
        return set()
    return set(state.read_text(encoding="utf-8").split())


def seed(
    client: FhirClient,
    inputs: Sequence[Path],
    tag: str,
    state: Path,
    workers: int = 4,
    progress: Progress = lambda done: None,
    group: str = "",
) -> SeedSummary:
    """Load every resource in ``inputs``, tagged; patients already in ``state`` are skipped.
    With ``group`` (an id), also write the Group of every patient loaded (population_group)."""
    summary = SeedSummary()
    paths = [p for path in inputs for p in fhir_files(path)]
    shared = _shared(paths, lambda issue: None)  # reported once, by the patient pass below
    for start in range(0, len(shared), SHARED_PER_TRANSACTION):
        some = shared[start : start + SHARED_PER_TRANSACTION]
        client.transaction(tagged_transaction(some, tag))
        summary.resources += len(some)

    done = _read_state(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    records = (
        PatientRecord(r.patient, tuple(x for x in r.resources if patient_of(x) is not None))
        for r in group_by_patient(read_resources(paths, summary.skipped.append))
        if r.patient not in done
    )
    summary.patients = len(done)
    with state.open("a", encoding="utf-8") as log, ThreadPoolExecutor(workers) as pool:
        pending: dict[Future[None], list[PatientRecord]] = {}

        def settle(futures: Iterable[Future[None]]) -> None:
            for future in futures:
                chunk = pending.pop(future)
                try:
                    future.result()
                except (FhirError, DataError) as exc:
                    summary.failed.extend(DataIssue(r.patient, str(exc)) for r in chunk)
                    continue
                log.write("".join(f"{r.patient}\n" for r in chunk))
                log.flush()
                summary.patients += len(chunk)
                summary.resources += sum(len(r.resources) for r in chunk)
                progress(summary.patients)

        for chunk in _chunks(records, PATIENTS_PER_TRANSACTION):
            if len(pending) >= 2 * workers:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                settle(finished)
            resources = [r for record in chunk for r in record.resources if "id" in r]
            future = pool.submit(_send, client, tagged_transaction(resources, tag))
            pending[future] = chunk
        settle(list(wait(pending).done))
    if group:
        members = _read_state(state)
        client.transaction(tagged_transaction([population_group(group, members)], tag))
    return summary


def population_group(group_id: str, patients: Iterable[str]) -> Json:
    """The Group of a loaded population (person, actual): the registry a hospital names for
    the patient-list and group-export sources. Only patients on the server are members:
    a server may refuse a reference to a patient it does not have."""
    return {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": patient}} for patient in sorted(patients)],
    }


def _send(client: FhirClient, bundle: Json) -> None:
    client.transaction(bundle)


def remove_tagged(client: FhirClient, tag: str, progress: Progress = lambda done: None) -> int:
    """Delete every resource carrying the run tag, and nothing else; returns how many.

    Resources are deleted type by type, those that refer to others first, a page at a time
    as batches of single deletes: that works on servers that refuse to delete many resources
    by one search, and keeps each database transaction small. Nothing cascades: a resource
    someone else made that refers to a tagged one stops the removal with the server's
    conflict, rather than being deleted with it; only a shared resource (a Medication, the
    study) still used by another tagged population is kept, without this tag.
    """
    token = tag_token(tag)
    statement = client.capabilities()
    types = sorted({str(r.type) for rest in statement.rest or [] for r in rest.resource or []})
    present = [t for t in types if client.total(Search(t).where("_tag", token))]
    order = [t for t in _REFER_TO_ALL if t in present]
    order += [t for t in present if t not in _SHARED_LAST + _REFER_TO_ALL]
    order += [t for t in _SHARED_LAST if t in present]
    removed = 0
    for resource_type in order:
        search = Search(resource_type).where("_tag", token).where("_elements", "id")
        search = search.count(DELETES_PER_BATCH)
        while ids := [
            str(e["resource"]["id"])
            for e in next(client.pages(search)).get("entry") or []
            if e.get("search", {}).get("mode", "match") == "match"
        ]:
            removed += _delete_batch(client, resource_type, ids, tag)
            progress(removed)
    return removed


def _delete_batch(client: FhirClient, resource_type: str, ids: list[str], tag: str) -> int:
    """Delete a page of tagged resources; returns how many were deleted.

    A shared resource (a Medication, the study) that another population loaded under its own
    tag still refers to cannot be deleted (409): it loses this tag instead, and stays.
    """
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": f"{resource_type}/{i}"}} for i in ids],
    }
    response = client.batch(bundle)
    statuses = [str(e.response.status if e.response else "") for e in response.entry or []]
    shared = resource_type in _SHARED_LAST and resource_type != "Patient"
    kept = [
        i for i, status in zip(ids, statuses, strict=False) if shared and status.startswith("409")
    ]
    for resource_id in kept:
        _untag(client, f"{resource_type}/{resource_id}", tag)
    refused = [
        f"{resource_type}/{i}: {status or 'no status'}"
        for i, status in zip(ids, statuses, strict=False)
        if not status.startswith(("2", "404")) and i not in kept
    ]
    if refused:
        raise FhirError(
            "DELETE",
            f"{client.base_url}/{resource_type}",
            409,
            f"{len(refused)} tagged resources could not be deleted, e.g. {refused[0]}",
        )
    return len(ids) - len(kept)


def _untag(client: FhirClient, reference: str, tag: str) -> None:
    """Remove the run tag from a resource (``$meta-delete``), leaving it otherwise as it is."""
    meta = {"tag": [{"system": TAG_SYSTEM, "code": tag}]}
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]}
    client.request("POST", f"{client.base_url}/{reference}/$meta-delete", body=parameters)


def state_path(folder: Path, tag: str) -> Path:
    """Where a run's finished patients are recorded."""
    return folder / f"seed-{tag}.done"


def summary_json(summary: SeedSummary) -> str:
    return json.dumps(
        {
            "patients": summary.patients,
            "resources": summary.resources,
            "skipped": len(summary.skipped),
            "failed": len(summary.failed),
        }
    )
