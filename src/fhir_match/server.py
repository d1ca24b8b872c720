"""What a FHIR server says about itself, reduced to what an operator and discovery need."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from fhir_match.errors import FatalFhirError
from fhir_match.fhir import FhirClient
from fhir_match.fhir.client import FHIR_JSON
from fhir_match.fhir.models import to_json
from fhir_match.records import RECORD_TYPES

__all__ = [
    "ALLOWS_ALL",
    "RESEARCH_WRITE_TYPES",
    "ServerAllows",
    "describe_server",
    "read_allows",
    "server_allows",
]

COMBINATION = (
    "http://hl7.org/fhir/StructureDefinition/capabilitystatement-search-parameter-combination"
)
"""The extension by which a server (US Core's CapabilityStatement, and servers modelled on
it) says which parameters a search must carry."""
RESEARCH_WRITE_TYPES = ("ResearchStudy", "ResearchSubject", "Provenance", "Group")
"""What discovery writes back."""
_CLINICAL_TYPES = tuple(kind for kind in RECORD_TYPES if kind not in ("Patient",))
_ONE_RECORD = frozenset({"patient", "subject", "_id", "identifier"})
"""Parameters that name one patient or one resource: a search that must carry one of them
cannot find a cohort."""

Json = dict[str, Any]


@dataclass(frozen=True)
class ServerAllows:
    """What a server's CapabilityStatement says fhir-match may do there.

    What a statement does not say is taken as allowed: HAPI declares no search restrictions
    and has none, while an EHR that requires a patient says so with the
    search-parameter-combination extension only if it follows US Core. An EHR that says
    nothing is found out by its first refusal, not here.
    """

    code_search: tuple[str, ...]
    """Record types searchable by ``code`` with no patient named: the ``search`` cohort
    source needs Condition among them."""
    patient_required: tuple[str, ...]
    """Record types whose every search must name one patient (or resource)."""
    includes: bool
    """Some record type takes ``_include``."""
    system_export: bool
    """``[base]/$export``."""
    patient_export: bool
    """``[base]/Patient/$export``."""
    group_export: bool
    """``[base]/Group/[id]/$export``."""
    research_writes: tuple[str, ...]
    """Of ResearchStudy, ResearchSubject, Provenance and Group, those it creates and updates."""
    transactions: bool
    """It takes transaction Bundles (the write-back sends them)."""

    @property
    def cohort_search(self) -> bool:
        """A cohort can be found by code searches across patients (the ``search`` source)."""
        return "Condition" in self.code_search

    @property
    def writes_research(self) -> bool:
        """Discovery can write back into this server."""
        return len(self.research_writes) == len(RESEARCH_WRITE_TYPES) and self.transactions


ALLOWS_ALL = ServerAllows(
    code_search=_CLINICAL_TYPES,
    patient_required=(),
    includes=True,
    system_export=True,
    patient_export=True,
    group_export=True,
    research_writes=RESEARCH_WRITE_TYPES,
    transactions=True,
)
"""What a server is taken to allow when its CapabilityStatement cannot be read."""


def server_allows(statement: Json) -> ServerAllows:
    """Read a CapabilityStatement (FHIR JSON) into what fhir-match may do on its server."""
    resources = {str(r.get("type")): r for r in _server_resources(statement)}
    clinical = [(kind, resources[kind]) for kind in _CLINICAL_TYPES if kind in resources]
    return ServerAllows(
        code_search=tuple(kind for kind, r in clinical if _searchable_by_code(r)),
        patient_required=tuple(kind for kind, r in clinical if _names_one(r)),
        includes=any(r.get("searchInclude") for _, r in clinical),
        system_export=any(_exports(rest) for rest in _rests(statement)),
        patient_export=_exports(resources.get("Patient", {})),
        group_export=_exports(resources.get("Group", {})),
        research_writes=tuple(
            kind
            for kind in RESEARCH_WRITE_TYPES
            if {"create", "update"} <= _interactions(resources.get(kind, {}))
        ),
        transactions=any("transaction" in _interactions(rest) for rest in _rests(statement)),
    )


def _rests(statement: Json) -> Iterator[Json]:
    for rest in statement.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            yield rest


def _server_resources(statement: Json) -> Iterator[Json]:
    for rest in _rests(statement):
        yield from (r for r in rest.get("resource") or [] if isinstance(r, dict))


def _interactions(element: Json) -> set[str]:
    return {str(i.get("code")) for i in element.get("interaction") or [] if isinstance(i, dict)}


def _exports(element: Json) -> bool:
    """Declares Bulk Data export (``export``, or Oracle Health's ``group-export``)."""
    names = {str(o.get("name")) for o in element.get("operation") or [] if isinstance(o, dict)}
    return bool(names & {"export", "group-export", "patient-export"})


def _combinations(resource: Json) -> list[frozenset[str]]:
    """The parameter sets a search must carry one of: per extension its required
    parameters, or, when it names only optional ones, any one of those."""
    found: list[frozenset[str]] = []
    for extension in resource.get("extension") or []:
        if not isinstance(extension, dict) or extension.get("url") != COMBINATION:
            continue
        parts = [p for p in extension.get("extension") or [] if isinstance(p, dict)]
        required = frozenset(str(p.get("valueString")) for p in parts if p.get("url") == "required")
        optional = [str(p.get("valueString")) for p in parts if p.get("url") == "optional"]
        found += [required] if required else [frozenset({name}) for name in optional]
    return found


def _names_one(resource: Json) -> bool:
    combinations = _combinations(resource)
    return bool(combinations) and all(c & _ONE_RECORD for c in combinations)


def _searchable_by_code(resource: Json) -> bool:
    if "search-type" not in _interactions(resource):
        return False
    params = {str(p.get("name")) for p in resource.get("searchParam") or [] if isinstance(p, dict)}
    if "code" not in params:
        return False
    combinations = _combinations(resource)
    return not combinations or any(c <= params - _ONE_RECORD for c in combinations)


def read_allows(client: FhirClient) -> ServerAllows:
    """What the server allows, from its ``/metadata`` read as plain JSON (a statement the
    FHIR models would refuse for one odd element still says what the server allows). A
    server whose statement cannot be read at all is taken to allow everything, as one
    that declares nothing is: its first refusal will say otherwise."""
    try:
        response = client.request(
            "GET", f"{client.base_url}/metadata", headers={"Accept": FHIR_JSON}
        )
        statement = response.json()
    except (FatalFhirError, ValueError):
        statement = None
    return server_allows(statement) if isinstance(statement, dict) else ALLOWS_ALL


def describe_server(client: FhirClient) -> dict[str, Any]:
    """FHIR version, software, the resource types it serves, and what it allows
    (:class:`ServerAllows`, under ``allows``), from ``/metadata``."""
    capability = client.capabilities()
    software = capability.software
    rest = capability.rest or []
    types = {str(r.type) for server in rest for r in server.resource or []}
    allows = server_allows(to_json(capability))
    return {
        "base_url": client.base_url,
        "fhir_version": capability.fhirVersion,
        "software": f"{software.name} {software.version or ''}".strip() if software else "",
        "resource_types": len(types),
        "research_subjects": "ResearchSubject" in types,
        "allows": {
            **asdict(allows),
            "cohort_search": allows.cohort_search,
            "writes_research": allows.writes_research,
        },
    }
