"""The candidate list as a coordinator reads it: one row per listed patient, with what
changed since the previous run. Pure: subjects, patients and run snapshots in, rows out."""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from fhir_match.records import Json
from fhir_match.review.decisions import status_word
from fhir_match.writeback import (
    EXT_OUTCOME,
    LISTED,
    RUN_SYSTEM,
    criteria_of,
    ehr_local,
    match_of,
    patient_of,
)

__all__ = [
    "SORT_KEYS",
    "Row",
    "Snapshot",
    "age_text",
    "candidate_rows",
    "dropped_since",
    "filter_rows",
    "patient_ages",
    "patient_name",
    "snapshot_of",
    "sort_rows",
]


@dataclass(frozen=True)
class Snapshot:
    """One run's list, from its Group: patient -> outcome."""

    run: str
    members: Mapping[str, str]


def snapshot_of(group: Json, ehr_base: str = "") -> Snapshot:
    """A run's Group as patient (the EHR's ``Patient/<id>``, ``ehr_base`` when the Group is
    in a store of its own) -> outcome."""
    run = next(
        (
            str(i.get("value"))
            for i in group.get("identifier") or []
            if i.get("system") == RUN_SYSTEM
        ),
        "",
    )
    members = {}
    for member in group.get("member") or []:
        outcome = next(
            (
                e.get("valueCode")
                for e in member.get("extension") or []
                if e.get("url") == EXT_OUTCOME
            ),
            "",
        )
        reference = str((member.get("entity") or {}).get("reference"))
        members[ehr_local(reference, ehr_base)] = str(outcome)
    return Snapshot(run, members)


@dataclass(frozen=True)
class Row:
    subject_id: str
    patient: str
    """``Patient/<id>``."""
    name: str
    birth_date: str
    age: tuple[int, int] | None
    """Youngest and oldest age the birth date allows (equal for a full date)."""
    gender: str
    outcome: str
    status: str
    """In the coordinator's words ("contacted", not ResearchSubject's ``screening``)."""
    decided: bool
    """The status is a coordinator's, not the one fhir-match set."""
    unknown: int
    """Criteria the record could not decide: what a human has to look at."""
    change: str
    """Since the previous run: new, was <outcome>, evidence updated, unchanged, first run."""
    as_of: str

    @property
    def age_text(self) -> str:
        return age_text(self.age)


def patient_name(patient: Json | None) -> str:
    """The official (else first) human name, as "Family, Given"; empty when none."""
    names = (patient or {}).get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if not name:
        return ""
    if name.get("text"):
        return str(name["text"])
    given = " ".join(name.get("given") or [])
    return ", ".join(p for p in (name.get("family", ""), given) if p)


def _whole_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def patient_ages(patient: Json | None, on: date) -> tuple[int, int] | None:
    """The youngest and oldest age on ``on`` that the birth date allows: a year or a month
    alone leaves two (what the record knows is shown rather than nothing)."""
    birth = str((patient or {}).get("birthDate") or "")[:10]
    parts = birth.split("-")
    try:
        year = int(parts[0])
        if len(parts) == 1:
            first, last = date(year, 1, 1), date(year, 12, 31)
        elif len(parts) == 2:
            month = int(parts[1])
            first = date(year, month, 1)
            last = date(year, month, calendar.monthrange(year, month)[1])
        else:
            first = last = date.fromisoformat(birth)
    except ValueError:
        return None
    return _whole_years(last, on), _whole_years(first, on)


def age_text(ages: tuple[int, int] | None) -> str:
    """ "44", or "45 or 46" for a partial birth date; empty when unknown."""
    if ages is None:
        return ""
    youngest, oldest = ages
    return str(youngest) if youngest == oldest else f"{youngest} or {oldest}"


def _change(patient: str, run: str, latest: Snapshot | None, previous: Snapshot | None) -> str:
    if latest is None or previous is None:
        return "first run"
    before = previous.members.get(patient)
    now = latest.members.get(patient)
    if before is None:
        return "new"
    if now is not None and before != now:
        return f"was {before}"
    return "evidence updated" if run == latest.run else "unchanged"


def candidate_rows(
    subjects: Sequence[Json],
    patients: Mapping[str, Json],
    latest: Snapshot | None,
    previous: Snapshot | None,
    ehr_base: str = "",
) -> list[Row]:
    """Every subject fhir-match lists (candidate or potential-candidate), whatever status a
    coordinator has given it since (``ehr_base``: the EHR's, when the subjects are in a
    store of their own)."""
    rows = []
    for subject in subjects:
        match = match_of(subject)
        outcome = str(match.get("outcome") or "")
        if outcome not in LISTED:
            continue
        patient = patient_of(subject, ehr_base)
        resource = patients.get(patient)
        as_of = str(match.get("asOf") or "")
        try:
            on = date.fromisoformat(as_of)
        except ValueError:
            on = date.today()
        status = str(subject.get("status") or "")
        rows.append(
            Row(
                subject_id=str(subject.get("id")),
                patient=patient,
                name=patient_name(resource),
                birth_date=str((resource or {}).get("birthDate") or ""),
                age=patient_ages(resource, on),
                gender=str((resource or {}).get("gender") or ""),
                outcome=outcome,
                status=status_word(status),
                decided=status != match.get("status"),
                unknown=sum(1 for c in criteria_of(subject) if c.result == "unknown"),
                change=_change(patient, str(match.get("run") or ""), latest, previous),
                as_of=as_of,
            )
        )
    return rows


def dropped_since(latest: Snapshot | None, previous: Snapshot | None) -> list[str]:
    """Patients the previous run listed and the latest one no longer does."""
    if latest is None or previous is None:
        return []
    return sorted(p for p in previous.members if p not in latest.members)


SORT_KEYS = ("name", "outcome", "status", "unknown", "change", "age")


def sort_rows(rows: Sequence[Row], key: str, descending: bool = False) -> list[Row]:
    """By one column, then by name so equal rows keep a stable order; rows without a value
    (an unknown age) go last either way. Unknown keys sort by the default, "needs attention
    first": undecided before decided, candidates first, then most unknown criteria."""
    by_name = sorted(rows, key=lambda r: (r.name, r.patient))
    if key not in SORT_KEYS:
        return sorted(
            by_name,
            key=lambda r: (r.decided, r.outcome != "candidate", -r.unknown),
            reverse=descending,
        )
    known = [r for r in by_name if getattr(r, key) is not None]
    blank = [r for r in by_name if getattr(r, key) is None]
    return [*sorted(known, key=lambda r: getattr(r, key), reverse=descending), *blank]


def filter_rows(
    rows: Sequence[Row], *, outcome: str = "", status: str = "", change: str = ""
) -> list[Row]:
    """Rows matching every filter given; ``change`` "changed" means anything but unchanged."""

    def keep(row: Row) -> bool:
        if outcome and row.outcome != outcome:
            return False
        if status and row.status != status:
            return False
        if change == "changed":
            return row.change not in ("unchanged", "first run")
        return not change or row.change == change

    return [r for r in rows if keep(r)]
