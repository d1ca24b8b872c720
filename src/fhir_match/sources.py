"""1 FIND and FETCH: where a study's cohort and its records come from, one way per kind of
FHIR server.

- ``search``: searches by code across every patient find the cohort, and searches naming
  many patients fetch their records (or one ``Patient/$export`` of them). HAPI FHIR and
  other servers that allow population searches.
- ``group-export``: one Bulk Data ``Group/<id>/$export`` of the population group the
  hospital provisions; the cohort is found in the files, and evaluated from them without a
  further request per patient. Hospital EHRs with Bulk Data.
- ``patient-list``: a registry (a Group, a List or a file of ids), then one patient per
  request, the cohort decided from each patient's own record. EHRs with a registry and no
  bulk export.

A way has two steps: :func:`find`, once per run (which patients to look at, and for an
export, their files), and a fetch per batch (:class:`Fetch` says which). Discovery composes
them with normalise, evaluate and write back (discovery.py); nothing else knows the modes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from pathlib import Path

import orjson

from fhir_match.cohort import MEDICATION_USES, find_cohort
from fhir_match.config import CohortSetting
from fhir_match.errors import ConfigError, FatalFhirError
from fhir_match.exported import ExportedCohort, file_type, patients_in, referenced
from fhir_match.fetch import changed_patients, fetch_records
from fhir_match.fhir import SEARCHES_IN_FLIGHT, FhirClient
from fhir_match.fhir.bulk import export
from fhir_match.patient_list import fetch_cohort, registry
from fhir_match.records import DataIssue, Json, PatientRecord
from fhir_match.runtime import StudySetup
from fhir_match.server import ServerAllows

__all__ = [
    "BULK_MAX_POLL_S",
    "Fetch",
    "Fetched",
    "Found",
    "GroupExport",
    "PatientList",
    "Searches",
    "Source",
    "always_full",
    "choose_source",
    "describe",
    "fetch_batch",
    "file_batches",
    "find",
    "read_shared",
]


class Fetch(StrEnum):
    """How a batch's records are fetched, once the run has found its patients."""

    SEARCH = "search"
    """Searches naming many patients at once (``patient=a,b,c``), with ``_include``."""
    PATIENT = "patient"
    """One patient per request; a patient outside the cohort is not fetched in full."""
    FILES = "files"
    """From the run's export files, already downloaded: no request per patient."""


@dataclass(frozen=True)
class Searches:
    """Cohort by code searches; records by multi-patient searches, or with ``bulk`` one
    ``Patient/$export`` of the cohort."""

    bulk: bool = False
    name = "search"


@dataclass(frozen=True)
class GroupExport:
    """The population Group's Bulk Data export; the cohort found in its files."""

    group: str
    name = "group-export"


@dataclass(frozen=True)
class PatientList:
    """A registry (``Group/<id>``, ``List/<id>`` or a file of ids), one patient per request."""

    registry: str
    name = "patient-list"


Source = Searches | GroupExport | PatientList


def choose_source(setting: CohortSetting, allows: ServerAllows, *, bulk: bool = False) -> Source:
    """The way a study's cohort is found on a server: as configured, or (``auto``) the best
    the server offers for what is configured: a group export, a registry read one patient
    at a time, or population searches."""
    if setting.source == "search":
        return Searches(bulk)
    if setting.source == "group-export":
        return GroupExport(setting.group)
    if setting.source == "patient-list":
        return PatientList(setting.registry)
    if setting.group and allows.group_export:
        return GroupExport(setting.group)
    if setting.registry:
        return PatientList(setting.registry)
    if allows.cohort_search:
        return Searches(bulk)
    raise ConfigError(
        "the FHIR server allows no search across patients (a patient is required on every "
        "clinical search): name the hospital's population Group in FHIR_MATCH_COHORT_GROUP, "
        "or a registry in FHIR_MATCH_PATIENT_LIST"
    )


def always_full(source: Source) -> bool:
    """Whether every run of ``source`` must be full: an export of chosen patients has no
    ``_since``, and a registry read patient by patient costs the same either way."""
    return isinstance(source, PatientList) or (isinstance(source, Searches) and source.bulk)


def describe(source: Source) -> str:
    """The way in a few words, for ``status`` and the run record (no patient data)."""
    if isinstance(source, Searches):
        records = ", records by one Patient/$export" if source.bulk else ""
        return f"search (code searches across patients{records})"
    if isinstance(source, GroupExport):
        return f"group-export (Group/{source.group}/$export, cohort found in the files)"
    registry = (
        source.registry
        if source.registry.startswith(("Group/", "List/"))
        else Path(source.registry).name
    )
    return f"patient-list ({registry}, one patient per request)"


BULK_MAX_POLL_S = 10.0
"""Longest wait between status polls of an export. Servers' Retry-After is obeyed below
this; HAPI FHIR always asks for 120 s, whatever the job's progress."""
_SHARED = ("Medication", "ResearchStudy")
"""Resources a record refers to that are in no patient's compartment: not in an export."""
_CITING = (None, "ResearchSubject", *MEDICATION_USES)
"""Files whose resources cite them (None: a file not named by its type)."""


@dataclass(frozen=True)
class Found:
    """Whom a run screens, found once per run, and how their records are fetched."""

    patients: list[str]
    """``Patient/<id>``, sorted: the run's batches."""
    fetch: Fetch
    exported: ExportedCohort | None = None
    """The export's cohort and its records, for :attr:`Fetch.FILES`."""
    issues: list[DataIssue] = field(default_factory=list)
    """What could not be read (an export's error file, a bad line in its files, a bad
    registry line): an export's records add theirs here as they are read."""


