"""4 WRITE BACK: the candidate list in the EHR's FHIR server, as a reviewer will read it.

- the study: one ResearchStudy, found by its registry identifier, created once;
- each listed patient: one ResearchSubject (status ``candidate`` or ``potential-candidate``)
  whose business identifier is made of the study and the patient, so creating it is a
  conditional create and a second run finds the first one's subject;
- what decided each criterion: on the subject, one ``criterion-result`` extension per
  criterion (result, readable summary, evidence references), and a Provenance per change
  whose entities are the deciding resources, each labelled with the criteria it decided;
- each run: a Group (actual) holding the list as it stood after the run, and the run's
  attrition funnel (:mod:`fhir_match.funnel`).

Statuses belong to the coordinator once they change them. The subject records the status
fhir-match last set (``candidate-match.status``); when the subject's status differs, a
person set it, and fhir-match never touches it again (it still refreshes the evidence).
A patient who no longer matches keeps their subject, marked ``ineligible`` with the
reasons, rather than being deleted. Planning is pure; :func:`apply_changes` does the I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fhir_match import __version__
from fhir_match.config import research_study_setting
from fhir_match.errors import ConfigError, FatalFhirError
from fhir_match.evaluate.study import Study
from fhir_match.fetch import patient_chunks
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import to_json
from fhir_match.funnel import Funnel
from fhir_match.records import CriterionResult, DataIssue, Json, PatientEvaluation
from fhir_match.tagging import TAG_SYSTEM, tag_token, tagged

__all__ = [
    "EXT_CRITERION",
    "EXT_FUNNEL",
    "EXT_MATCH",
    "EXT_RUN_STATE",
    "LISTED",
    "NO_LONGER_MATCHING",
    "RUN_SYSTEM",
    "STUDY_SYSTEM",
    "SUBJECT_SYSTEM",
    "Change",
    "RecordedRun",
    "RunInfo",
    "RunState",
    "WriteSummary",
    "apply_changes",
    "choose_study",
    "criteria_of",
    "ehr_local",
    "ehr_reference",
    "failure_reasons",
    "find_study",
    "funnel_of",
    "is_ours",
    "last_complete",
    "match_of",
    "our_subjects",
    "own_study_identifier",
    "patient_of",
    "plan_change",
    "read_subjects",
    "recorded_run",
    "run_groups",
    "run_of",
    "run_state",
    "run_state_of",
    "snapshot_group",
    "study_resource",
    "study_search",
    "subject_identifier",
    "subjects_of",
    "write_evaluations",
]

STRUCTURE = "https://fhir-match.org/fhir/StructureDefinition/"
EXT_MATCH = STRUCTURE + "candidate-match"
"""On ResearchSubject: outcome, asOf, run, status (the status fhir-match last set), digest."""
EXT_CRITERION = STRUCTURE + "criterion-result"
"""On ResearchSubject, one per criterion: criterion, kind, result, summary, evidence*."""
EXT_EVIDENCE_FOR = STRUCTURE + "evidence-for"
"""On Provenance.entity: a criterion the entity decided (repeats)."""
EXT_STUDY = STRUCTURE + "candidate-list-study"
"""On the run's Group: the ResearchStudy the list is for."""
EXT_OUTCOME = STRUCTURE + "candidate-outcome"
"""On Group.member: the member's outcome in that run."""
EXT_FUNNEL = STRUCTURE + "screening-funnel"
"""On the run's Group: the run's attrition funnel, so a page can show it from FHIR alone.
Parts, in this order: scope (valueCode ``full``, or ``incremental``: only the patients the
run re-evaluated), found, evaluated, notEvaluated (valueInteger), one ``removed`` per
criterion in the study's order (itself complex: criterion valueCode, count valueInteger),
candidate, potentialCandidate (valueInteger)."""
EXT_RUN_STATE = STRUCTURE + "run-state"
"""On the run's Group: how the run ended. Parts: state (valueCode ``complete``: every
patient evaluated, nothing failed; ``partial``: some batches or patients failed;
``failed``: the run stopped, or evaluated nobody), failedBatches (valueInteger), reason
(valueString, repeats: what failed and how often, PHI-free). Only a complete run's Group is
the list; a Group without it predates the states and counts as complete."""
SUBJECT_SYSTEM = "https://fhir-match.org/fhir/NamingSystem/research-subject"
STUDY_SYSTEM = "https://fhir-match.org/fhir/NamingSystem/research-study"
"""fhir-match's own identifier on the ResearchStudy it created: marks it as ours."""
RUN_SYSTEM = "https://fhir-match.org/fhir/NamingSystem/discovery-run"
LISTED = ("candidate", "potential-candidate")
NO_LONGER_MATCHING = "ineligible"
CHANGES_PER_TRANSACTION = 50
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


