"""FhirClient: read, search, write and send bundles to one FHIR R4 server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhir_match.config import FhirSettings
from fhir_match.errors import FatalFhirError
from fhir_match.fhir.auth import auth_for
from fhir_match.fhir.models import Resource, parse_resource, to_json
from fhir_match.fhir.search import Search
from fhir_match.fhir.transport import (
    USER_AGENT,
    RateLimit,
    RetryPolicy,
    error_for,
    outcome_text,
    public_url,
    send,
    transport_errors,
)

__all__ = ["FHIR_JSON", "MAX_PAGES", "SEARCHES_IN_FLIGHT", "FhirClient", "process_rate_limit"]

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 10_000
"""More pages than any one search of fhir-match needs (five million entries at 500 a page):
a server still sending ``next`` links past it is looping, and the search fails."""
SEARCHES_IN_FLIGHT = 4
"""Searches fhir-match runs side by side against one server, from one process: the server
answers them in parallel. Four keeps a shared server's load modest."""

JsonObject = dict[str, Any]

_rate_limits: dict[tuple[str, float], RateLimit] = {}
_rate_limits_lock = threading.Lock()


def process_rate_limit(base_url: str, per_second: float) -> RateLimit:
    """The one rate limit of this process for a server: a task opens a client of its own, but
    the quota an EHR enforces is the process's (its client registration's) as a whole."""
    with _rate_limits_lock:
        return _rate_limits.setdefault((base_url, per_second), RateLimit(per_second))


