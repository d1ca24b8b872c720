"""1 FIND and FETCH from a registry: the patients a Group, a List or a file names, then their
records one patient per request, for EHRs that have a registry but no bulk export.

Hospital EHR APIs (Epic, Oracle Health) require a patient on every clinical search, take one
patient per search, and refuse ``_include``, ``_elements``, chained searches and several
``_id`` values. So a record is read the way they allow: each type searched with
``patient=<id>``, every page followed; the Patient read by id; the Medications and studies
the record cites read by id, once per batch. One request per patient and type is the cost of
such an API, so the cohort comes first: only the types that define it (the study's
``discovery`` section: Conditions and medication uses) are read for every registry patient
and judged by the same rule as an export's files (exported.CohortRule), and the rest of the
record only for the cohort.

A Group is read whole: FHIR R4 has no paging of ``Group.member``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fhir_match.cohort import MEDICATION_USES
from fhir_match.errors import ConfigError, FhirError
from fhir_match.exported import CohortRule
from fhir_match.fetch import RecordSearch, search_resources
from fhir_match.fhir import FhirClient
from fhir_match.files import localise_references, map_references
from fhir_match.grouping import group_by_patient
from fhir_match.records import DataIssue, Json, PatientRecord

__all__ = [
    "DECIDING_TYPES",
    "SHARED_TYPES",
    "PatientListBatch",
    "Registry",
    "fetch_cohort",
    "registry",
]

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_REGISTRY_RESOURCE = re.compile(r"(Group|List)/([A-Za-z0-9\-.]{1,64})")
SHARED_TYPES = ("Medication", "ResearchStudy")
"""What a record cites that is in no patient's compartment: read by id, once per batch."""
_GONE = (404, 410)
DECIDING_TYPES = frozenset({"Condition", *MEDICATION_USES})
"""The types whose resources put a patient in the cohort (exported.CohortRule)."""


@dataclass(frozen=True)
class Registry:
    """The patients a registry names, and what in it could not be read as a patient."""

    patients: tuple[str, ...]
    """``Patient/<id>``, sorted, each once."""
    issues: tuple[DataIssue, ...]


def registry(client: FhirClient, source: str) -> Registry:
    """The patients of ``source``: ``Group/<id>`` (its active members), ``List/<id>`` (its
    entries not marked deleted), or else the path of a file of patient ids.

    A registry naming no patient stops the run: a full run would unlist every candidate,
    and an empty registry is far likelier a Group whose members the server leaves out of a
    read (a Bulk Data group) or the wrong file than a hospital with no patients.
    """
    issues: list[DataIssue] = []
    match = _REGISTRY_RESOURCE.fullmatch(source)
    if match is None:
        found = _file_patients(Path(source), issues.append)
    else:
        kind, resource_id = match.groups()
        resource = client.read_json(kind, resource_id)
        members = _group_members if kind == "Group" else _list_items
        found = _resource_patients(client.base_url, source, members(resource), issues.append)
    patients = tuple(sorted(set(found)))
    if not patients:
        unusable = f" ({len(issues)} entries unusable, e.g. {issues[0]})" if issues else ""
        raise ConfigError(f"the patient registry {source} names no patients{unusable}")
    return Registry(patients, tuple(issues))


def _group_members(group: Json) -> Iterator[tuple[str, object]]:
    members = group.get("member")
    for index, member in enumerate(members if isinstance(members, list) else []):
        if isinstance(member, dict) and member.get("inactive") is True:
            continue
        entity = member.get("entity") if isinstance(member, dict) else None
        yield f"member[{index}]", entity.get("reference") if isinstance(entity, dict) else None


def _list_items(patients: Json) -> Iterator[tuple[str, object]]:
    entries = patients.get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and entry.get("deleted") is True:
            continue
        item = entry.get("item") if isinstance(entry, dict) else None
        yield f"entry[{index}]", item.get("reference") if isinstance(item, dict) else None


def _resource_patients(
    base_url: str,
    source: str,
    references: Iterable[tuple[str, object]],
    on_issue: Callable[[DataIssue], None],
) -> Iterator[str]:
    for where, reference in references:
        patient = _patient(reference, base_url)
        if patient is None:
            on_issue(DataIssue(f"{source} {where}", "does not refer to a Patient on this server"))
        else:
            yield patient


def _patient(reference: object, base_url: str) -> str | None:
    """``Patient/<id>`` from a relative, absolute (this server) or versioned reference."""
    if not isinstance(reference, str):
        return None
    local = reference.removeprefix(base_url + "/").split("/_history/")[0]
    kind, _, patient_id = local.partition("/")
    return f"Patient/{patient_id}" if kind == "Patient" and _FHIR_ID.fullmatch(patient_id) else None


def _file_patients(path: Path, on_issue: Callable[[DataIssue], None]) -> Iterator[str]:
    """One patient a line, ``Patient/<id>`` or ``<id>``; blank lines and ``#`` comments are
    skipped. A bad line is reported by file and line, never shown: it may hold anything."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"a patient registry is Group/<id>, List/<id> or a file of patient ids: "
            f"{path} cannot be read ({reason})"
        ) from None
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            on_issue(DataIssue(f"{path}:{number}", "not UTF-8"))
            continue
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        patient_id = text.removeprefix("Patient/")
        if _FHIR_ID.fullmatch(patient_id):
            yield f"Patient/{patient_id}"
        else:
            on_issue(DataIssue(f"{path}:{number}", "not a patient id (Patient/<id> or <id>)"))


# -- records, one patient per request ------------------------------------------------------


@dataclass(frozen=True)
class PatientListBatch:
    """The cohort among a batch of registry patients, with their full records."""

    records: tuple[PatientRecord, ...]
    """The cohort's records, in patient order, as fetch.fetch_records gives them."""
    outside: tuple[str, ...]
    """Patients read and found outside the cohort."""
    issues: tuple[DataIssue, ...]
    """Patients that could not be read (gone from the server, a request that failed)."""
    cohort_requests: int
    """HTTP requests spent deciding who is in the cohort, retries included."""
    record_requests: int
    """HTTP requests spent on the cohort's full records."""