# -- the study ----------------------------------------------------------------------------


def own_study_identifier(study: Study, tag: str = "") -> str:
    """The value of fhir-match's own identifier on the ResearchStudy it creates: the study
    id, and the run tag when there is one (a tagged population has a study of its own)."""
    return f"{study.id}:{tag}" if tag else study.id


def study_search(study: Study, tag: str = "") -> Search:
    """Every ResearchStudy with the study's registry identifier (with a run tag: carrying it)."""
    search = Search("ResearchStudy").where(
        "identifier", f"{study.identifier_system}|{study.identifier}"
    )
    return search.where("_tag", tag_token(tag)) if tag else search


def study_resource(study: Study, tag: str = "") -> Json:
    """The ResearchStudy fhir-match creates when the server has none: the registry's
    identifier, and one of fhir-match's own that marks it as ours."""
    resource = {
        "resourceType": "ResearchStudy",
        "identifier": [
            {"system": study.identifier_system, "value": study.identifier},
            {"system": STUDY_SYSTEM, "value": own_study_identifier(study, tag)},
        ],
        "title": study.title,
        "status": study.status,
        "condition": [{"coding": [study.condition], "text": study.condition.get("display")}],
        "sponsor": {"display": study.sponsor},
        "site": [{"display": study.site}],
        "description": study.short_title,
    }
    return tagged(resource, tag)


def _run_tags(resource: Json) -> set[str]:
    return {
        str(t.get("code"))
        for t in (resource.get("meta") or {}).get("tag") or []
        if t.get("system") == TAG_SYSTEM
    }


def choose_study(study: Study, tag: str, found: Sequence[Json]) -> str | None:
    """Which of the ResearchStudies found by the registry identifier a run of ``study``
    uses, or None when there is none yet (the caller creates ours).

    Only those of the run's scope count: with a run tag, those carrying it (a seeded
    population's own ResearchStudy too); without, those carrying no run tag (test data is
    never the hospital's study). The one fhir-match
    created wins; else exactly one other (a hospital's own record of the trial) is adopted,
    read-only; several others and none of ours cannot be told apart: a ConfigError names
    the setting that picks one, and the candidates' ids.
    """
    in_scope = [
        r
        for r in found
        if r.get("resourceType") == "ResearchStudy"
        and r.get("id")
        and (tag in _run_tags(r) if tag else not _run_tags(r))
    ]
    own = own_study_identifier(study, tag)
    ours = sorted(
        str(r["id"])
        for r in in_scope
        if any(
            i.get("system") == STUDY_SYSTEM and i.get("value") == own
            for i in r.get("identifier") or []
        )
    )
    if ours:
        return f"ResearchStudy/{ours[0]}"
    others = sorted(str(r["id"]) for r in in_scope)
    if len(others) > 1:
        listed = ", ".join(f"ResearchStudy/{i}" for i in others)
        raise ConfigError(
            f"{len(others)} ResearchStudy resources carry {study.id}'s registry identifier "
            f"{study.identifier_system}|{study.identifier} and fhir-match created none of "
            f"them ({listed}): set {research_study_setting(study.id)} to the id of the one "
            f"to use"
        )
    return f"ResearchStudy/{others[0]}" if others else None


