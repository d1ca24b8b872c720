"""1 FIND + FETCH in files: a study's cohort and its records in a folder of exported NDJSON.

A Bulk Data export of a hospital's population holds every patient, and only a few in a
hundred could be anything but ineligible. The cohort is found first, by the rule of the
cohort searches (cohort.py) applied to the exported Conditions and medication uses with the
normaliser's terminology (system spellings and OIDs, dotted or dotless ICD-10, subcodes,
drug names in English and Chinese). Then every file is read again and only the cohort's
resources are kept and grouped, so the engine sees the cohort alone and memory does not grow
with the population.

The rule is inclusive: where the search takes a name at the start of a text (``:text``) and
the rules anywhere in it, a name anywhere in the text counts here, and a code counts in any
spelling the normaliser reads. A patient the search mode finds is never left out.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fhir_match.cohort import MEDICATION_USES
from fhir_match.evaluate.study import Study
from fhir_match.files import OnIssue, localise_references, map_references, read_located
from fhir_match.grouping import IDENTIFIER_OWNER, group_located, identifier_keys, owner_key
from fhir_match.normalise import drug_concept, medication_concept
from fhir_match.records import DataIssue, Json, PatientRecord
from fhir_match.terminology import DRUG_NAME, Terminology, canonical_system

__all__ = ["CohortRule", "ExportedCohort", "file_type", "patients_in", "referenced"]

_TYPE_NAMED = re.compile(r"([A-Z][A-Za-z]+)(?:[-_.]\d+)*\.(?:ndjson|jsonl)(?:\.gz)?")
"""A Bulk Data file named by its one resource type: Condition.ndjson, Condition-2.ndjson."""


def file_type(path: Path) -> str | None:
    """The one resource type a file's name says it holds, or None (a Bundle, a mixed file)."""
    match = _TYPE_NAMED.fullmatch(path.name)
    return match.group(1) if match else None


@lru_cache(maxsize=4096)
def _folded(text: str) -> str:
    """Text as a server's ``:text`` search compares it: accents dropped, case folded. Records
    repeat their texts (the same diagnosis, the same drug), so answers are remembered."""
    if text.isascii():
        return text.casefold()
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _any_of(names: Iterable[str]) -> re.Pattern[str]:
    """One expression that finds any of the (folded) names anywhere in a folded text."""
    return re.compile("|".join(re.escape(_folded(name)) for name in names) or "(?!)")


