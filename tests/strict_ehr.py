"""A strict EHR in front of the real FHIR server: what hospital EHR FHIR APIs allow, and no more.

HAPI lets a client search every patient's Conditions by code, name many patients in one
search, ``_include`` what it likes, export the whole server and write anything. The large
EHR vendors' published R4 APIs do not. :class:`StrictEhr` is a loopback proxy in front of
the local HAPI that refuses what they refuse, each rule a small pure function citing the
public documentation it follows, lowers ``_count`` to a page-size cap, can limit the request
rate (429 with Retry-After), and hands out every URL (Bundle links, ``fullUrl``s, an export's
``Content-Location``, its manifest's file URLs) under an internal host, as a server behind a
gateway does. Its ``/metadata`` says all this where FHIR can say it.

It counts requests and refusals per rule, so a test can say "this discovery was refused
nothing". The server stays real: only what passes between fhir-match and it is judged.
Loopback only; it stops by itself after ``lifetime_s`` if a test forgets to.

To try discovery against it by hand (README, "Connecting to a hospital's EHR"):
``.venv/bin/python -m tests.strict_ehr --port 8090`` serves the local HAPI server strictly
at http://127.0.0.1:8090/fhir for an hour.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

__all__ = [
    "CLINICAL_TYPES",
    "COMBINATION",
    "HOP_BY_HOP",
    "INTERNAL_ORIGIN",
    "PAGE_CAP",
    "RESEARCH_TYPES",
    "RULES",
    "Asked",
    "Refusal",
    "StrictEhr",
    "capped",
    "refusal",
    "strict_capabilities",
]

INTERNAL_ORIGIN = "http://ehr-internal.hospital.example:9443"
"""Where the EHR thinks it lives: the origin of every URL it hands out (no such host)."""
PAGE_CAP = 100
"""Entries per page at most; a larger ``_count`` is lowered to it."""
COMBINATION = (
    "http://hl7.org/fhir/StructureDefinition/capabilitystatement-search-parameter-combination"
)

CLINICAL_TYPES = frozenset(
    {
        "AllergyIntolerance",
        "CarePlan",
        "CareTeam",
        "Condition",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "FamilyMemberHistory",
        "Goal",
        "Immunization",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Procedure",
        "ServiceRequest",
        "Specimen",
    }
)
"""The record types of the Patient compartment that hold clinical data."""
RESEARCH_TYPES = frozenset({"ResearchStudy", "ResearchSubject", "Provenance", "Group", "List"})
"""What fhir-match would write, and a hospital's EHR API only lets it read."""
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SHAPING = ("_include", "_revinclude", "_elements")
_PAGING = "_getpages"
"""HAPI's continuation parameter: a next link, not a new search."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)
"""Headers that belong to one connection, or to a body a proxy re-encodes: not forwarded
(this proxy's and the fault proxy's)."""


@dataclass(frozen=True)
class Asked:
    """One request as the rules see it: method, path segments after the base path, and the
    search parameters (query, or form body of ``POST [type]/_search``)."""

    method: str
    parts: tuple[str, ...]
    params: tuple[tuple[str, str], ...] = ()

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.params if key == name]

    @property
    def search_type(self) -> str | None:
        """The resource type searched, or None when this is no type-level search."""
        if self.method == "GET" and len(self.parts) == 1 and _is_type(self.parts[0]):
            return self.parts[0]
        if self.method == "POST" and len(self.parts) == 2 and self.parts[1] == "_search":
            return self.parts[0] if _is_type(self.parts[0]) else None
        return None


@dataclass(frozen=True)
class Refusal:
    """A rule's answer: an HTTP status and an OperationOutcome naming the rule."""

    rule: str
    status: int
    text: str


def _is_type(segment: str) -> bool:
    return segment[:1].isupper()


def one_patient_per_clinical_search(asked: Asked) -> Refusal | None:
    """A clinical search names exactly one patient (``patient`` or ``subject``; ``_id`` reads
    by id), and a search across all types is none of them.

    Oracle Health Millennium R4, https://fhir.cerner.com/millennium/r4/ (Condition):
    "patient ... It is a required field if the subject field is not given"; Epic,
    https://open.epic.com/Clinical/Observation: "Both patient and code or category are"
    required. One value each: fhir-match's ``patient=a,b,c`` is what they do not take.
    """
    kind = asked.search_type
    rule = "one-patient-per-search"
    if kind is None:
        if asked.method == "GET" and not asked.parts and not asked.values(_PAGING):
            return Refusal(rule, 400, "a search across all resource types is not supported")
        return None
    if kind not in CLINICAL_TYPES:
        return None
    named = [v for name in ("patient", "subject", "_id") for v in asked.values(name)]
    if len(named) != 1:
        return Refusal(rule, 400, f"a {kind} search needs exactly one patient (or subject)")
    if "," in named[0]:
        return Refusal(rule, 400, f"a {kind} search takes one patient, not a list")
    return None