def find_study(client: FhirClient, study: Study, tag: str = "", configured: str = "") -> str | None:
    """``ResearchStudy/<id>`` the study's runs write to and its readers read, or None
    before the first run: the one ``configured`` names (its setting), else
    :func:`choose_study` among those with the registry identifier. Discovery, ``candidates``
    and the review app all find it here. A tagged run (test data) uses the setting only
    for a study carrying its tag: it never writes into the hospital's own study."""
    if configured:
        try:
            named = to_json(client.read("ResearchStudy", configured))
        except FatalFhirError as exc:
            raise ConfigError(
                f"{research_study_setting(study.id)} names ResearchStudy/{configured}, which "
                f"the FHIR server does not give (HTTP {exc.status})"
            ) from None
        if not tag or tag in _run_tags(named):
            return f"ResearchStudy/{configured}"
    found = [
        entry["resource"]
        for page in client.pages(study_search(study, tag))
        for entry in page.get("entry") or []
        if isinstance(entry.get("resource"), dict)
    ]
    return choose_study(study, tag, found)


# -- a subject ----------------------------------------------------------------------------


def subject_identifier(study: Study, patient: str, tag: str = "") -> str:
    """The subject's identifier value: the study id and the patient's id, and a tagged
    run's tag (two test populations of the same synthetic patients on one server are
    listed apart)."""
    scope = f"{study.id}:{tag}" if tag else study.id
    return f"{scope}-{patient.removeprefix('Patient/')}"


def is_ours(subject: Json, study: Study) -> bool:
    """A subject fhir-match wrote for this study (coordinators' own subjects are left alone)."""
    return any(
        i.get("system") == SUBJECT_SYSTEM
        and str(i.get("value", "")).startswith((f"{study.id}-", f"{study.id}:"))
        for i in subject.get("identifier") or []
    )


def _extension(resource: Json, url: str) -> list[Json]:
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def _parts(extension: Json) -> dict[str, Any]:
    """A complex extension's parts by name: the single value of each, a list for evidence."""
    found: dict[str, Any] = {"evidence": []}
    for part in extension.get("extension") or []:
        value = next((v for k, v in part.items() if k.startswith("value")), None)
        if part.get("url") == "evidence":
            found["evidence"].append((value or {}).get("reference"))
        else:
            found[part.get("url")] = value
    return found


def match_of(subject: Json) -> dict[str, Any]:
    """What fhir-match last recorded on a subject: outcome, asOf, run, status, digest."""
    matches = _extension(subject, EXT_MATCH)
    return _parts(matches[0]) if matches else {}


def criteria_of(subject: Json) -> list[CriterionResult]:
    """The per-criterion results recorded on a subject, in the order written."""
    results = []
    for extension in _extension(subject, EXT_CRITERION):
        parts = _parts(extension)
        results.append(
            CriterionResult(
                id=parts.get("criterion") or "",
                kind=parts.get("kind") or "inclusion",
                result=parts.get("result") or "unknown",
                summary=parts.get("summary") or "",
                evidence=tuple(e for e in parts["evidence"] if e),
            )
        )
    return results


def _digest(outcome: str, criteria: Sequence[CriterionResult]) -> str:
    """Changes when the outcome or any criterion's result, summary or evidence does."""
    data = [outcome, [[c.id, c.result, c.summary, list(c.evidence)] for c in criteria]]
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()[:16]


def _criterion_extension(result: CriterionResult) -> Json:
    parts: list[Json] = [
        {"url": "criterion", "valueCode": result.id},
        {"url": "kind", "valueCode": result.kind},
        {"url": "result", "valueCode": result.result},
    ]
    if result.summary:
        parts.append({"url": "summary", "valueString": result.summary})
    parts += [{"url": "evidence", "valueReference": {"reference": r}} for r in result.evidence]
    return {"url": EXT_CRITERION, "extension": parts}