def _codings(concept: object) -> Iterator[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                yield canonical_system(system), code.strip()


def _texts(concept: object) -> Iterator[str]:
    if not isinstance(concept, dict):
        return
    if isinstance(concept.get("text"), str):
        yield concept["text"]
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            yield coding["display"]


@dataclass(frozen=True)
class CohortRule:
    """Who the study's discovery must find, judged on one resource at a time."""

    terminology: Terminology
    condition_value_sets: frozenset[str]
    condition_names: re.Pattern[str]
    """Finds a condition name in a text folded by _folded."""
    medication_value_sets: frozenset[str]
    drug_names: re.Pattern[str]
    """Finds the name of a drug in the medication value sets in a folded text."""

    @classmethod
    def of(cls, study: Study, terminology: Terminology) -> CohortRule:
        discovery = study.discovery
        drugs = {
            code
            for url in discovery.medication_value_sets
            for system, code in terminology.expansions[url]
            if system == DRUG_NAME
        }
        return cls(
            terminology=terminology,
            condition_value_sets=frozenset(discovery.condition_value_sets),
            condition_names=_any_of(discovery.condition_names),
            medication_value_sets=frozenset(discovery.medication_value_sets),
            drug_names=_any_of(n for code in sorted(drugs) for n in terminology.names_of(code)),
        )

    def _names(self, concept: object, value_sets: frozenset[str], names: re.Pattern[str]) -> bool:
        """Whether a concept has a code in the value sets or a text or display with a name."""
        value_sets_of = self.terminology.value_sets_of
        if any(value_sets & value_sets_of(system, code) for system, code in _codings(concept)):
            return True
        return any(names.search(_folded(text)) for text in _texts(concept))

    def condition_counts(self, condition: Json) -> bool:
        """Whether a Condition puts its patient in the cohort (any status)."""
        return self._names(condition.get("code"), self.condition_value_sets, self.condition_names)

    def medication_counts(self, medication: Json, medications: Mapping[str, Json]) -> bool:
        """Whether a Medication names one of the study's drugs (code, ingredients, text)."""
        concept = medication_concept(medication, medications, self.terminology)
        return self._names(concept, self.medication_value_sets, self.drug_names)

    def use_counts(self, use: Json, medications: Mapping[str, Json]) -> bool:
        """Whether a medication use puts its patient in the cohort: its drug as the rules read
        it (``medications``: the Medications that count, by ``Medication/<id>``)."""
        concept = drug_concept(use, medications, self.terminology)
        return self._names(concept, self.medication_value_sets, self.drug_names)


def _discard(issue: DataIssue) -> None:
    """Finding reads files the records are read from again: issues are reported then, once."""


def _has_referenced_ingredient(medication: Json) -> bool:
    ingredients = medication.get("ingredient")
    return isinstance(ingredients, list) and any(
        isinstance(i, dict) and "itemReference" in i for i in ingredients
    )


def _owner_of(resource: Json) -> str | None:
    """grouping.owner_key of a resource whose references may not be local yet."""
    owner = owner_key(resource)
    if owner == "" and resource["resourceType"] != "Patient":
        return owner_key(localise_references(resource, {}))  # an absolute reference
    return owner


def _read_all(paths: Iterable[Path], note: Callable[[Json], None]) -> None:
    """Show ``note`` every well-formed resource in ``paths``: finding keeps nothing else."""

    def keep(resource: Json) -> bool:
        note(resource)
        return False

    for _ in read_located(paths, _discard, keep):
        pass


def _medications(paths: Iterable[Path], rule: CohortRule) -> dict[str, Json]:
    """The Medications (``Medication/<id>``) that name one of the study's drugs. One whose
    ingredient is another resource is judged with the others read (which it may refer to)."""
    read: dict[str, Json] = {}

    def note(medication: Json) -> None:
        if (
            medication["resourceType"] == "Medication"
            and isinstance(medication.get("id"), str)
            and (rule.medication_counts(medication, {}) or _has_referenced_ingredient(medication))
        ):
            read[f"Medication/{medication['id']}"] = medication

    _read_all(paths, note)
    return {ref: m for ref, m in read.items() if rule.medication_counts(m, read)}


def _owners(paths: Iterable[Path], rule: CohortRule, medications: Mapping[str, Json]) -> set[str]:
    """The owner keys (see grouping.owner_key) of every resource that puts a patient in the
    cohort."""
    owners: set[str] = set()

    def note(resource: Json) -> None:
        kind = resource["resourceType"]
        if (kind == "Condition" and rule.condition_counts(resource)) or (
            kind in MEDICATION_USES and rule.use_counts(resource, medications)
        ):
            owner = _owner_of(resource)
            if owner:
                owners.add(owner)

    _read_all(paths, note)
    return owners


def _with_patients(paths: Iterable[Path], owners: set[str]) -> set[str]:
    """The owners, with each Patient named by one of their identifiers, and each of their
    Patients' identifiers (by which their other records may name them)."""
    cohort = set(owners)

    def note(patient: Json) -> None:
        owner = owner_key(patient) if patient["resourceType"] == "Patient" else None
        keys = identifier_keys(patient) if owner else set()
        if owner and (owner in owners or keys & owners):
            cohort.add(owner)
            cohort.update(keys)

    _read_all(paths, note)
    return cohort


class ExportedCohort:
    """The cohort found in exported files (at construction) and its records (read lazily)."""

    def __init__(
        self, paths: Sequence[Path], rule: CohortRule, on_issue: OnIssue, spill_dir: Path | None
    ) -> None:
        """Find the cohort in ``paths``: the Medications first, then the Conditions and
        medication uses, then the Patients (records may name a patient by identifier)."""
        types = {path: file_type(path) for path in paths}

        def holding(*kinds: str) -> list[Path]:
            return [p for p in paths if types[p] is None or types[p] in kinds]

        medications = _medications(holding("Medication"), rule)
        owners = _owners(holding(*MEDICATION_USES, "Condition"), rule, medications)
        self._keys = _with_patients(holding("Patient"), owners)
        self.cohort = frozenset(k for k in self._keys if k.startswith("Patient/"))
        """``Patient/<id>`` of every patient in the cohort."""
        self.outside = 0
        """Patients read that are not in the cohort (counted while the records are read)."""
        self._named_by_identifier: set[str] = set()
        self._paths = paths
        self._on_issue = on_issue
        self._spill_dir = spill_dir

    def _keep(self, resource: Json) -> bool:
        """Whether a resource belongs to the cohort's records: the cohort's own, what names no
        patient (a Medication), and what grouping must resolve or report: a reference it
        cannot read, a patient named by an identifier, and the Patients that carry one."""
        owner = _owner_of(resource)
        if not owner or owner in self._keys:
            return True
        if owner.startswith(IDENTIFIER_OWNER):
            self._named_by_identifier.add(owner)
            return True
        if resource["resourceType"] != "Patient":
            return False
        if self._named_by_identifier and identifier_keys(resource) & self._named_by_identifier:
            return True
        self.outside += 1
        return False

    def records(self) -> Iterator[PatientRecord]:
        """The cohort's records, one per patient, in patient-reference order (as the full
        read gives them for these patients). Patient files are read last, so that a Patient
        another patient's record names by identifier is known to be needed when it is read."""
        paths = sorted(self._paths, key=lambda path: file_type(path) == "Patient")
        resources = read_located(paths, self._on_issue, self._keep)
        for record in group_located(resources, self._on_issue, self._spill_dir):
            if record.patient in self.cohort:
                yield record
            else:
                self.outside += 1


def patients_in(paths: Sequence[Path], on_issue: OnIssue) -> set[str]:
    """``Patient/<id>`` of every patient a resource in ``paths`` belongs to: whose record an
    incremental export (``_since``) says has changed."""
    patients: set[str] = set()

    def keep(resource: Json) -> bool:
        owner = _owner_of(resource)
        if owner and owner.startswith("Patient/"):
            patients.add(owner)
        return False

    for _ in read_located(paths, on_issue, keep):
        pass
    return patients


def referenced(paths: Sequence[Path], kinds: Iterable[str]) -> set[str]:
    """Every ``<kind>/<id>`` reference of one of ``kinds`` in the resources of ``paths`` (the
    Medications the uses name), as the records will resolve them. Bad lines are reported
    when the records are read, not here."""
    found: set[str] = set()
    prefixes = tuple(f"{kind}/" for kind in kinds)

    def note(reference: str) -> str:
        if reference.startswith(prefixes) and reference.count("/") == 1:
            found.add(reference)
        return reference

    def keep(resource: Json) -> bool:
        map_references([localise_references(resource, {})], note)
        return False

    for _ in read_located(paths, _discard, keep):
        pass
    return found