def patient_search_by_id_or_identifier(asked: Asked) -> Refusal | None:
    """``Patient`` is found by its id or an identifier only, never by demographics or across
    the population.

    Epic, https://open.epic.com/Clinical/FHIR?whereTo=patient: "only returns patients with
    strong demographics matches"; a cohort tool has no demographics to give, so only the
    identifier lookups remain.
    """
    if asked.search_type != "Patient":
        return None
    if asked.values("_id") or asked.values("identifier"):
        return None
    return Refusal("patient-by-id-or-identifier", 400, "Patient search needs _id or identifier")


def no_result_shaping(asked: Asked) -> Refusal | None:
    """No ``_include``, ``_revinclude``, ``_has`` or ``_elements``.

    Oracle Health's Bulk Data kick-off, https://docs.oracle.com/en/industries/health/
    millennium-platform-apis/mfbda/op-group-group_id-export-get.html: "The following
    experimental parameters are not supported: _elements and patient"; their R4 searches
    list no ``_include`` or ``_has`` parameters (https://fhir.cerner.com/millennium/r4/).
    """
    for name, _ in asked.params:
        if name in _SHAPING or name.startswith("_has:") or name == "_has":
            return Refusal("no-include-or-elements", 400, f"{name} is not supported")
    return None


def no_chained_parameters(asked: Asked) -> Refusal | None:
    """No chained parameters (``medication.code``). Chaining is optional: "Implementers need
    only implement the amount of complexity that they require"
    (https://hl7.org/fhir/R4/search.html), and US Core's search parameters leave ``chain``
    among the expectations a server may decline
    (https://www.hl7.org/fhir/us/core/STU9/SearchParameter-us-core-condition-patient.html)."""
    for name, _ in asked.params:
        if "." in name.split(":")[0]:
            return Refusal("no-chained-parameters", 400, "chained parameters are not supported")
    return None


def no_text_modifier(asked: Asked) -> Refusal | None:
    """No ``:text`` modifier (a search by a code's display text): modifiers are optional in
    the same way (https://hl7.org/fhir/R4/search.html; US Core lists ``modifier`` among the
    expectations a server may decline), and a full-text search over every patient's records
    is what a patient-scoped EHR API does not offer."""
    for name, _ in asked.params:
        if name.endswith(":text"):
            return Refusal("no-text-modifier", 400, "the :text modifier is not supported")
    return None


def single_id(asked: Asked) -> Refusal | None:
    """``_id`` names one resource; a comma list of ids is a way round the one-patient rule
    (Oracle Health R4: "_id ... It is a required field if patient field is not given",
    https://fhir.cerner.com/millennium/r4/)."""
    if any("," in value for value in asked.values("_id")):
        return Refusal("single-id", 400, "_id takes one id, not a list")
    return None


def group_export_only(asked: Asked) -> Refusal | None:
    """Bulk Data only as ``Group/[id]/$export`` of a group the hospital provisions.

    Oracle Health, https://fhir.cerner.com/millennium/bulk-data/: "Cerner supports only the
    Group Export operation"; Epic, https://fhir.epic.com/Documentation?docId=fhir_bulk_data:
    data "for a population of patients" (a Group).
    """
    if not asked.parts or asked.parts[-1] != "$export":
        return None
    if len(asked.parts) == 3 and asked.parts[0] == "Group":
        return None
    return Refusal("group-export-only", 400, "only Group/[id]/$export is supported")


def no_type_filter(asked: Asked) -> Refusal | None:
    """No ``_typeFilter`` on an export: optional for servers in the Bulk Data IG
    (https://hl7.org/fhir/uv/bulkdata/, "_typeFilter" experimental until STU3), and EHRs
    that list ``_type`` and ``_since`` as their filters do not take it."""
    if asked.parts[-1:] == ("$export",) and asked.values("_typeFilter"):
        return Refusal("no-type-filter", 400, "_typeFilter is not supported")
    return None


def research_read_only(asked: Asked) -> Refusal | None:
    """ResearchStudy, ResearchSubject, Provenance, Group and List are read-only, and no
    transaction or batch is taken: the vendors' R4 APIs list only read and search for them
    (https://fhir.cerner.com/millennium/r4/), and FHIR answers an interaction a server does
    not support with 405 Method Not Allowed (https://hl7.org/fhir/R4/http.html)."""
    if asked.method not in _WRITES:
        return None
    if not asked.parts:
        return Refusal("research-read-only", 405, "transactions and batches are not supported")
    if asked.parts[0] in RESEARCH_TYPES and asked.parts[-1:] != ("$export",):
        return Refusal("research-read-only", 405, f"{asked.parts[0]} is read-only")
    return None