@dataclass(frozen=True)
class RunInfo:
    """Which run is writing, recorded on what it writes."""

    run_id: str
    as_of: str
    recorded: str
    """When the run started (an instant): Provenance.recorded."""
    tag: str = ""
    """The run tag everything written carries (test data on a shared server), or none."""
    ehr_base: str = ""
    """The EHR's base URL when the list is written to a store of its own: references to the
    EHR's resources are then absolute there; empty, one server: relative, as always."""


def ehr_reference(reference: str, ehr_base: str) -> str:
    """How a store refers to an EHR resource (``Patient/1``): relative on one server, else
    ``<EHR base>/Patient/1``. Already absolute (or contained, or a urn, or none) stays as it is."""
    if not reference or not ehr_base or "://" in reference or reference.startswith(("#", "urn:")):
        return reference
    return f"{ehr_base.rstrip('/')}/{reference}"


def ehr_local(reference: str, ehr_base: str) -> str:
    """The EHR's own reference (``Patient/1``) for one the store holds: the inverse of
    :func:`ehr_reference`. A reference to any other server stays absolute (never read)."""
    prefix = f"{ehr_base.rstrip('/')}/"
    return reference.removeprefix(prefix) if ehr_base else reference


def patient_of(subject: Json, ehr_base: str) -> str:
    """The EHR's ``Patient/<id>`` a subject is about, however the store refers to it."""
    return ehr_local(str((subject.get("individual") or {}).get("reference") or ""), ehr_base)


def _cited(result: CriterionResult, ehr_base: str) -> CriterionResult:
    """A criterion's result as the store records it: its evidence cited in the EHR."""
    evidence = tuple(ehr_reference(r, ehr_base) for r in result.evidence)
    return replace(result, evidence=evidence) if evidence != result.evidence else result


@dataclass(frozen=True)
class Change:
    patient: str
    action: Literal["create", "update"]
    subject: Json
    version: str | None
    """The version the update is based on (If-Match); None for a create."""
    provenance: Json | None
    """Why, when the evidence changed: written with the subject, in one transaction."""


def plan_change(
    study: Study,
    study_ref: str,
    patient: str,
    evaluation: PatientEvaluation | None,
    existing: Json | None,
    run: RunInfo,
) -> Change | None:
    """What to write for one patient, or None when the server already says it.

    ``evaluation`` is None for a patient who left the cohort (found by no discovery search):
    like an ineligible one, their subject is marked as no longer matching.
    """
    outcome = evaluation.outcome if evaluation else "ineligible"
    criteria = tuple(_cited(c, run.ehr_base) for c in evaluation.criteria) if evaluation else ()
    listed = outcome in LISTED
    if existing is None:
        if not listed:
            return None
        existing = {
            "resourceType": "ResearchSubject",
            "identifier": [
                {"system": SUBJECT_SYSTEM, "value": subject_identifier(study, patient, run.tag)}
            ],
            "status": outcome,
            "study": {"reference": study_ref},
            "individual": {"reference": ehr_reference(patient, run.ehr_base)},
        }
        previous: dict[str, Any] = {"status": outcome}
        action: Literal["create", "update"] = "create"
    else:
        previous = match_of(existing)
        action = "update"
    owned = existing.get("status") == previous.get("status")
    status = (outcome if listed else NO_LONGER_MATCHING) if owned else existing.get("status")
    if not criteria and not listed:
        criteria = tuple(criteria_of(existing))  # left the cohort: keep the last evidence
    digest = _digest(outcome, criteria)
    if action == "update" and digest == previous.get("digest") and status == existing["status"]:
        return None
    parts: list[Json] = [
        {"url": "outcome", "valueCode": outcome},
        {"url": "asOf", "valueDate": run.as_of},
        {"url": "run", "valueString": run.run_id},
        {"url": "status", "valueCode": status if owned else previous.get("status")},
        {"url": "digest", "valueString": digest},
    ]
    others = [
        e for e in existing.get("extension") or [] if e.get("url") not in (EXT_MATCH, EXT_CRITERION)
    ]
    if evaluation is None:
        parts.append(
            {"url": "note", "valueString": "no longer found by the study's discovery searches"}
        )
    match = {"url": EXT_MATCH, "extension": parts}
    subject = {
        **existing,
        "status": status,
        "extension": [*others, match, *(_criterion_extension(c) for c in criteria)],
    }
    version = (existing.get("meta") or {}).get("versionId") if action == "update" else None
    changed_evidence = digest != previous.get("digest")
    provenance = _provenance(outcome, criteria, run, action) if changed_evidence else None
    return Change(patient, action, subject, version, provenance)


