"""FHIR_FOREIGN_LINKS: URLs the server hands out on another origin, refused or moved onto the
base URL, through the transport's handler seam (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fhir_match.config import FhirSettings, ForeignLinks, load_settings
from fhir_match.errors import ConfigError, FatalFhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.bulk import export

BASE = "https://gateway.hospital.test/fhir"
INTERNAL = "http://ehr-internal.hospital.example:9443/fhir"
SECRET_ID = "pat-7781"
"""A search value: never in an error message."""


def _client(handler: httpx.MockTransport, links: ForeignLinks) -> FhirClient:
    return FhirClient(
        FhirSettings(base_url=BASE, foreign_links=links), transport=handler, sleep=lambda _: None
    )


def _page(next_url: str | None) -> dict[str, object]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": []}


class Pages:
    """Two pages; the first's next link is ``next_url``; records what was asked."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url
        self.seen: list[httpx.URL] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url)
        first = "_getpages" not in request.url.params
        return httpx.Response(200, json=_page(self.next_url if first else None))


def _search() -> Search:
    return Search("Condition").where("patient", SECRET_ID)


def test_a_foreign_next_link_is_refused_by_default_naming_the_setting() -> None:
    pages = Pages(
        f"http://user:hunter2@ehr-internal.hospital.example:9443/fhir?_getpages=abc&patient={SECRET_ID}"
    )
    with (
        _client(httpx.MockTransport(pages), "refuse") as client,
        pytest.raises(FatalFhirError) as caught,
    ):
        list(client.pages(_search()))
    message = str(caught.value)
    assert "set FHIR_FOREIGN_LINKS=rewrite if the server is behind a gateway" in message
    assert "leaves the base URL" in message
    assert SECRET_ID not in message
    assert "hunter2" not in message
    assert "user" not in message
    assert [url.host for url in pages.seen] == ["gateway.hospital.test"]


def test_with_rewrite_a_foreign_next_link_is_followed_on_the_base_url() -> None:
    pages = Pages(f"{INTERNAL}?_getpages=abc&_getpagesoffset=20")
    with _client(httpx.MockTransport(pages), "rewrite") as client:
        assert len(list(client.pages(_search()))) == 2
    followed = pages.seen[1]
    assert (followed.scheme, followed.host, followed.port) == (
        "https",
        "gateway.hospital.test",
        None,
    )
    assert followed.path == "/fhir"
    assert followed.params.multi_items() == [("_getpages", "abc"), ("_getpagesoffset", "20")]


def test_with_rewrite_a_link_whose_path_is_elsewhere_is_still_refused() -> None:
    pages = Pages("http://ehr-internal.hospital.example:9443/other/fhir?_getpages=abc")
    refused = pytest.raises(FatalFhirError, match="not under the base URL's path")
    with _client(httpx.MockTransport(pages), "rewrite") as client, refused:
        list(client.pages(_search()))
    assert len(pages.seen) == 1


def test_a_link_on_the_base_url_is_followed_as_given_in_either_mode() -> None:
    for links in ("refuse", "rewrite"):
        pages = Pages(f"{BASE}?_getpages=abc")
        with _client(httpx.MockTransport(pages), links) as client:
            assert len(list(client.pages(_search()))) == 2
        assert str(pages.seen[1]) == f"{BASE}?_getpages=abc"


def test_with_rewrite_an_export_polls_and_downloads_through_the_base_url(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    patient = {"resourceType": "Patient", "id": "p1"}

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path.endswith("/Patient/$export"):
            status = f"{INTERNAL}/$export-poll-status?_jobId=j1"
            return httpx.Response(202, headers={"Content-Location": status})
        if path.endswith("/$export-poll-status") and request.method == "GET":
            manifest = {
                "transactionTime": "2026-06-01T10:00:00Z",
                "output": [{"type": "Patient", "url": f"{INTERNAL}/Binary/b1"}],
                "error": [],
            }
            return httpx.Response(200, json=manifest)
        if path.endswith("/$export-poll-status"):
            return httpx.Response(202)
        assert path.endswith("/Binary/b1")
        body = json.dumps(patient) + "\n"
        return httpx.Response(200, text=body, headers={"Content-Type": "application/fhir+ndjson"})

    with _client(httpx.MockTransport(server), "rewrite") as client:
        result = export(client, tmp_path, types=["Patient"], sleep=lambda _: None)
    assert [json.loads(line) for line in result.files[0].read_text().splitlines()] == [patient]
    assert {r.url.host for r in seen} == {"gateway.hospital.test"}
    assert [(r.method, r.url.path) for r in seen[1:]] == [
        ("GET", "/fhir/$export-poll-status"),
        ("GET", "/fhir/Binary/b1"),
        ("DELETE", "/fhir/$export-poll-status"),
    ]


def test_the_setting_is_read_and_checked() -> None:
    assert load_settings({}).fhir.foreign_links == "refuse"
    assert load_settings({"FHIR_FOREIGN_LINKS": "Rewrite"}).fhir.foreign_links == "rewrite"
    with pytest.raises(ConfigError, match="FHIR_FOREIGN_LINKS must be one of refuse, rewrite"):
        load_settings({"FHIR_FOREIGN_LINKS": "follow"})
