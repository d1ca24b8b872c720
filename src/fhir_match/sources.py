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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from pathlib import Path

from fhir_match.cohort import find_cohort
from fhir_match.config import CohortSetting
from fhir_match.errors import ConfigError
from fhir_match.exported import CohortRule
from fhir_match.fetch import PAGE_SIZE, changed_patients, fetch_records, patient_chunks
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.bulk import export
from fhir_match.files import map_references, read_resources
from fhir_match.grouping import group_by_patient
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


@dataclass(frozen=True)
class Found:
    """Whom a run screens, found once per run, and how their records are fetched."""

    patients: list[str]
    """``Patient/<id>``, sorted: the run's batches."""
    fetch: Fetch
    files: tuple[Path, ...] = ()
    """The export's files, for :attr:`Fetch.FILES`."""
    issues: tuple[DataIssue, ...] = ()
    """What could not be read while finding (an export's error file, a bad registry line)."""


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
    if isinstance(source, Searches):
        cohort = find_cohort(ehr, setup.cohort, tag)
        if not source.bulk or not cohort:
            return Found(cohort, Fetch.SEARCH)
        types = [s.resource_type for s in setup.records]
        exported = export(
            ehr, folder, types=types, patients=cohort, max_poll_interval_s=BULK_MAX_POLL_S
        )
        issues = tuple(DataIssue("bulk export", error) for error in exported.errors)
        return Found(cohort, Fetch.FILES, tuple(exported.files), issues)
    if isinstance(source, PatientList):
        listed = registry(ehr, source.registry)
        return Found(list(listed.patients), Fetch.PATIENT, issues=listed.issues)
    raise NotImplementedError(source.name)


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
        rule = CohortRule.of(setup.study, setup.normaliser.terminology)
        batch = fetch_cohort(ehr, setup.records, rule, patients)
        for issue in batch.issues:
            on_issue(issue)
        return Fetched(list(batch.records), outside=list(batch.outside))
    raise ValueError(f"a batch cannot be fetched the {fetch} way")


def file_batches(
    ehr: FhirClient,
    patients: Sequence[str],
    files: Sequence[Path],
    size: int,
    on_issue: Callable[[DataIssue], None],
) -> Iterator[list[PatientRecord]]:
    """The records of ``patients`` from an export's ``files``, ``size`` patients at a time,
    with the Medications and ResearchStudies they refer to read from the server by id."""
    wanted = set(patients)
    resources = read_resources(files, on_issue)
    records = (r for r in group_by_patient(resources) if r.patient in wanted)
    while batch := list(islice(records, size)):
        yield _with_shared(ehr, batch)


def _references_in(resources: Sequence[Json]) -> set[str]:
    found: set[str] = set()

    def note(reference: str) -> str:
        found.add(reference)
        return reference

    map_references(list(resources), note)
    return found


def _with_shared(client: FhirClient, records: Sequence[PatientRecord]) -> list[PatientRecord]:
    """The records with the Medications and ResearchStudies they refer to, read by id."""
    wanted = {
        reference
        for record in records
        for reference in _references_in(record.resources)
        if reference.partition("/")[0] in _SHARED and reference.count("/") == 1
    }
    found: dict[str, Json] = {}
    for kind in _SHARED:
        ids = sorted(r.partition("/")[2] for r in wanted if r.startswith(f"{kind}/"))
        for chunk in patient_chunks(ids):
            search = Search(kind).where("_id", *chunk).count(PAGE_SIZE)
            for page in client.pages(search):
                for entry in page.get("entry") or []:
                    resource = entry.get("resource") or {}
                    found[f"{kind}/{resource.get('id')}"] = resource
    return [
        PatientRecord(
            record.patient,
            record.resources
            + tuple(found[r] for r in sorted(_references_in(record.resources)) if r in found),
        )
        for record in records
    ]