def _provenance(
    outcome: str, criteria: Sequence[CriterionResult], run: RunInfo, action: str
) -> Json:
    """Provenance of a subject: the resources that decided each criterion, labelled."""
    decided: dict[str, list[CriterionResult]] = {}
    for result in criteria:
        for reference in result.evidence:
            decided.setdefault(reference, []).append(result)
    entities = [
        {
            "extension": [{"url": EXT_EVIDENCE_FOR, "valueCode": r.id} for r in results],
            "role": "source",
            "what": {
                "reference": reference,
                "display": "; ".join(f"{r.id} {r.result}: {r.summary}" for r in results)[:1000],
            },
        }
        for reference, results in decided.items()
    ]
    return {
        "resourceType": "Provenance",
        "recorded": run.recorded,
        "activity": {"coding": [{"system": _OPERATION, "code": action.upper()}]},
        "reason": [{"text": f"eligibility screening as of {run.as_of}: {outcome}"}],
        "agent": [
            {
                "type": {"coding": [{"system": _PARTICIPANT, "code": "assembler"}]},
                "who": {"display": f"fhir-match {__version__} (run {run.run_id})"},
            }
        ],
        "entity": entities,
    }


# -- writing ------------------------------------------------------------------------------


@dataclass
class WriteSummary:
    created: int = 0
    updated: int = 0
    conflicts: list[str] = field(default_factory=list)
    """Patients whose subject someone changed while the run was writing it."""
    failed: list[DataIssue] = field(default_factory=list)
    """Patients whose subject the server refused, and its reason."""

    def add(self, other: WriteSummary) -> None:
        self.created += other.created
        self.updated += other.updated
        self.conflicts += other.conflicts
        self.failed += other.failed


def _entries(change: Change, tag: str) -> list[Json]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    if change.action == "create":
        request = {
            "method": "POST",
            "url": "ResearchSubject",
            "ifNoneExist": f"identifier={SUBJECT_SYSTEM}|{_value_of(change)}",
        }
    else:
        request = {"method": "PUT", "url": f"ResearchSubject/{change.subject['id']}"}
        if change.version:
            request["ifMatch"] = f'W/"{change.version}"'
    subject = {k: v for k, v in change.subject.items() if k != "meta"}
    entries = [{"fullUrl": full_url, "resource": tagged(subject, tag), "request": request}]
    if change.provenance is not None:
        # An id of its own content (run, subject, evidence): written by PUT, so a
        # transaction sent again after a dropped connection writes it once.
        digest = hashlib.sha256(
            json.dumps([_value_of(change), change.provenance], sort_keys=True).encode()
        ).hexdigest()[:40]
        provenance = tagged(
            {**change.provenance, "id": f"fm-{digest}", "target": [{"reference": full_url}]}, tag
        )
        entries.append(
            {
                "fullUrl": f"Provenance/fm-{digest}",
                "resource": provenance,
                "request": {"method": "PUT", "url": f"Provenance/fm-{digest}"},
            }
        )
    return entries


def _value_of(change: Change) -> str:
    """The subject's identifier value (``kn5501-<patient id>``): what a change is about."""
    return str(change.subject["identifier"][0]["value"])