RULES: tuple[Callable[[Asked], Refusal | None], ...] = (
    research_read_only,
    group_export_only,
    no_type_filter,
    patient_search_by_id_or_identifier,
    one_patient_per_clinical_search,
    single_id,
    no_result_shaping,
    no_chained_parameters,
    no_text_modifier,
)
"""In the order they are checked: a cohort search by code is refused for naming no patient
before its ``_elements`` is."""


def refusal(asked: Asked) -> Refusal | None:
    """The first rule ``asked`` breaks, or None: it may pass."""
    for rule in RULES:
        found = rule(asked)
        if found is not None:
            return found
    return None


def capped(params: Sequence[tuple[str, str]], cap: int) -> tuple[tuple[str, str], ...]:
    """``_count`` lowered to ``cap``, as Oracle Health does ("When a request exceeds this
    value, the link[self] reflects the applied maximum",
    https://docs.oracle.com/en/industries/health/health-ai-application-suite/aifcl/change-log.html)."""
    return tuple(
        (name, str(min(int(value), cap)) if name == "_count" and value.isdigit() else value)
        for name, value in params
    )


def strict_capabilities(statement: dict[str, Any]) -> dict[str, Any]:
    """HAPI's CapabilityStatement changed to say the rules, where FHIR can say them: a
    required ``patient`` (US Core's search-parameter-combination extension) on clinical
    types, ``_id`` or ``identifier`` on Patient, no includes, no system or Patient-level
    export but a Group-level one, research types without writes, no transactions."""
    strict = copy.deepcopy(statement)
    for rest in strict.get("rest") or []:
        rest["interaction"] = [
            i
            for i in rest.get("interaction") or []
            if i.get("code") not in ("transaction", "batch")
        ]
        rest["operation"] = [o for o in rest.get("operation") or [] if o.get("name") != "export"]
        for resource in rest.get("resource") or []:
            _strict_resource(resource)
    return strict


def _strict_resource(resource: dict[str, Any]) -> None:
    kind = resource.get("type")
    resource.pop("searchInclude", None)
    resource.pop("searchRevInclude", None)
    params = [p for p in resource.get("searchParam") or [] if p.get("name") != "_has"]
    resource["searchParam"] = params
    names = {p.get("name") for p in params}
    if kind in CLINICAL_TYPES:
        optional = ["code"] if "code" in names else []
        resource.setdefault("extension", []).append(_combination(["patient"], optional))
    if kind == "Patient":
        resource.setdefault("extension", []).extend(
            [_combination(["_id"], []), _combination(["identifier"], [])]
        )
        resource["operation"] = [
            o for o in resource.get("operation") or [] if o["name"] != "export"
        ]
    if kind in RESEARCH_TYPES:
        kept = ("read", "vread", "search-type", "history-instance", "history-type")
        resource["interaction"] = [i for i in resource["interaction"] if i["code"] in kept]
        for flag in ("conditionalCreate", "conditionalUpdate", "conditionalDelete"):
            resource.pop(flag, None)
    if kind == "Group" and not any(o["name"] == "export" for o in resource.get("operation") or []):
        definition = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
        resource.setdefault("operation", []).append({"name": "export", "definition": definition})


def _combination(required: list[str], optional: list[str]) -> dict[str, Any]:
    parts = [{"url": "required", "valueString": name} for name in required]
    parts += [{"url": "optional", "valueString": name} for name in optional]
    return {"url": COMBINATION, "extension": parts}


def _outcome(refused: Refusal) -> bytes:
    issue = {
        "severity": "error",
        "code": "not-supported" if refused.status != 429 else "throttled",
        "diagnostics": f"[{refused.rule}] {refused.text}",
    }
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


RATE_LIMITED = "rate-limit"