class _Reads:
    """One batch's reads: each patient's resources by type, the shared resources they cite,
    and the patients whose reads failed (a failure costs only its patient)."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self.owned: dict[str, dict[str, Json]] = {}
        self.shared: dict[str, Json] = {}
        self.failed: dict[str, DataIssue] = {}
        self._unreadable: set[str] = set()

    def patients(self, patients: Sequence[str], searches: Sequence[RecordSearch]) -> None:
        """Read ``searches`` for each of ``patients``, requests side by side."""
        jobs = [(p, s) for p in patients for s in searches]
        with ThreadPoolExecutor(self.client.max_concurrency) as pool:
            for patient, found in zip(
                (p for p, _ in jobs), pool.map(lambda job: self._one(*job), jobs), strict=True
            ):
                if isinstance(found, DataIssue):
                    self.failed.setdefault(patient, found)
                    continue
                owned = self.owned.setdefault(patient, {})
                for resource in found:
                    owned.setdefault(f"{resource['resourceType']}/{resource.get('id')}", resource)
        self._read_shared()

    def _one(self, patient: str, search: RecordSearch) -> list[Json] | DataIssue:
        try:
            if search.resource_type == "Patient":
                resource = self.client.read_json("Patient", patient.removeprefix("Patient/"))
                return [localise_references(resource, {})]
            return list(search_resources(self.client, search.one_patient(patient)))
        except FhirError as exc:
            if exc.status in _GONE:
                return DataIssue(patient, "not found on the FHIR server")
            return DataIssue(patient, str(exc))

    def _read_shared(self) -> None:
        """Read what the records cite, and what that cites in turn (a Medication's
        ingredients), each once."""
        cited = self._cited(r for owned in self.owned.values() for r in owned.values())
        while cited:
            with ThreadPoolExecutor(self.client.max_concurrency) as pool:
                read = dict(zip(cited, pool.map(self._shared, cited), strict=True))
            self.shared.update((ref, resource) for ref, resource in read.items() if resource)
            self._unreadable.update(ref for ref, resource in read.items() if not resource)
            cited = self._cited(resource for resource in read.values() if resource)

    def _cited(self, resources: Iterable[Json]) -> list[str]:
        return sorted(
            reference
            for reference in _references_in(resources)
            if reference.partition("/")[0] in SHARED_TYPES
            and reference not in self.shared
            and reference not in self._unreadable
        )

    def _shared(self, reference: str) -> Json | None:
        """A cited resource by id; one that cannot be read is left out, and the record
        evaluated without it, as when a search's ``_include`` finds nothing."""
        kind, _, resource_id = reference.partition("/")
        if not _FHIR_ID.fullmatch(resource_id):
            return None
        try:
            return self.client.read_json(kind, resource_id)
        except FhirError:
            return None

    def record(self, patient: str) -> list[Json]:
        """A patient's resources and the shared resources they cite."""
        owned = list(self.owned.get(patient, {}).values())
        cited = sorted(r for r in _references_in(owned) if r in self.shared)
        return owned + [self.shared[r] for r in cited]


def fetch_cohort(
    client: FhirClient,
    searches: Sequence[RecordSearch],
    rule: CohortRule,
    patients: Sequence[str],
) -> PatientListBatch:
    """The cohort among ``patients`` (``Patient/<id>``) and its records, one patient per
    request: first the types that decide the cohort, for everyone, judged by ``rule`` (the
    same as for an export's files); then the rest of the record (``searches``), the Patient
    included, for the cohort only. A patient whose reads fail is reported and left out; the
    others go on."""
    reads = _Reads(client)
    sent = client.requests
    deciding = [s for s in searches if s.resource_type in DECIDING_TYPES]
    reads.patients(patients, deciding)
    medications = _counting_medications(rule, reads.shared)
    cohort = [
        p
        for p in patients
        if p not in reads.failed and _in_cohort(rule, reads.owned.get(p, {}), medications)
    ]
    decided = client.requests
    reads.patients(cohort, [s for s in searches if s not in deciding])
    found = [p for p in cohort if p not in reads.failed]
    records = group_by_patient(r for p in found for r in reads.record(p))
    wanted = set(found)
    return PatientListBatch(
        records=tuple(record for record in records if record.patient in wanted),
        outside=tuple(p for p in patients if p not in cohort and p not in reads.failed),
        issues=tuple(reads.failed[p] for p in patients if p in reads.failed),
        cohort_requests=decided - sent,
        record_requests=client.requests - decided,
    )


def _counting_medications(rule: CohortRule, shared: Mapping[str, Json]) -> dict[str, Json]:
    """The Medications read that name one of the study's drugs, by reference."""
    medications = {r: m for r, m in shared.items() if r.startswith("Medication/")}
    return {r: m for r, m in medications.items() if rule.medication_counts(m, medications)}


def _in_cohort(
    rule: CohortRule, owned: Mapping[str, Json], medications: Mapping[str, Json]
) -> bool:
    return any(
        (r["resourceType"] == "Condition" and rule.condition_counts(r))
        or (r["resourceType"] in MEDICATION_USES and rule.use_counts(r, medications))
        for r in owned.values()
    )


def _references_in(resources: Iterable[Json]) -> set[str]:
    found: set[str] = set()

    def note(reference: str) -> str:
        found.add(reference)
        return reference

    map_references(list(resources), note)
    return found
