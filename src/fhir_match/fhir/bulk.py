"""Bulk Data ``$export`` (FHIR Bulk Data Access v2): a patient- or group-level export into
NDJSON files.

An alternative to paging through searches: the server builds the files itself, so a large
population costs a handful of requests instead of one per page.

What HAPI FHIR 8.8.0 (the local server) does, checked against it:

- ``GET [base]/Patient/$export`` takes ``_type``, ``_typeFilter``, ``_since`` and
  ``_outputFormat`` as query parameters. It refuses a ``patient`` query parameter (405,
  HAPI-0363: not a primitive datatype); ``POST`` with a Parameters body holding one
  ``patient`` valueReference per patient is accepted (202) and exports only those patients
  and their resources, with ``_typeFilter`` applied. An unknown patient fails the kick-off
  (404, HAPI-2001). Without ``Prefer: respond-async`` the kick-off fails (400, HAPI-0513).
- Every 202 from the status URL carries ``Retry-After: 120``, a constant in its
  BulkDataExportProvider whatever the job's progress, while a small job is done in 6-10 s:
  callers that want it sooner lower ``max_poll_interval_s``.
- The manifest's file URLs are ``[base]/Binary/<id>``. GET with
  ``Accept: application/fhir+ndjson`` returns the raw NDJSON (that Content-Type); with
  ``application/fhir+json`` it returns the Binary resource with the data in base64.
- DELETE on the status URL cancels a running job (202); on a finished job it answers 404
  and the files stay until HAPI expires them.
- Even with a ``_since`` in the future, an export without patients walks every patient
  (still running after 30 s with 10,000 patients).
- ``GET [base]/Group/<id>/$export`` exports the Group's members (``member.entity``) and their
  resources; it refuses (400, HAPI-0512) a ``_type`` outside the patient compartment, such
  as Medication. Hospital EHRs offer only this level (the population group they provision).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fhir_match.errors import FatalFhirError, FhirError, TransientFhirError
from fhir_match.fhir.client import FHIR_JSON, FhirClient
from fhir_match.fhir.transport import outcome_text, parse_retry_after

__all__ = ["NDJSON", "BulkExport", "export"]

NDJSON = "application/fhir+ndjson"
DEFAULT_POLL_S = 2.0
"""Wait between polls when the server gives no Retry-After."""
MIN_POLL_S = 1.0
MAX_POLL_S = 60.0
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
"""What a manifest's ``type`` must look like: it becomes part of a file name."""
_JSON_TYPES = frozenset({"application/json", "application/fhir+json"})


@dataclass(frozen=True)
class BulkExport:
    """What an export produced.

    ``requests`` counts the HTTP requests the export sent (kick-off, polls, downloads,
    clean-up), not the transport's retries of them. ``transaction_time`` is the server's
    time of the export: the ``since`` of the next incremental one.
    """

    files: list[Path]
    errors: tuple[str, ...]
    requests: int
    transaction_time: str


@dataclass(frozen=True)
class _Entry:
    type: str
    url: str


@dataclass(frozen=True)
class _Manifest:
    transaction_time: str
    output: tuple[_Entry, ...]
    error: tuple[_Entry, ...]


