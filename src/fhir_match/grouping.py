"""Group a stream of resources by patient without holding the population in memory.

Resources arrive in any order (Bulk Data NDJSON comes one resource type per file), so they
are spilled to a temporary SQLite file keyed by patient and read back one patient at a time.
Resources that belong to no patient (Medication, ResearchStudy, ...) are kept once and
attached to each patient whose resources reference them.

What cannot be placed without guessing is reported and left out, never attached to the wrong
patient: a record whose patient reference cannot be resolved (a display only, a Group, an
identifier no Patient or several Patients carry), a Patient without an id, a second copy of a
resource that differs from the first, and a shared resource (a Medication id) given twice
with different content.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from fhir_match.files import Located, loads, map_references, references_in_text
from fhir_match.records import RECORD_TYPES, DataIssue, Json, PatientRecord

__all__ = [
    "IDENTIFIER_OWNER",
    "group_by_patient",
    "group_located",
    "identifier_keys",
    "owner_key",
    "patient_of",
]

_PATIENT_FIELDS = ("subject", "patient", "individual", "beneficiary")
_PATIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
"""A FHIR id, as a reference to a Patient must end in."""
_BATCH_ROWS = 5000
_REFS_PER_QUERY = 500
"""References looked up per query: SQLite limits the parameters of one statement."""
IDENTIFIER_OWNER = "identifier:"
"""Owner key of a record that names its patient by identifier only, resolved after reading."""

OnIssue = Callable[[DataIssue], None]


def patient_of(resource: Json) -> str | None:
    """``Patient/<id>`` of the patient a resource belongs to, or None for shared resources."""
    owner = owner_key(resource)
    return owner if owner is not None and owner.startswith("Patient/") else None


def owner_key(resource: Json) -> str | None:
    """``Patient/<id>``; ``identifier:system|value`` (or ``identifier:value``) for a patient
    named by identifier; "" for a patient reference that cannot be resolved; None for a
    resource that names no patient."""
    if resource["resourceType"] == "Patient":
        return f"Patient/{resource['id']}" if isinstance(resource.get("id"), str) else ""
    for field in _PATIENT_FIELDS:
        value = resource.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            return ""
        reference = value.get("reference")
        if isinstance(reference, str):
            return _referenced_owner(reference)
        return _identifier_owner(value.get("identifier"))
    return None


def _referenced_owner(reference: str) -> str:
    if reference.startswith("Patient/"):
        return reference if _PATIENT_ID.fullmatch(reference, len("Patient/")) else ""
    if reference.startswith("Patient?identifier=") and "&" not in reference:
        token = unquote(reference.removeprefix("Patient?identifier="))
        return f"{IDENTIFIER_OWNER}{token.removeprefix('|') if token.startswith('|') else token}"
    return ""


def _identifier_owner(identifier: Any) -> str:
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return ""
    system = identifier.get("system")
    value = identifier["value"]
    return (
        f"{IDENTIFIER_OWNER}{system}|{value}"
        if isinstance(system, str)
        else IDENTIFIER_OWNER + value
    )


def identifier_keys(patient: Json) -> set[str]:
    """The owner keys by which records may name this Patient: system|value and value alone."""
    keys: set[str] = set()
    identifiers = patient.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            keys.add(IDENTIFIER_OWNER + identifier["value"])
            if isinstance(identifier.get("system"), str):
                keys.add(f"{IDENTIFIER_OWNER}{identifier['system']}|{identifier['value']}")
    return keys


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
    """One PatientRecord per patient (see group_located), for resources whose origin is
    their own reference (a server's answer); what cannot be placed is left out."""
    located = (Located(r, f"{r['resourceType']}/{r.get('id', '?')}") for r in resources)
    return group_located(located, lambda issue: None, spill_dir)


def group_located(
    resources: Iterable[Located], on_issue: OnIssue, spill_dir: Path | None = None
) -> Iterator[PatientRecord]:
    """One PatientRecord per patient, in patient-reference order, each resource's origin kept.

    Patients referenced by resources but without a Patient resource still get a record, so
    their data is evaluated (and reported as missing demographics) rather than lost.
    """
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="fhir-match-") as folder:
        db = sqlite3.connect(Path(folder) / "group.sqlite")
        try:
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE owned"
                " (patient TEXT, is_patient INTEGER, seq INTEGER, body BLOB, origin TEXT);"
                "CREATE TABLE shared (ref TEXT PRIMARY KEY, body BLOB);"
                "CREATE TABLE known (key TEXT, patient TEXT);"
            )
            conflicts = _spill(db, resources, on_issue)
            _resolve_identifiers(db, on_issue)
            db.execute("CREATE INDEX owned_by_patient ON owned (patient, is_patient DESC, seq)")
            yield from _read_back(db, conflicts, on_issue)
        finally:
            db.close()