def _transaction(changes: Iterable[Change], tag: str) -> Json:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry for change in changes for entry in _entries(change, tag)],
    }


def _count(changes: Sequence[Change]) -> WriteSummary:
    return WriteSummary(
        created=sum(c.action == "create" for c in changes),
        updated=sum(c.action == "update" for c in changes),
    )


def apply_changes(client: FhirClient, changes: Sequence[Change], tag: str = "") -> WriteSummary:
    """Write the changes, one transaction per group of them.

    A group the server refuses is written again one patient at a time, so one bad subject
    never loses the others: a subject someone changed meanwhile (409/412) is returned as a
    conflict for the caller to re-read and re-plan; any other refusal is reported.
    """
    summary = WriteSummary()
    for start in range(0, len(changes), CHANGES_PER_TRANSACTION):
        group = changes[start : start + CHANGES_PER_TRANSACTION]
        try:
            client.transaction(_transaction(group, tag))
        except FatalFhirError as exc:
            if len(group) > 1:
                for change in group:
                    summary.add(apply_changes(client, [change], tag))
            elif exc.status in (409, 412):
                summary.conflicts.append(group[0].patient)
            else:
                summary.failed.append(DataIssue(group[0].patient, f"not written: {exc}"))
            continue
        summary.add(_count(group))
    return summary


# -- the run's snapshot -------------------------------------------------------------------


def our_subjects(resources: Sequence[Json], study: Study, ehr_base: str = "") -> dict[str, Json]:
    """The study's subjects fhir-match wrote among ``resources``, by the EHR's patient
    reference (``ehr_base``: the EHR's, when the subjects are in a store of their own)."""
    return {
        patient_of(r, ehr_base): r
        for r in resources
        if r["resourceType"] == "ResearchSubject"
        and is_ours(r, study)
        and isinstance(r.get("individual"), dict)
    }


def subjects_of(
    store: FhirClient, study: Study, patients: Sequence[str], run: RunInfo
) -> dict[str, Json]:
    """The subjects the store holds for ``patients`` (``Patient/<id>``), by patient: the
    existing subjects a batch plans against when they are not in the records it fetched
    (a store of its own). Searched by their identifiers, which name the patient however
    the store refers to them, as many per request as fit in a URL."""
    identifiers = [f"{SUBJECT_SYSTEM}|{subject_identifier(study, p, run.tag)}" for p in patients]
    found: dict[str, Json] = {}
    for chunk in patient_chunks(identifiers):
        search = Search("ResearchSubject").where("identifier", *chunk).count(len(chunk))
        resources = [e["resource"] for page in store.pages(search) for e in page.get("entry") or []]
        found.update(our_subjects(resources, study, run.ehr_base))
    return found


def write_evaluations(
    client: FhirClient,
    study: Study,
    study_ref: str,
    run: RunInfo,
    evaluations: Mapping[str, PatientEvaluation | None],
    existing: dict[str, Json],
) -> WriteSummary:
    """Write what changed for each patient (None: no longer in the cohort) against the
    subjects as they were read. A subject a coordinator changed meanwhile (the If-Match
    failed) is read again, in one request, and planned again once; if it changed again,
    the next run takes it."""

    def plan(patients: Sequence[str], subjects: dict[str, Json]) -> list[Change]:
        return [
            change
            for patient in patients
            if (
                change := plan_change(
                    study, study_ref, patient, evaluations[patient], subjects.get(patient), run
                )
            )
        ]

    written = apply_changes(client, plan(list(evaluations), existing), run.tag)
    conflicts, written.conflicts = written.conflicts, []
    if conflicts:
        retry = apply_changes(
            client, plan(conflicts, subjects_of(client, study, conflicts, run)), run.tag
        )
        written.add(retry)
        written.failed += [
            DataIssue(p, "changed by someone else while being written; the next run retries")
            for p in written.conflicts
        ]
        written.conflicts = []
    return written