class _Counted:
    """The client's bulk calls, counted for :attr:`BulkExport.requests`."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self.count = 0

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        self.count += 1
        return self.client.request(method, url, params=params, body=body, headers=headers)

    def download(self, url: str, path: Path) -> str:
        self.count += 1
        return self.client.download(url, path, accept=NDJSON)


def export(
    client: FhirClient,
    out_dir: Path,
    *,
    types: Sequence[str],
    type_filters: Sequence[str] = (),
    patients: Sequence[str] = (),
    group: str | None = None,
    since: str | None = None,
    deadline_s: float = 3600.0,
    max_poll_interval_s: float = MAX_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BulkExport:
    """Export ``types`` from ``[base]/Patient/$export`` (or ``[base]/Group/<group>/$export``)
    into ``out_dir/<type>-<n>.ndjson``.

    ``type_filters`` are ``_typeFilter`` queries (``Observation?code=777-3``); ``patients``
    (``Patient/<id>`` references) restricts a patient-level export to them, which needs a
    POST kick-off; ``group`` (an id) exports that Group's members; ``since`` is a FHIR
    instant. Polls wait as the server's Retry-After says, clamped to [1 s,
    ``max_poll_interval_s``]. An export not finished ``deadline_s`` after it starts is
    cancelled and raises TransientFhirError: nothing failed, the server is just slower than
    allowed, so a later run may succeed. The status URL is deleted at the end either way,
    which lets the server clean up. Downloads are not bounded by the deadline.
    """
    started = clock()
    calls = _Counted(client)
    if group is not None and patients:
        raise ValueError("a group export cannot also name patients")
    kick_off = _kick_off(calls, types, type_filters, patients, group, since)
    status_url = kick_off.headers["Content-Location"]
    try:
        manifest = _await_manifest(
            calls,
            status_url,
            first_wait=_poll_wait(kick_off, max_poll_interval_s),
            started=started,
            deadline_s=deadline_s,
            max_poll_interval_s=max_poll_interval_s,
            sleep=sleep,
            clock=clock,
        )
        files = _download_outputs(calls, manifest.output, out_dir)
        errors = tuple(e for entry in manifest.error for e in _error_texts(calls, entry))
    except FhirError:
        # The failure is what the caller needs to see, not a failed clean-up after it.
        with suppress(FhirError):
            _delete_status(calls, status_url)
        raise
    _delete_status(calls, status_url)
    return BulkExport(files, errors, calls.count, manifest.transaction_time)


def _kick_off(
    calls: _Counted,
    types: Sequence[str],
    type_filters: Sequence[str],
    patients: Sequence[str],
    group: str | None,
    since: str | None,
) -> httpx.Response:
    level = "Patient" if group is None else f"Group/{group}"
    url = f"{calls.client.base_url}/{level}/$export"
    headers = {"Prefer": "respond-async", "Accept": FHIR_JSON}
    params = [("_outputFormat", NDJSON)]
    if types:
        params.append(("_type", ",".join(types)))
    params += [("_typeFilter", query) for query in type_filters]
    if since is not None:
        params.append(("_since", since))
    if patients:
        method = "POST"
        response = calls.request(method, url, body=_parameters(params, patients), headers=headers)
    else:
        method = "GET"
        response = calls.request(method, url, params=params, headers=headers)
    if response.status_code != 202 or not response.headers.get("Content-Location"):
        raise FatalFhirError(
            method,
            url,
            response.status_code,
            "export not started (expected 202 with a Content-Location)",
            outcome_text(response),
        )
    return response


def _parameters(params: Sequence[tuple[str, str]], patients: Sequence[str]) -> dict[str, Any]:
    """The kick-off as a Parameters resource: the only way to name patients (Bulk Data v2)."""
    parameter: list[dict[str, Any]] = [
        {"name": name, "valueInstant" if name == "_since" else "valueString": value}
        for name, value in params
    ]
    parameter += [{"name": "patient", "valueReference": {"reference": p}} for p in patients]
    return {"resourceType": "Parameters", "parameter": parameter}


def _poll_wait(response: httpx.Response, max_poll_interval_s: float) -> float:
    asked = parse_retry_after(response.headers.get("Retry-After"))
    wait = DEFAULT_POLL_S if asked is None else asked
    return min(max(wait, MIN_POLL_S), max_poll_interval_s)


def _await_manifest(
    calls: _Counted,
    status_url: str,
    *,
    first_wait: float,
    started: float,
    deadline_s: float,
    max_poll_interval_s: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> _Manifest:
    wait = first_wait
    while True:
        if clock() + wait > started + deadline_s:
            raise TransientFhirError(
                "GET", status_url, 202, f"export not finished within the {deadline_s:g} s deadline"
            )
        sleep(wait)
        response = calls.request("GET", status_url)
        if response.status_code != 202:
            break
        wait = _poll_wait(response, max_poll_interval_s)
    if response.status_code != 200:
        raise FatalFhirError(
            "GET", status_url, response.status_code, "unexpected status answer (not 200 or 202)"
        )
    return _manifest(response, status_url)


def _manifest(response: httpx.Response, status_url: str) -> _Manifest:
    def malformed(why: str) -> FatalFhirError:
        return FatalFhirError("GET", status_url, response.status_code, f"manifest {why}")

    try:
        data = response.json()
    except ValueError:
        raise malformed("is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("transactionTime"), str):
        raise malformed("has no transactionTime")

    def entries(key: str) -> tuple[_Entry, ...]:
        items = data.get(key) or []
        if not isinstance(items, list):
            raise malformed(f"{key} is not a list")
        found = []
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            url = item.get("url") if isinstance(item, dict) else None
            if not (isinstance(kind, str) and _RESOURCE_TYPE.fullmatch(kind)):
                raise malformed(f"{key} entry has no valid resource type")
            if not isinstance(url, str):
                raise malformed(f"{key} entry has no url")
            found.append(_Entry(kind, url))
        return tuple(found)

    return _Manifest(data["transactionTime"], entries("output"), entries("error"))


def _download_outputs(calls: _Counted, output: Sequence[_Entry], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    per_type: dict[str, int] = {}
    for entry in output:
        per_type[entry.type] = per_type.get(entry.type, 0) + 1
        path = out_dir / f"{entry.type}-{per_type[entry.type]}.ndjson"
        content_type = calls.download(entry.url, path)
        if content_type.split(";")[0].strip().lower() in _JSON_TYPES:
            # A server that ignores Accept sends a Binary resource: not the file we asked for.
            path.unlink()
            raise FatalFhirError(
                "GET", entry.url, 200, f"answered {content_type}, not NDJSON ({NDJSON})"
            )
        files.append(path)
    return files


def _error_texts(calls: _Counted, entry: _Entry) -> list[str]:
    """The issues of an error file's OperationOutcomes: the server's text, no resource data."""
    response = calls.request("GET", entry.url, headers={"Accept": NDJSON})
    texts = []
    for number, line in enumerate(response.text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            outcome = json.loads(line)
        except ValueError:
            outcome = None
        if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
            texts.append(f"error file line {number} is not an OperationOutcome")
            continue
        for issue in outcome.get("issue") or []:
            if isinstance(issue, dict):
                text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
                texts.append(f"{issue.get('severity', '?')}: {text or 'no details'}")
    return texts


def _delete_status(calls: _Counted, status_url: str) -> None:
    """Tell the server we are done (or cancel the job); gone or not allowed is fine."""
    try:
        calls.request("DELETE", status_url)
    except FatalFhirError as exc:
        if exc.status not in (404, 405):
            raise
