"""Criteria cases as data: one YAML file per criterion, each case a patient and the result.

A case file looks like::

    criterion: inc-3
    as_of: 2026-06-01          # the screening date (default for every case)
    cases:
      - name: two low counts on different days
        resources:             # the patient's resources; subject/patient refs are filled in
          - {resourceType: Observation, id: a, ...}
        result: met
        evidence: [Observation/a, Observation/b]   # optional: exactly these, any order
        summary: "18 and 22"                       # optional: a part of the summary

Every case runs through the real pipeline: normalise, the CQL library on the official engine,
and the outcome rule. The Patient is added unless the case gives one (or ``no_patient: true``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_match.evaluate.engine import NodeCqlEngine, translate_cql
from fhir_match.evaluate.study import Study, load_study
from fhir_match.normalise import Normaliser
from fhir_match.screen import load_normaliser

CASES_DIR = Path(__file__).parent / "cases"
PATIENT_ID = "case"
_SUBJECT_FIELD = {"AllergyIntolerance": "patient", "ResearchSubject": "individual"}
_SHARED = {"Medication", "ResearchStudy", "Practitioner", "Organization", "Substance"}


@dataclass(frozen=True)
class Case:
    file: str
    criterion: str
    name: str
    as_of: date
    resources: tuple[dict[str, Any], ...]
    result: str
    evidence: tuple[str, ...] | None
    summary: str | None
    outcome: str | None

    @property
    def id(self) -> str:
        return f"{self.criterion}: {self.name}"


def _with_subject(resource: dict[str, Any]) -> dict[str, Any]:
    resource = copy.deepcopy(resource)
    kind = resource["resourceType"]
    if kind in _SHARED or kind == "Patient":
        return resource
    field = _SUBJECT_FIELD.get(kind, "subject")
    resource.setdefault(field, {"reference": f"Patient/{PATIENT_ID}"})
    return resource


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for item in data["cases"]:
            resources = [_with_subject(r) for r in item.get("resources") or []]
            if not item.get("no_patient") and not any(
                r["resourceType"] == "Patient" for r in resources
            ):
                resources.insert(
                    0,
                    {
                        "resourceType": "Patient",
                        "id": PATIENT_ID,
                        "birthDate": "1980-01-01",
                        "gender": "female",
                    },
                )
            evidence = item.get("evidence")
            cases.append(
                Case(
                    file=path.name,
                    criterion=item.get("criterion", data["criterion"]),
                    name=item["name"],
                    as_of=date.fromisoformat(str(item.get("as_of", data["as_of"]))),
                    resources=tuple(resources),
                    result=item["result"],
                    evidence=None if evidence is None else tuple(evidence),
                    summary=item.get("summary"),
                    outcome=item.get("outcome"),
                )
            )
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = load_cases()
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def study() -> Study:
    return load_study("kn5501")


@pytest.fixture(scope="session")
def normaliser(study: Study) -> Normaliser:
    translate_cql()
    return load_normaliser(study)


class Engines:
    """One engine per screening date, kept for the session (a date is a load parameter)."""

    def __init__(self, study: Study, normaliser: Normaliser) -> None:
        self._study = study
        self._normaliser = normaliser
        self._engines: dict[date, NodeCqlEngine] = {}

    def __call__(self, as_of: date) -> NodeCqlEngine:
        if as_of not in self._engines:
            self._engines[as_of] = NodeCqlEngine(
                self._study.library,
                version=self._study.library_version,
                value_sets=self._normaliser.terminology.expansions,
                parameters={"As Of": as_of, **self._study.parameters},
            )
        return self._engines[as_of]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()


@pytest.fixture(scope="session")
def engines(study: Study, normaliser: Normaliser) -> Iterator[Engines]:
    translate_cql()
    pool = Engines(study, normaliser)
    yield pool
    pool.close()