def _integer(name: str, value: int) -> Json:
    return {"url": name, "valueInteger": value}


def _funnel_extension(funnel: Funnel) -> Json:
    removed = [
        {
            "url": "removed",
            "extension": [{"url": "criterion", "valueCode": c}, _integer("count", n)],
        }
        for c, n in funnel.removed
    ]
    parts = [
        {"url": "scope", "valueCode": funnel.scope},
        _integer("found", funnel.found),
        _integer("evaluated", funnel.evaluated),
        _integer("notEvaluated", funnel.not_evaluated),
        *removed,
        _integer("candidate", funnel.candidates),
        _integer("potentialCandidate", funnel.potential_candidates),
    ]
    return {"url": EXT_FUNNEL, "extension": parts}


def funnel_of(group: Json) -> Funnel | None:
    """The funnel a run recorded on its Group, or None when it has none. found and
    evaluated are written for readers that do not add up; here they follow from the parts."""
    extensions = _extension(group, EXT_FUNNEL)
    if not extensions:
        return None
    parts = _parts(extensions[0])
    steps = [_parts(p) for p in extensions[0].get("extension") or [] if p.get("url") == "removed"]
    return Funnel(
        removed=tuple((str(step["criterion"]), int(step["count"])) for step in steps),
        candidates=int(parts.get("candidate") or 0),
        potential_candidates=int(parts.get("potentialCandidate") or 0),
        not_evaluated=int(parts.get("notEvaluated") or 0),
        scope="incremental" if parts.get("scope") == "incremental" else "full",
    )


RunStateCode = Literal["complete", "partial", "failed"]
_STATES: dict[str, RunStateCode] = {s: s for s in ("complete", "partial", "failed")}
MAX_REASONS = 5
"""Distinct failure reasons a Group records; the run's record in Redis keeps them all."""
_PATIENT_PREFIX = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}: ")


@dataclass(frozen=True)
class RunState:
    """How a run ended, as its Group records it."""

    state: RunStateCode
    reasons: tuple[str, ...] = ()
    failed_batches: int = 0


def failure_reasons(failures: Sequence[str]) -> tuple[str, ...]:
    """The run's failure texts without the patient each names, most frequent first, each
    with its count: what an operator needs to fix, not who it happened to."""
    counts = Counter(_PATIENT_PREFIX.sub("", f)[:300] for f in failures)
    return tuple(f"{n} x {text}" if n > 1 else text for text, n in counts.most_common(MAX_REASONS))


def run_state(funnel: Funnel, failures: Sequence[str], failed_batches: int) -> RunState:
    """``failed`` when there were patients and none was evaluated; ``partial`` when a batch
    or a patient failed; else ``complete``."""
    reasons = failure_reasons(failures)
    if funnel.found and not funnel.evaluated:
        return RunState("failed", reasons or ("no patient could be evaluated",), failed_batches)
    if failures or failed_batches or funnel.not_evaluated:
        reasons = reasons or (f"{funnel.not_evaluated} patients could not be evaluated",)
        return RunState("partial", reasons, failed_batches)
    return RunState("complete")


def _state_extension(state: RunState) -> Json:
    parts: list[Json] = [
        {"url": "state", "valueCode": state.state},
        _integer("failedBatches", state.failed_batches),
    ]
    parts += [{"url": "reason", "valueString": r} for r in state.reasons]
    return {"url": EXT_RUN_STATE, "extension": parts}


def run_state_of(group: Json) -> RunState:
    """The state a run's Group records (complete when it predates run states)."""
    extensions = _extension(group, EXT_RUN_STATE)
    if not extensions:
        return RunState("complete")
    parts = extensions[0].get("extension") or []
    found = {p.get("url"): p for p in parts}
    state = _STATES.get(str((found.get("state") or {}).get("valueCode")), "failed")
    return RunState(
        state,
        tuple(str(p.get("valueString")) for p in parts if p.get("url") == "reason"),
        int((found.get("failedBatches") or {}).get("valueInteger") or 0),
    )


