"""A study's runtime: what a process reads from disk once per study (the rules, terminology,
the searches that find its cohort and make up a record), shared by every step of a run."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fhir_match.cohort import cohort_searches
from fhir_match.evaluate.engine import retrieved_types, translate_cql
from fhir_match.evaluate.study import Study, load_study
from fhir_match.exported import CohortRule
from fhir_match.fetch import RecordSearch, record_searches
from fhir_match.fhir import Search
from fhir_match.normalise import Normaliser
from fhir_match.screen import load_normaliser

__all__ = ["StudySetup", "study_setup"]


@dataclass(frozen=True)
class StudySetup:
    """What a process reads from disk once per study: the rules, terminology and searches."""

    study: Study
    normaliser: Normaliser
    cohort: tuple[Search, ...]
    """The searches that find the cohort on a server."""
    cohort_rule: CohortRule
    """The same rule applied to records read: an export's, or one patient's."""
    records: tuple[RecordSearch, ...]


@functools.cache
def study_setup(study_id: str) -> StudySetup:
    study = load_study(study_id)
    translate_cql()
    normaliser = load_normaliser(study)
    return StudySetup(
        study=study,
        normaliser=normaliser,
        cohort=cohort_searches(study, normaliser.terminology),
        cohort_rule=CohortRule.of(study, normaliser.terminology),
        records=record_searches(retrieved_types(study.library, study.library_version)),
    )
