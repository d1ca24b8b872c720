"""Group a stream of resources by patient without holding the population in memory.

Resources arrive in any order (Bulk Data NDJSON comes one resource type per file), so they
are spilled to a temporary SQLite file keyed by patient and read back one patient at a time.
Resources that belong to no patient (Medication, ResearchStudy, ...) are kept once and
attached to each patient whose resources reference them.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_match.files import loads, map_references, references_in_text
from fhir_match.records import Json, PatientRecord

__all__ = ["group_by_patient", "patient_of"]

_PATIENT_FIELDS = ("subject", "patient", "individual", "beneficiary")
_BATCH_ROWS = 5000


def patient_of(resource: Json) -> str | None:
    """``Patient/<id>`` of the patient a resource belongs to, or None for shared resources."""
    if resource["resourceType"] == "Patient":
        return f"Patient/{resource['id']}" if "id" in resource else None
    for field in _PATIENT_FIELDS:
        value = resource.get(field)
        if isinstance(value, dict):
            reference = value.get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/"):
                return reference
    return None


def _references(value: Any) -> set[str]:
    found: set[str] = set()

    def note(reference: str) -> str:
        found.add(reference)
        return reference

    map_references(value, note)
    return found


def group_by_patient(
    resources: Iterable[Json], spill_dir: Path | None = None
) -> Iterator[PatientRecord]:
    """One PatientRecord per patient, in patient-reference order.

    Patients referenced by resources but without a Patient resource still get a record, so
    their data is evaluated (and reported as missing demographics) rather than lost.
    """
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="fhir-match-") as folder:
        db = sqlite3.connect(Path(folder) / "group.sqlite")
        try:
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE owned (patient TEXT, is_patient INTEGER, seq INTEGER, body BLOB);"
                "CREATE TABLE shared (ref TEXT PRIMARY KEY, body BLOB);"
            )
            _spill(db, resources)
            db.execute("CREATE INDEX owned_by_patient ON owned (patient, is_patient DESC, seq)")
            yield from _read_back(db)
        finally:
            db.close()


def _spill(db: sqlite3.Connection, resources: Iterable[Json]) -> None:
    owned: list[tuple[str, int, int, bytes]] = []
    shared: list[tuple[str, bytes]] = []
    for seq, resource in enumerate(resources):
        body = orjson.dumps(resource)
        patient = patient_of(resource)
        if patient is not None:
            owned.append((patient, resource["resourceType"] == "Patient", seq, body))
        elif "id" in resource:
            shared.append((f"{resource['resourceType']}/{resource['id']}", body))
        if len(owned) + len(shared) >= _BATCH_ROWS:
            _flush(db, owned, shared)
    _flush(db, owned, shared)


def _flush(
    db: sqlite3.Connection,
    owned: list[tuple[str, int, int, bytes]],
    shared: list[tuple[str, bytes]],
) -> None:
    db.executemany("INSERT INTO owned VALUES (?, ?, ?, ?)", owned)
    db.executemany("INSERT OR REPLACE INTO shared VALUES (?, ?)", shared)
    owned.clear()
    shared.clear()


def _read_back(db: sqlite3.Connection) -> Iterator[PatientRecord]:
    rows = db.execute("SELECT patient, body FROM owned ORDER BY patient, is_patient DESC, seq")
    current: str | None = None
    bodies: list[Json] = []
    references: set[str] = set()
    for patient, body in rows:
        if patient != current and current is not None:
            yield _record(db, current, bodies, references)
            bodies = []
            references = set()
        current = patient
        resource = loads(body)
        bodies.append(resource)
        found = references_in_text(body)
        references.update(found if found is not None else _references(resource))
    if current is not None:
        yield _record(db, current, bodies, references)


def _record(
    db: sqlite3.Connection, patient: str, resources: list[Json], references: set[str]
) -> PatientRecord:
    wanted = sorted(ref for ref in references if not ref.startswith("Patient/"))
    attached: list[Json] = []
    if wanted:
        marks = ",".join("?" * len(wanted))
        query = f"SELECT body FROM shared WHERE ref IN ({marks}) ORDER BY ref"  # noqa: S608
        attached = [loads(body) for (body,) in db.execute(query, wanted)]
    return PatientRecord(patient, (*resources, *attached))
