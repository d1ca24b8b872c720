"""The log scan: patient data (names, identifiers, birth dates) of the populations a test session
loaded must appear in no log the stack or the tests wrote meanwhile.

Hits name the log, the line and the kind of item, never the item itself: the report would
otherwise leak what it found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fhir_match.files import fhir_files, read_resources
from fhir_match.records import Json

__all__ = [
    "KINDS",
    "Hit",
    "log_sizes",
    "patient_items",
    "population_folders",
    "scan",
    "stack_logs",
    "temp_logs",
]

KINDS = ("name", "identifier", "birth date")

Items = Mapping[str, frozenset[str]]
"""Per kind, the values to look for."""


@dataclass(frozen=True)
class Hit:
    log: Path
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.log}:{self.line}: a seeded patient's {self.kind}"


def population_folders(root: Path) -> list[Path]:
    """The synthetic populations generated under ``root``: each has its answers beside it."""
    return sorted(p.parent / "fhir" for p in root.rglob("expected.ndjson"))


def _names(patient: Json) -> Iterator[str]:
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        family = family if isinstance(family, str) else ""
        yield from given
        yield from (family, name.get("text") or "")
        yield " ".join([*given, family])
        yield " ".join([family, *given])


def patient_items(folders: Iterable[Path]) -> dict[str, frozenset[str]]:
    """Every Patient's names (each part, and whole), identifier values and birth date."""
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    paths = [p for folder in folders for p in fhir_files(folder)]
    for resource in read_resources(paths, lambda issue: None):
        if resource.get("resourceType") != "Patient":
            continue
        found["name"].update(_names(resource))
        found["identifier"].update(
            str(i["value"]) for i in resource.get("identifier") or [] if i.get("value")
        )
        if resource.get("birthDate"):
            found["birth date"].add(str(resource["birthDate"]))
    return {kind: frozenset(v for v in values if v.strip()) for kind, values in found.items()}


def stack_logs(var_log: Path) -> list[Path]:
    """Every file the stack and the tests' worker processes wrote in ``var/log``; never data
    files such as the demo's population in ``var/demo``."""
    return sorted(p for p in var_log.rglob("*") if p.is_file()) if var_log.is_dir() else []


def temp_logs(temp: Path) -> list[Path]:
    """The logs tests wrote in their temporary folders (the review app's, say)."""
    return sorted(p for p in temp.rglob("*.log") if p.is_file())


def log_sizes(logs: Iterable[Path]) -> dict[Path, int]:
    """Where each log ends now: what is written after it is the session's."""
    return {log: log.stat().st_size for log in logs}


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = sorted({re.escape(v) for v in values}, key=len, reverse=True)
    if not alternatives:
        return None
    return re.compile(rf"(?<![\w-])(?:{'|'.join(alternatives)})(?![\w-])")


def scan(logs: Iterable[Path], items: Items, since: Mapping[Path, int]) -> list[Hit]:
    """Each line of each log, from where it ended at ``since`` (a log that shrank was
    rotated: all of it), that holds an item; one hit per line and kind."""
    patterns = [(kind, p) for kind in KINDS if (p := _pattern(items.get(kind, ())))]
    hits: list[Hit] = []
    for log in logs:
        start = since.get(log, 0)
        if start > log.stat().st_size:
            start = 0
        with log.open("rb") as stream:
            before = stream.read(start).count(b"\n")
            for number, raw in enumerate(stream, start=before + 1):
                line = raw.decode("utf-8", errors="replace")
                hits.extend(Hit(log, number, kind) for kind, p in patterns if p.search(line))
    return hits