class StrictEhr:
    """Forwards to ``upstream`` (a FHIR base URL) from a free loopback port, under the rules.

    ``refused`` counts refusals per rule (and ``rate-limit``), ``requests`` every request,
    ``capped`` the searches whose ``_count`` was lowered. ``rate_per_s``, if given, is the
    most requests answered in any one second; the rest get 429 with Retry-After: 1.
    """

    def __init__(
        self,
        upstream: str,
        *,
        page_cap: int = PAGE_CAP,
        rate_per_s: int | None = None,
        internal_origin: str = INTERNAL_ORIGIN,
        lifetime_s: float = 900,
        port: int = 0,
    ) -> None:
        target = urlsplit(upstream.rstrip("/"))
        self._upstream_origin = f"{target.scheme}://{target.netloc}"
        self._base_path = target.path
        self.page_cap = page_cap
        self.rate_per_s = rate_per_s
        self.internal_base = internal_origin + self._base_path
        self.requests = 0
        self.capped = 0
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._http = httpx.Client(timeout=120)
        self._server: _Server | None = None
        self._lifetime = threading.Timer(lifetime_s, self.stop)
        self._lifetime.daemon = True
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._base_path}"

    @property
    def refusals(self) -> int:
        return sum(self.refused.values())

    def start(self) -> StrictEhr:
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self._lifetime.start()
        return self

    def stop(self) -> None:
        self._lifetime.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._http.close()

    def __enter__(self) -> StrictEhr:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        asked = self._asked(method, target, headers, body)
        refused = self._throttled() or refusal(asked)
        if refused is not None:
            with self._lock:
                self.refused[refused.rule] += 1
            extra = {"retry-after": "1"} if refused.status == 429 else {}
            return _Answer(refused.status, {**_FHIR_JSON, **extra}, _outcome(refused))
        if asked.search_type is not None and capped(asked.params, self.page_cap) != asked.params:
            with self._lock:
                self.capped += 1
            target = _with_params(target, capped(asked.params, self.page_cap))
        answer = self._forward(method, target, headers, body)
        if asked.parts == ("metadata",) and answer.status == 200:
            answer.body = json.dumps(strict_capabilities(json.loads(answer.body))).encode()
        return self._internal(answer)

    def _asked(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Asked:
        parts = urlsplit(target)
        path = parts.path.removeprefix(self._base_path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        form = headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
        if method == "POST" and path.endswith("/_search") and form:
            params += parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
        return Asked(method, tuple(s for s in path.split("/") if s), tuple(params))

    def _throttled(self) -> Refusal | None:
        with self._lock:
            self.requests += 1
            if self.rate_per_s is None:
                return None
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_per_s:
                return Refusal(RATE_LIMITED, 429, "too many requests")
            self._recent.append(now)
            return None

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        try:
            response = self._http.request(
                method, self._upstream_origin + target, headers=headers, content=body
            )
        except httpx.TransportError:
            return _Answer(502, {"content-type": "text/plain"}, b"upstream unreachable")
        kept = {k.lower(): v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return _Answer(response.status_code, kept, response.content)

    def _internal(self, answer: _Answer) -> _Answer:
        """Every URL naming the proxy (or the server behind it) renamed to the internal host:
        in headers and JSON bodies. NDJSON files hold resources, not the server's URLs, and
        pass as they are."""
        names = (self.base_url, self._upstream_origin + self._base_path)
        for header in ("content-location", "location"):
            if header in answer.headers:
                for name in names:
                    answer.headers[header] = answer.headers[header].replace(
                        name, self.internal_base
                    )
        kind = answer.headers.get("content-type", "")
        if "json" in kind and "ndjson" not in kind:
            for name in names:
                answer.body = answer.body.replace(name.encode(), self.internal_base.encode())
        return answer


_FHIR_JSON = {"content-type": "application/fhir+json;charset=utf-8"}


def _with_params(target: str, params: Sequence[tuple[str, str]]) -> str:
    return urlsplit(target).path + "?" + str(httpx.QueryParams(list(params)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, ehr: StrictEhr) -> None:
        self.ehr = ehr
        super().__init__(("127.0.0.1", ehr.port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = self.server.ehr.answer(self.command, self.path, headers, body)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, *_: object) -> None:
        pass  # request lines name patients; the counters say what happened


def main() -> None:
    """Serve the FHIR server at FHIR_BASE_URL strictly on a loopback port, for an hour."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m tests.strict_ehr", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--page-cap", type=int, default=PAGE_CAP)
    parser.add_argument("--rate", type=int, help="requests answered per second (else 429)")
    args = parser.parse_args()
    upstream = os.environ.get("FHIR_BASE_URL") or "http://127.0.0.1:8080/fhir"
    hour = 3600
    ehr = StrictEhr(
        upstream, page_cap=args.page_cap, rate_per_s=args.rate, port=args.port, lifetime_s=hour
    )
    with ehr:
        print(f"strict EHR at {ehr.base_url} in front of {upstream}; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(hour)
        print(f"{ehr.requests} requests, refused: {dict(ehr.refused) or 'none'}", flush=True)


if __name__ == "__main__":
    main()