def last_complete(groups: Sequence[Json]) -> tuple[Json | None, list[Json]]:
    """Among a study's run Groups, newest first: the last complete one (the list), and the
    runs after it that were partial or failed (to be shown as such)."""
    later: list[Json] = []
    for group in groups:
        if run_state_of(group).state == "complete":
            return group, later
        later.append(group)
    return None, later


@dataclass(frozen=True)
class RecordedRun:
    """A run as its Group tells it to a reader: what ``candidates`` and the review app show."""

    run: str
    recorded: str
    """When the Group was written (``meta.lastUpdated``, to the minute)."""
    state: RunState
    funnel: Funnel | None


def recorded_run(group: Json) -> RecordedRun:
    return RecordedRun(
        run=run_of(group),
        recorded=str((group.get("meta") or {}).get("lastUpdated") or "")[:16],
        state=run_state_of(group),
        funnel=funnel_of(group),
    )


SUBJECT_PAGE_SIZE = 500


def read_subjects(store: FhirClient, study: Study, study_ref: str, tag: str = "") -> Iterator[Json]:
    """Every subject fhir-match wrote for the study (with a run tag: written by tagged
    runs only, so a test population's run never touches another's), page by page."""
    search = Search("ResearchSubject").where("study", study_ref).count(SUBJECT_PAGE_SIZE)
    if tag:
        search = search.where("_tag", tag_token(tag))
    for page in store.pages(search):
        for entry in page.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "ResearchSubject" and is_ours(resource, study):
                yield resource


RUN_GROUPS_PAGE = 20


def run_groups(client: FhirClient, study_ref: str, tag: str, limit: int) -> list[Json]:
    """The study's newest run Groups, newest first, at most ``limit`` (with a run tag:
    the tagged runs' only)."""
    search = (
        Search("Group")
        .where("identifier", f"{RUN_SYSTEM}|")
        .where("_sort", "-_lastUpdated")
        .count(RUN_GROUPS_PAGE)
    )
    if tag:
        search = search.where("_tag", tag_token(tag))
    found: list[Json] = []
    for page in client.pages(search):
        for entry in page.get("entry") or []:
            group = entry.get("resource") or {}
            study = next(
                (
                    e.get("valueReference", {}).get("reference")
                    for e in group.get("extension") or []
                    if e.get("url") == EXT_STUDY
                ),
                None,
            )
            if study == study_ref:
                found.append(group)
                if len(found) == limit:
                    return found
    return found


def run_of(group: Json) -> str:
    """The run id a Group records."""
    return next(
        (
            str(i.get("value"))
            for i in group.get("identifier") or []
            if i.get("system") == RUN_SYSTEM
        ),
        "",
    )


def snapshot_group(
    study: Study,
    study_ref: str,
    run: RunInfo,
    members: Sequence[tuple[str, str]],
    funnel: Funnel | None,
    state: RunState,
) -> Json:
    """The list after a run as a Group: (patient, outcome) per member, the run's funnel
    (when it got that far) and how it ended."""
    extensions: list[Json] = [{"url": EXT_STUDY, "valueReference": {"reference": study_ref}}]
    if funnel is not None:
        extensions.append(_funnel_extension(funnel))
    extensions.append(_state_extension(state))
    group = {
        "resourceType": "Group",
        "identifier": [{"system": RUN_SYSTEM, "value": run.run_id}],
        "extension": extensions,
        "type": "person",
        "actual": True,
        "name": f"{study.short_title}: candidate list as of {run.as_of} (run {run.run_id}, "
        f"{state.state})",
        "quantity": len(members),
        "member": [
            {
                "extension": [{"url": EXT_OUTCOME, "valueCode": outcome}],
                "entity": {"reference": ehr_reference(patient, run.ehr_base)},
            }
            for patient, outcome in members
        ],
    }
    return tagged(group, run.tag)
