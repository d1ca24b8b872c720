"""Writers that stream a population to disk as FHIR transaction Bundles or Bulk Data NDJSON.

Both write as they go (one patient at a time; NDJSON keeps one open file per resource type), so
memory does not grow with the population, and both write byte-identical files for the same
input: compact JSON, UTF-8, keys in the order the renderer made them, ``\\n`` line ends.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = [
    "PATIENTS_PER_FOLDER",
    "SHARED_BUNDLE",
    "BundleWriter",
    "NdjsonWriter",
    "PopulationWriter",
    "dump",
    "transaction",
]

Json = dict[str, Any]

PATIENTS_PER_FOLDER = 1000
SHARED_BUNDLE = "shared.json"
"""The Bundle of Medication and ResearchStudy resources the patient Bundles refer to; load it
first."""

_URL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-match.org/synthetic")


def dump(value: Json) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _open(path: Path) -> IO[str]:
    return path.open("w", encoding="utf-8", newline="\n")


class PopulationWriter(Protocol):
    resources: Counter[str]

    def write_shared(self, resources: list[Json]) -> None: ...

    def write_patient(self, index: int, patient_id: str, resources: list[Json]) -> None: ...

    def close(self) -> None: ...


class NdjsonWriter:
    """``<Type>.ndjson`` per resource type, as a Bulk Data export lays them out."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._files: dict[str, IO[str]] = {}
        self.resources: Counter[str] = Counter()

    def _write(self, resource: Json) -> None:
        kind = resource["resourceType"]
        stream = self._files.get(kind)
        if stream is None:
            stream = self._files[kind] = _open(self._folder / f"{kind}.ndjson")
        stream.write(dump(resource) + "\n")
        self.resources[kind] += 1

    def write_shared(self, resources: list[Json]) -> None:
        for resource in resources:
            self._write(resource)

    def write_patient(self, index: int, patient_id: str, resources: list[Json]) -> None:
        for resource in resources:
            self._write(resource)

    def close(self) -> None:
        for stream in self._files.values():
            stream.close()
        self._files.clear()


def transaction(resources: list[Json]) -> Json:
    """A transaction that PUTs each resource at its id, so loading it twice changes nothing.
    Full URLs are name-based UUIDs of the resource's path; references stay ``Type/id``."""
    entries = []
    for resource in resources:
        path = f"{resource['resourceType']}/{resource['id']}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(_URL_NAMESPACE, path)}",
                "resource": resource,
                "request": {"method": "PUT", "url": path},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class BundleWriter:
    """``shared.json``, then one transaction Bundle per patient in ``NNNN/<patient id>.json``,
    ``PATIENTS_PER_FOLDER`` patients per folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._made: Path | None = None
        self.resources: Counter[str] = Counter()

    def _bundle(self, path: Path, resources: list[Json]) -> None:
        with _open(path) as stream:
            stream.write(dump(transaction(resources)) + "\n")
        self.resources.update(r["resourceType"] for r in resources)

    def write_shared(self, resources: list[Json]) -> None:
        self._bundle(self._folder / SHARED_BUNDLE, resources)

    def write_patient(self, index: int, patient_id: str, resources: list[Json]) -> None:
        folder = self._folder / f"{index // PATIENTS_PER_FOLDER:04d}"
        if folder != self._made:
            folder.mkdir(exist_ok=True)
            self._made = folder
        self._bundle(folder / f"{patient_id}.json", resources)

    def close(self) -> None:
        """Every Bundle is closed as soon as it is written."""