class FhirClient:
    """One server, one connection pool; close it (or use ``with``) when done. Safe to share
    between threads (searches of one batch run side by side).

    Every method returns parsed fhir.resources models except :meth:`pages`, which yields
    raw Bundle JSON for callers that stream large result sets and must survive a single
    malformed resource.
    """

    def __init__(
        self,
        settings: FhirSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.base_url = settings.base_url.rstrip("/")
        self._policy = RetryPolicy(settings.max_retries, settings.max_wait_s)
        self._foreign_links = settings.foreign_links
        self._sleep = sleep
        self.requests = 0
        """HTTP requests sent so far, retries included: what a run costs the server."""
        self.max_concurrency = settings.max_concurrency
        """Requests this client sends at once, at most; callers size their pools by it."""
        self._in_flight = threading.BoundedSemaphore(settings.max_concurrency)
        self._rate = rate_limit or process_rate_limit(self.base_url, settings.max_rate)
        self._counting = threading.Lock()
        self._http = httpx.Client(
            auth=auth_for(settings),
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"Accept": FHIR_JSON, "User-Agent": USER_AGENT},
            transport=transport,
            event_hooks={"request": [self._count]},
        )

    def _count(self, _: httpx.Request) -> None:
        # every request httpx sends passes here, retries included: the place to pace them
        self._rate.wait()
        with self._counting:
            self.requests += 1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: JsonObject | None = None,
        headers: dict[str, str] | None = None,
        repeatable: bool = False,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            url,
            params=tuple(params) if params else None,
            json=body,
            headers={
                **({"Content-Type": FHIR_JSON} if body is not None else {}),
                **(headers or {}),
            },
        )
        with self._in_flight:
            return send(self._http, request, self._policy, self._sleep, repeatable=repeatable)

    def _json(self, response: httpx.Response) -> JsonObject:
        try:
            data = response.json()
        except (ValueError, RecursionError):  # not JSON, cut short, or nested past reason
            data = None
        if not isinstance(data, dict):
            raise _bad_answer(response, "response is not FHIR JSON")
        return data

    def _page(self, response: httpx.Response, resource_type: str) -> JsonObject:
        """A searchset page, checked: a 200 holding an OperationOutcome, or entries of a type
        the search did not ask for, fail the request instead of passing for an answer (a page
        of the wrong type has lost the entries asked for, so its patients' records would be
        incomplete)."""
        page = self._json(response)
        kind = page.get("resourceType")
        if kind == "OperationOutcome":
            raise _bad_answer(
                response, "an OperationOutcome where a Bundle was expected", outcome_text(response)
            )
        if kind != "Bundle":
            raise _bad_answer(response, "response is not a Bundle")
        entries = page.get("entry", [])
        if not isinstance(entries, list) or not all(map(_well_formed, entries)):
            raise _bad_answer(response, "Bundle entries are malformed")
        foreign = sorted({t for entry in entries if (t := _foreign(entry, resource_type))})
        if foreign:
            raise _bad_answer(
                response,
                f"page holds {', '.join(foreign)} entries, not asked for ({resource_type})",
            )
        return page

    def _resource(self, response: httpx.Response) -> Resource:
        return parse_resource(self._json(response))

    # -- the FHIR interactions --------------------------------------------------------------

    def capabilities(self) -> CapabilityStatement:
        """The server's CapabilityStatement (``GET [base]/metadata``)."""
        response = self._send("GET", self._url("metadata"))
        statement = self._resource(response)
        if not isinstance(statement, CapabilityStatement):
            raise FatalFhirError(
                "GET", public_url(response.url), 200, "metadata is no CapabilityStatement"
            )
        return statement

    def read(self, resource_type: str, resource_id: str) -> Resource:
        return self._resource(self._send("GET", self._url(f"{resource_type}/{resource_id}")))

    def read_json(self, resource_type: str, resource_id: str) -> JsonObject:
        """One resource by id as raw JSON, checked to be of that type: for callers that must
        survive a malformed element (a registry's Group, a Medication a record cites)."""
        response = self._send("GET", self._url(f"{resource_type}/{resource_id}"))
        data = self._json(response)
        if data.get("resourceType") != resource_type:
            raise _bad_answer(response, f"response is not a {resource_type}")
        return data

    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> Resource:
        """Create; with ``if_none_exist`` (a search query) an existing match is returned instead."""
        headers = {"If-None-Exist": if_none_exist} if if_none_exist else {}
        headers["Prefer"] = "return=representation"
        data = to_json(resource)
        response = self._send("POST", self._url(data["resourceType"]), body=data, headers=headers)
        return self._resource(response)

    def update(self, resource: Resource, *, if_match: str | None = None) -> Resource:
        """Update by id; with ``if_match`` (a version id) a concurrent change fails with 409/412."""
        data = to_json(resource)
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        url = self._url(f"{data['resourceType']}/{data['id']}")
        return self._resource(self._send("PUT", url, body=data, headers=headers))

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._send("DELETE", self._url(f"{resource_type}/{resource_id}"))

    def delete_matching(self, search: Search, *, cascade: bool = False) -> None:
        """Conditional delete of everything ``search`` matches (the server must allow multiples)."""
        params = list(search.params) + ([("_cascade", "delete")] if cascade else [])
        self._send("DELETE", self._url(search.resource_type), params=params)

    def transaction(self, bundle: JsonObject | Resource) -> Bundle:
        """POST a transaction Bundle: all entries succeed together or none does."""
        return self._post_bundle(bundle, "transaction")

    def batch(self, bundle: JsonObject | Resource) -> Bundle:
        """POST a batch Bundle: each entry succeeds or fails on its own."""
        return self._post_bundle(bundle, "batch")

    def _post_bundle(self, bundle: JsonObject | Resource, kind: str) -> Bundle:
        data = bundle if isinstance(bundle, dict) else to_json(bundle)
        if data.get("resourceType") != "Bundle" or data.get("type") != kind:
            raise ValueError(f"expected a Bundle of type {kind!r}")
        response = self._send("POST", self.base_url, body=data, repeatable=_repeatable(data))
        result = self._resource(response)
        if not isinstance(result, Bundle):
            raise FatalFhirError("POST", self.base_url, response.status_code, "not a Bundle")
        return result

    def pages(self, search: Search) -> Iterator[JsonObject]:
        """Each searchset Bundle of ``search`` as raw JSON, following ``next`` links as given.

        Each page is checked (see :meth:`_page`). A ``next`` link that leaves the base URL is
        refused, or moved onto it (see :meth:`_on_server`): following it would send our
        credentials to another server. A ``next`` link
        to a page already read, or paging past MAX_PAGES, fails the search: the server is
        looping. ``Bundle.total`` is never read here: servers estimate it, or get it wrong.
        """
        response = self._send("GET", self._url(search.resource_type), params=list(search.params))
        read: set[str] = set()
        while True:
            read.add(str(response.request.url))
            page = self._page(response, search.resource_type)
            yield page
            next_url = _next_link(page)
            if next_url is None:
                return
            next_url = self._on_server("GET", next_url, "next link")
            if str(httpx.URL(next_url)) in read:
                raise _bad_answer(response, "next link goes back to a page already read")
            if len(read) >= MAX_PAGES:
                raise _bad_answer(response, f"next link past {MAX_PAGES} pages")
            response = self._send("GET", next_url)

    def search(self, search: Search) -> Iterator[Resource]:
        """Every resource the search returns, matches and includes alike, parsed, page by page."""
        for page in self.pages(search):
            for entry in page.get("entry") or []:
                if "resource" in entry:
                    yield parse_resource(entry["resource"])

    def total(self, search: Search) -> int:
        """How many resources match, asking the server to count (``_summary=count``)."""
        page = next(self.pages(search.where("_summary", "count")))
        return int(page.get("total", 0))

    # -- operations whose answer is not a resource (Bulk Data) ------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: JsonObject | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send to ``url`` with the retry policy and return the raw 2xx response.

        For asynchronous operations, whose answer is a status code and headers. ``url``
        must be under the base URL: it may come from the server, and our credentials go with it.
        """
        url = self._on_server(method, url, "URL")
        return self._send(method, url, params=params, body=body, headers=headers)

    def download(self, url: str, path: Path, *, accept: str) -> str:
        """Stream ``url``'s body into ``path`` and return the response's Content-Type.

        Streamed because a Bulk Data file can be far larger than memory; for the same reason
        it is not retried (the retry policy reads whole bodies). A failed download leaves no
        partial file. ``url`` must be under the base URL, as for :meth:`request`.
        """
        url = self._on_server("GET", url, "URL")
        request = self._http.build_request("GET", url, headers={"Accept": accept})
        with transport_errors(request):
            response = self._http.send(request, stream=True)
            with closing(response):
                if not response.is_success:
                    response.read()
                    raise error_for(request, response)
                try:
                    with path.open("wb") as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
        return str(response.headers.get("Content-Type", ""))

    def _on_server(self, method: str, url: str, what: str) -> str:
        """``url``, given by the server, as it may be sent: unchanged when under the base URL;
        with FHIR_FOREIGN_LINKS=rewrite, moved onto the base URL (see :func:`_onto_base`);
        else refused. The error shows no credentials and no search values."""
        if _under(url, self.base_url):
            return url
        moved = _onto_base(url, self.base_url) if self._foreign_links == "rewrite" else None
        if moved is not None:
            return moved
        hint = (
            "its path is not under the base URL's path, so it cannot be moved onto it "
            "(the gateway must pass the path through unchanged)"
            if self._foreign_links == "rewrite"
            else "set FHIR_FOREIGN_LINKS=rewrite if the server is behind a gateway"
        )
        raise FatalFhirError(
            method, _shown(url), None, f"{what} leaves the base URL {self.base_url}: {hint}"
        )


def _repeatable(bundle: JsonObject) -> bool:
    """Whether every entry does nothing more when done twice (reads, PUT, DELETE, conditional
    creates): such a bundle may be sent again after a connection dropped without an answer."""
    entries = bundle.get("entry") or []
    requests = [e.get("request") if isinstance(e, dict) else None for e in entries]
    return all(
        isinstance(r, dict)
        and (
            r.get("method") in ("GET", "HEAD", "PUT", "DELETE")
            or (r.get("method") == "POST" and bool(r.get("ifNoneExist")))
        )
        for r in requests
    )


def _bad_answer(response: httpx.Response, reason: str, outcome: str = "") -> FatalFhirError:
    """A 2xx answer that is no usable answer: the error names the request, never the body."""
    request = response.request
    return FatalFhirError(
        request.method, public_url(request.url), response.status_code, reason, outcome
    )


def _well_formed(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    resource = entry.get("resource")
    return resource is None or (
        isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)
    )


def _foreign(entry: JsonObject, resource_type: str) -> str | None:
    """The type of a matching entry that is not the type searched for, else None. Entries the
    search brought in on purpose (``_include``, ``_revinclude``) or the server's notes
    (an OperationOutcome, mode ``outcome``) may be of any type."""
    resource = entry.get("resource")
    search = entry.get("search")
    mode = search.get("mode", "match") if isinstance(search, dict) else "match"
    if resource is None or mode != "match":
        return None
    kind = str(resource["resourceType"])
    return kind if kind != resource_type else None


def _next_link(page: JsonObject) -> str | None:
    links = page.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _under(url: str, base_url: str) -> bool:
    return url == base_url or url.startswith((base_url + "/", base_url + "?"))


def _onto_base(url: str, base_url: str) -> str | None:
    """``url`` with the base URL's scheme, host and port, when its path lies under the base
    URL's path; else None.

    A gateway in front of a FHIR server (Epic's ``/api/FHIR/R4``, an nginx in front of HAPI's
    ``/fhir``) forwards the path unchanged, and the server names itself in the URLs it hands
    out by its internal address: same path, other origin. Only the origin is replaced, so
    the path and the query (a paging cursor, an export job id) stay exactly as the server
    gave them. A URL whose path lies elsewhere would need a guess at where the server's base
    path ends; it is refused instead.
    """
    given, base = urlsplit(url), urlsplit(base_url)
    if given.scheme not in ("http", "https") or not given.netloc:
        return None
    base_path = base.path.rstrip("/")
    if given.path != base_path and not given.path.startswith(base_path + "/"):
        return None
    return urlunsplit((base.scheme, base.netloc, given.path, given.query, ""))


def _shown(url: str) -> str:
    """A server-given URL as errors show it: no user or password, no search values."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(not a URL)"
    return public_url(parsed.copy_with(username=None, password=None))