def _spill(db: sqlite3.Connection, resources: Iterable[Located], on_issue: OnIssue) -> set[str]:
    """Write every resource to the spill file; the references of shared resources given twice
    with different content, which are left out."""
    owned: list[tuple[str, int, int, bytes, str]] = []
    shared: list[tuple[str, bytes]] = []
    known: list[tuple[str, str]] = []
    first_shared: dict[str, tuple[bytes, str]] = {}
    conflicts: set[str] = set()
    for seq, (resource, where) in enumerate(resources):
        try:
            body = orjson.dumps(resource)
        except orjson.JSONEncodeError:
            on_issue(DataIssue(where, "cannot be stored: not plain JSON (too deep or too large)"))
            continue
        kind = resource["resourceType"]
        owner = owner_key(resource)
        if owner == "" and kind == "Patient":
            on_issue(DataIssue(where, "Patient without an id: not used"))
        elif owner == "" and kind in RECORD_TYPES:
            on_issue(DataIssue(where, f"{kind}'s patient reference cannot be resolved: not used"))
        elif owner is None and kind in RECORD_TYPES:
            on_issue(DataIssue(where, f"{kind} names no patient: not used"))
        elif owner:
            owned.append((owner, kind == "Patient", seq, body, where))
            if kind == "Patient":
                known.extend((key, owner) for key in identifier_keys(resource))
        elif "id" in resource:
            ref = f"{kind}/{resource['id']}"
            if ref not in first_shared:
                first_shared[ref] = (body, where)
                shared.append((ref, body))
            elif first_shared[ref][0] != body and ref not in conflicts:
                conflicts.add(ref)
                on_issue(
                    DataIssue(
                        where,
                        f"{ref} differs from the one read at {first_shared[ref][1]}: "
                        "neither is used",
                    )
                )
        if len(owned) + len(shared) + len(known) >= _BATCH_ROWS:
            _flush(db, owned, shared, known)
    _flush(db, owned, shared, known)
    return conflicts


def _flush(
    db: sqlite3.Connection,
    owned: list[tuple[str, int, int, bytes, str]],
    shared: list[tuple[str, bytes]],
    known: list[tuple[str, str]],
) -> None:
    db.executemany("INSERT INTO owned VALUES (?, ?, ?, ?, ?)", owned)
    db.executemany("INSERT INTO shared VALUES (?, ?)", shared)
    db.executemany("INSERT INTO known VALUES (?, ?)", known)
    owned.clear()
    shared.clear()
    known.clear()


def _resolve_identifiers(db: sqlite3.Connection, on_issue: OnIssue) -> None:
    """Records that name their patient by identifier go to the one Patient carrying it; with
    none or several, they are reported and left out."""
    rows = db.execute(
        "SELECT rowid, patient, origin FROM owned WHERE patient >= ? AND patient < ?",
        (IDENTIFIER_OWNER, IDENTIFIER_OWNER[:-1] + ";"),
    ).fetchall()
    for rowid, key, origin in rows:
        patients = {p for (p,) in db.execute("SELECT patient FROM known WHERE key = ?", (key,))}
        if len(patients) == 1:
            db.execute("UPDATE owned SET patient = ? WHERE rowid = ?", (patients.pop(), rowid))
            continue
        db.execute("DELETE FROM owned WHERE rowid = ?", (rowid,))
        found = "no Patient" if not patients else f"{len(patients)} Patients"
        on_issue(DataIssue(origin, f"names its patient by an identifier {found} carry: not used"))


def _read_back(
    db: sqlite3.Connection, conflicts: set[str], on_issue: OnIssue
) -> Iterator[PatientRecord]:
    rows = db.execute(
        "SELECT patient, body, origin FROM owned ORDER BY patient, is_patient DESC, seq"
    )
    current: str | None = None
    bodies: dict[str, tuple[bytes, str]] = {}
    resources: list[Json] = []
    references: set[str] = set()
    for patient, body, origin in rows:
        if patient != current and current is not None:
            yield _record(db, current, resources, references, bodies, conflicts)
            bodies, resources, references = {}, [], set()
        current = patient
        resource = loads(body)
        ref = f"{resource['resourceType']}/{resource.get('id', '')}"
        if "id" in resource and ref in bodies:
            if bodies[ref][0] != body:
                on_issue(
                    DataIssue(
                        origin,
                        f"{ref} differs from the one read at {bodies[ref][1]}"
                        ": this copy is not used",
                    )
                )
            continue
        bodies[ref] = (body, origin)
        resources.append(resource)
        found = references_in_text(body)
        references.update(found if found is not None else _references(resource))
    if current is not None:
        yield _record(db, current, resources, references, bodies, conflicts)


def _record(
    db: sqlite3.Connection,
    patient: str,
    resources: list[Json],
    references: set[str],
    origins: dict[str, tuple[bytes, str]],
    conflicts: set[str],
) -> PatientRecord:
    wanted = sorted(r for r in references if not r.startswith("Patient/") and r not in conflicts)
    found: list[tuple[str, bytes]] = []
    for start in range(0, len(wanted), _REFS_PER_QUERY):
        chunk = wanted[start : start + _REFS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT ref, body FROM shared WHERE ref IN ({marks})"  # noqa: S608
        found.extend(db.execute(query, chunk))
    attached = [loads(body) for _, body in sorted(found)]
    where = {ref: origin for ref, (_, origin) in origins.items()}
    return PatientRecord(patient, (*resources, *attached), where)