def find(
    ehr: FhirClient,
    setup: StudySetup,
    source: Source,
    folder: Path,
    *,
    tag: str = "",
    since: str | None = None,
) -> Found:
    """The run's patients, the ``source`` way; an export is downloaded into ``folder``.

    With a run ``tag``, searches see only resources carrying it (test data on a shared
    server). ``since`` (an instant) makes an incremental run: only patients whose record
    changed since then are fetched again (searches filter per batch).
    """
    types = [s.resource_type for s in setup.records if s.resource_type not in _SHARED]
    issues: list[DataIssue] = []
    if isinstance(source, Searches):
        cohort = find_cohort(ehr, setup.cohort, tag)
        if not source.bulk or not cohort:
            return Found(cohort, Fetch.SEARCH)
        exported = export(
            ehr, folder, types=types, patients=cohort, max_poll_interval_s=BULK_MAX_POLL_S
        )
    elif isinstance(source, GroupExport):
        exported = export(
            ehr,
            folder,
            types=types,
            group=source.group,
            since=since,
            max_poll_interval_s=BULK_MAX_POLL_S,
        )
    else:
        listed = registry(ehr, source.registry)
        return Found(list(listed.patients), Fetch.PATIENT, issues=list(listed.issues))
    issues += [DataIssue("bulk export", error) for error in exported.errors]
    if since is not None:
        # changed resources only, not whole records: those patients are fetched one by one
        changed = patients_in(exported.files, issues.append)
        return Found(sorted(changed), Fetch.PATIENT, issues=issues)
    files = [*exported.files, *_shared_files(ehr, exported.files, folder, issues.append)]
    cohort_of = ExportedCohort(files, setup.cohort_rule, issues.append, folder)
    return Found(sorted(cohort_of.cohort), Fetch.FILES, cohort_of, issues)


def _shared_files(
    ehr: FhirClient, files: Sequence[Path], folder: Path, on_issue: Callable[[DataIssue], None]
) -> list[Path]:
    """The Medications and ResearchStudies an export's records refer to, read by id into
    ``folder``: an export holds only the patients' compartments, and the cohort rule and the
    records need the drugs their uses name by reference."""
    citing = [path for path in files if file_type(path) in _CITING]
    found = read_shared(ehr, referenced(citing, _SHARED), on_issue)
    if not found:
        return []
    path = folder / "shared.ndjson"
    path.write_bytes(b"".join(orjson.dumps(resource) + b"\n" for resource in found.values()))
    return [path]


def _named(resource: Json) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def read_shared(
    ehr: FhirClient, references: Iterable[str], on_issue: Callable[[DataIssue], None]
) -> dict[str, Json]:
    """Shared resources (``Medication/<id>``) read one by one, as every EHR allows (several
    ``_id`` values in one search, or ``_include``, many do not); one that cannot be read is
    reported, and the records are evaluated without it."""

    def read(reference: str) -> Json | None:
        kind, _, resource_id = reference.partition("/")
        try:
            answer = ehr.read_json(kind, resource_id)
        except FatalFhirError as exc:  # costs only this resource; a transient one is retried
            gone = exc.status in (404, 410)
            on_issue(DataIssue(reference, "not found on the FHIR server" if gone else str(exc)))
            return None
        if _named(answer) != reference:
            on_issue(DataIssue(reference, "the server did not answer the resource asked for"))
            return None
        return answer

    wanted = sorted(set(references))
    with ThreadPoolExecutor(SEARCHES_IN_FLIGHT) as pool:
        answers = list(pool.map(read, wanted))
    return {reference: answer for reference, answer in zip(wanted, answers, strict=True) if answer}


@dataclass
class Fetched:
    """A batch's records, and who of its patients is not in the cohort after all."""

    records: list[PatientRecord]
    outside: list[str] = field(default_factory=list)
    """Patients whose own record puts them outside the cohort (one patient per request)."""
    unchanged: int = 0
    """Patients an incremental run skipped: nothing in their record changed."""


def fetch_batch(
    ehr: FhirClient,
    setup: StudySetup,
    fetch: Fetch,
    patients: Sequence[str],
    on_issue: Callable[[DataIssue], None],
    *,
    since: str | None = None,
    ignore: Callable[[Json], bool] = lambda resource: False,
) -> Fetched:
    """The records of one batch of ``patients`` from the server.

    With ``since``, only patients with a resource of their record changed since then
    (``ignore`` tells what fhir-match wrote itself, which is no change).
    """
    if fetch is Fetch.SEARCH:
        unchanged = 0
        if since is not None:
            changed = changed_patients(ehr, setup.records, patients, since, ignore)
            unchanged = len(patients) - len(changed)
            patients = [p for p in patients if p in changed]
        records = fetch_records(ehr, setup.records, patients, on_issue) if patients else []
        return Fetched(records, unchanged=unchanged)
    if fetch is Fetch.PATIENT:
        batch = fetch_cohort(ehr, setup.records, setup.cohort_rule, patients)
        for issue in batch.issues:
            on_issue(issue)
        return Fetched(list(batch.records), outside=list(batch.outside))
    raise ValueError(f"a batch cannot be fetched the {fetch} way")


def file_batches(found: Found, size: int) -> Iterator[list[PatientRecord]]:
    """The records of an export's cohort, ``size`` patients at a time."""
    records = found.exported.records() if found.exported else iter(())
    while batch := list(islice(records, size)):
        yield batch
