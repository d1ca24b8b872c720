"""A study's configuration: its identity, its CQL library, and its criteria, read from studies/."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from fhir_match.config import PROJECT_DIR
from fhir_match.errors import ConfigError
from fhir_match.records import CriterionKind

__all__ = [
    "STUDIES_DIR",
    "VALUE_SET_BASE",
    "Criterion",
    "Discovery",
    "Study",
    "configured_studies",
    "load_study",
]

STUDIES_DIR = PROJECT_DIR / "studies"
VALUE_SET_BASE = "https://fhir-match.org/fhir/ValueSet/"


@dataclass(frozen=True)
class Criterion:
    id: str
    kind: CriterionKind
    title: str
    deferred: bool
    """Its ``unknown`` never lowers the outcome: it is confirmed at the screening visit,
    or not evaluated from the record at all."""


@dataclass(frozen=True)
class Discovery:
    """Who discovery must find on a FHIR server: every patient who could come out anything
    but ineligible. Value sets are canonical URLs; names are searched as text."""

    condition_value_sets: tuple[str, ...]
    condition_names: tuple[str, ...]
    """Names a Condition's text or display starts with (FHIR's ``:text`` search)."""
    medication_value_sets: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    id: str
    title: str
    short_title: str
    identifier_system: str
    identifier: str
    status: str
    sponsor: str
    site: str
    enrollment: int
    condition: dict[str, str]
    library: str
    library_version: str
    parameters: dict[str, Any]
    criteria: tuple[Criterion, ...]
    discovery: Discovery

    @cached_property
    def _criteria_by_id(self) -> dict[str, Criterion]:
        """Each id's first criterion: looked up for every criterion of every patient screened."""
        index: dict[str, Criterion] = {}
        for criterion in self.criteria:
            index.setdefault(criterion.id, criterion)
        return index

    def criterion(self, criterion_id: str) -> Criterion:
        criterion = self._criteria_by_id.get(criterion_id)
        if criterion is None:
            raise KeyError(criterion_id)
        return criterion


def _criterion(data: dict[str, Any]) -> Criterion:
    kind = data["kind"]
    if kind not in ("inclusion", "exclusion"):
        raise ConfigError(f"criterion {data.get('id')}: kind must be inclusion or exclusion")
    deferred = bool(data.get("screening_visit") or data.get("not_evaluated"))
    return Criterion(str(data["id"]), kind, str(data["title"]), deferred)


def _discovery(data: dict[str, Any]) -> Discovery:
    def urls(key: str) -> tuple[str, ...]:
        return tuple(VALUE_SET_BASE + str(v) for v in data.get(key) or ())

    return Discovery(
        condition_value_sets=urls("condition_value_sets"),
        condition_names=tuple(str(n) for n in data.get("condition_names") or ()),
        medication_value_sets=urls("medication_value_sets"),
    )


def configured_studies(studies_dir: Path = STUDIES_DIR) -> tuple[str, ...]:
    """The ids of every study configured in ``studies_dir``."""
    return tuple(sorted(p.stem for p in studies_dir.glob("*.yaml")))


def load_study(study_id: str, studies_dir: Path = STUDIES_DIR) -> Study:
    """Read ``<studies_dir>/<study_id>.yaml``; a missing or malformed file is a ConfigError."""
    path = studies_dir / f"{study_id}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(configured_studies(studies_dir))
        raise ConfigError(f"unknown study {study_id!r}; known: {known}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        criteria = tuple(_criterion(c) for c in data["criteria"])
        return Study(
            id=data["id"],
            title=" ".join(str(data["title"]).split()),
            short_title=data["short_title"],
            identifier_system=data["identifier"]["system"],
            identifier=data["identifier"]["value"],
            status=data["status"],
            sponsor=data["sponsor"],
            site=data["site"],
            enrollment=int(data["enrollment"]),
            condition=dict(data["condition"]),
            library=data["cql"]["library"],
            library_version=str(data["cql"]["version"]),
            parameters=dict(data.get("parameters") or {}),
            criteria=criteria,
            discovery=_discovery(data["discovery"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or malformed field: {exc}") from None
