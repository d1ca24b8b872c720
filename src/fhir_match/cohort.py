"""1 FIND: the study's cohort on a FHIR server, by searches over its value sets and names.

Discovery must find every patient who could come out anything but ineligible (the study's
``discovery`` section says who that is). Each search asks only for the patient reference
(``_elements``) and pages through the matches, so finding the cohort costs a few requests
per few hundred matching resources, whatever the size of the hospital.

What a server cannot search is made up for by text: FHIR token search has no is-a for
ICD-10 and no prefix match on codes, so subcodes such as D69.300x001 are found by their
display (``:text``), and medications named only in text by their drug names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from fhir_match.evaluate.study import Study
from fhir_match.fhir import SEARCHES_IN_FLIGHT, FhirClient, Search
from fhir_match.tagging import tag_token
from fhir_match.terminology import (
    DRUG_NAME,
    HIERARCHICAL_SYSTEMS,
    Coding,
    Terminology,
    system_spellings,
)

__all__ = ["COHORT_PAGE_SIZE", "MEDICATION_USES", "cohort_searches", "find_cohort"]

COHORT_PAGE_SIZE = 500
MEDICATION_USES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")


def _tokens(codings: Iterable[Coding]) -> list[str]:
    """``system|code`` tokens, with the system also by its OID (C-CDA-derived FHIR names
    systems so); hierarchical codes also without their dot, as EHRs write both."""
    tokens: dict[str, None] = {}
    for system, code in codings:
        codes = [code]
        if system in HIERARCHICAL_SYSTEMS and "." in code:
            codes.append(code.replace(".", ""))
        for spelling in system_spellings(system):
            tokens.update((f"{spelling}|{written}", None) for written in codes)
    return list(tokens)


def _codings(terminology: Terminology, urls: Iterable[str]) -> list[Coding]:
    return [coding for url in urls for coding in terminology.expansions[url]]


def cohort_searches(study: Study, terminology: Terminology) -> tuple[Search, ...]:
    """Every search whose matches' patients make up the cohort, patient references only."""
    discovery = study.discovery
    searches: list[Search] = []
    condition_codes = _codings(terminology, discovery.condition_value_sets)
    if condition_codes:
        searches.append(Search("Condition").where("code", *_tokens(condition_codes)))
    if discovery.condition_names:
        searches.append(Search("Condition").where("code:text", *discovery.condition_names))
    medication_codings = _codings(terminology, discovery.medication_value_sets)
    codes = _tokens(c for c in medication_codings if c[0] != DRUG_NAME)
    names = sorted(
        {name for s, c in medication_codings if s == DRUG_NAME for name in terminology.names_of(c)}
    )
    for kind in MEDICATION_USES:
        for parameter, values in (("code", codes), ("code:text", names)):
            if values:
                # The drug is in the use itself, or in the Medication it refers to.
                searches.append(Search(kind).where(parameter, *values))
                searches.append(Search(kind).where(f"medication.{parameter}", *values))
    return tuple(s.where("_elements", "subject").count(COHORT_PAGE_SIZE) for s in searches)


def _subjects(page: dict[str, object]) -> Iterator[str]:
    entries = page.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        subject = resource.get("subject") if isinstance(resource, dict) else None
        reference = subject.get("reference") if isinstance(subject, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            yield reference


def find_cohort(client: FhirClient, searches: Iterable[Search], tag: str = "") -> list[str]:
    """The patients (``Patient/<id>``, sorted) any search matches; with a run ``tag``, only
    through resources carrying it (test data on a shared server).

    The searches run side by side: on a large population each costs the server a scan of
    its index, and one run after the other they were most of a repeat run's time.
    """
    if tag:
        searches = [search.where("_tag", tag_token(tag)) for search in searches]

    def patients(search: Search) -> set[str]:
        return {subject for page in client.pages(search) for subject in _subjects(page)}

    with ThreadPoolExecutor(SEARCHES_IN_FLIGHT) as pool:
        return sorted(set().union(*pool.map(patients, searches)))
