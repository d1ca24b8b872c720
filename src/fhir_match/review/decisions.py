"""A coordinator's decision on a subject: the status it sets, the Provenance naming who and
when, and the history read back. Pure: the transaction is planned here and sent elsewhere.

R4's ResearchSubject.status has no "contacted"; contacting someone is part of screening,
so it is written as ``screening`` and the decision itself is kept in an extension. The
coordinator reads their own word back everywhere (``status_word``): DECISIONS is the one
mapping between the two, and the README's review section lists it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from fhir_match.records import Json
from fhir_match.tagging import tagged
from fhir_match.writeback import STRUCTURE

__all__ = [
    "DECISIONS",
    "EXT_DECISION",
    "Coordinator",
    "Decision",
    "DecisionError",
    "decision_history",
    "decision_transaction",
    "status_word",
]

EXT_DECISION = STRUCTURE + "coordinator-decision"
"""On ResearchSubject (the latest) and on its Provenance (each): decision, reason."""

DECISIONS: dict[str, tuple[str, str]] = {
    "eligible": ("eligible", "Eligible"),
    "ineligible": ("ineligible", "Ineligible"),
    "contacted": ("screening", "Contacted"),
    "on-study": ("on-study", "On study"),
    "withdrawn": ("withdrawn", "Withdrawn"),
}
"""Decision -> (ResearchSubject.status, label)."""

_WORDS = {status: decision for decision, (status, _) in DECISIONS.items()}


def status_word(status: str) -> str:
    """A ResearchSubject.status in the coordinator's words: ``screening`` is "contacted";
    the statuses fhir-match sets (candidate, potential-candidate) read as they are."""
    return _WORDS.get(status, status)


_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


class DecisionError(ValueError):
    """A decision the form should not have sent (unknown, or ineligible without a reason);
    ``field`` names the form field to fix."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Coordinator:
    """Who decides: the launch's fhirUser (a reference) and a name to show."""

    reference: str
    name: str


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    by: str
    at: str


def _decision_extension(decision: str, reason: str) -> Json:
    parts: list[Json] = [{"url": "decision", "valueCode": decision}]
    if reason:
        parts.append({"url": "reason", "valueString": reason})
    return {"url": EXT_DECISION, "extension": parts}


def decision_transaction(
    subject: Json, decision: str, reason: str, who: Coordinator, now: str, tag: str = ""
) -> Json:
    """The subject with its new status, sent only if nobody changed it since it was read
    (If-Match), and the Provenance naming the coordinator, in one transaction."""
    if decision not in DECISIONS:
        raise DecisionError("choose one of the decisions", "decision")
    reason = reason.strip()
    if decision == "ineligible" and not reason:
        raise DecisionError("say why the patient is ineligible", "reason")
    status, label = DECISIONS[decision]
    updated = copy.deepcopy(subject)
    tags = (subject.get("meta") or {}).get("tag")
    updated["meta"] = {"tag": tags} if tags else {}
    updated["status"] = status
    updated["extension"] = [
        *(e for e in subject.get("extension") or [] if e.get("url") != EXT_DECISION),
        _decision_extension(decision, reason),
    ]
    reference = f"ResearchSubject/{subject['id']}"
    agent: Json = {"display": who.name}
    if who.reference:
        agent["reference"] = who.reference
    provenance = {
        "resourceType": "Provenance",
        "extension": [_decision_extension(decision, reason)],
        "target": [{"reference": reference}],
        "recorded": now,
        "activity": {"coding": [{"system": _OPERATION, "code": "UPDATE"}]},
        "reason": [{"text": f"coordinator decision: {label}" + (f" ({reason})" if reason else "")}],
        "agent": [{"type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]}, "who": agent}],
    }
    version = (subject.get("meta") or {}).get("versionId")
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": updated,
                "request": {"method": "PUT", "url": reference, "ifMatch": f'W/"{version}"'},
            },
            {
                "resource": tagged(provenance, tag),
                "request": {"method": "POST", "url": "Provenance"},
            },
        ],
    }


def decision_history(provenances: list[Json]) -> list[Decision]:
    """Who decided what and when, newest first, from the subject's Provenances (the ones
    discovery runs write carry no decision and are left out)."""
    found = []
    for provenance in provenances:
        for extension in provenance.get("extension") or []:
            if extension.get("url") != EXT_DECISION:
                continue
            parts = {
                p.get("url"): next((v for k, v in p.items() if k.startswith("value")), "")
                for p in extension.get("extension") or []
            }
            agents: list[Json] = provenance.get("agent") or [{}]
            who: Json = agents[0].get("who") or {}
            found.append(
                Decision(
                    decision=str(parts.get("decision") or ""),
                    reason=str(parts.get("reason") or ""),
                    by=str(who.get("display") or who.get("reference") or "unknown"),
                    at=str(provenance.get("recorded") or ""),
                )
            )
    return sorted(found, key=lambda d: d.at, reverse=True)
