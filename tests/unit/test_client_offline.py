"""Client behaviour that needs no server: auth headers, the next-link guard, search values."""

from __future__ import annotations

import httpx
import pytest

from fhir_match.config import FhirSettings
from fhir_match.errors import DataError, FatalFhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource

BASE = "http://fhir.test/fhir"


def _client(handler: httpx.MockTransport, **settings: str) -> FhirClient:
    return FhirClient(FhirSettings(base_url=BASE, **settings), transport=handler)  # type: ignore[arg-type]


def _page(next_url: str | None = None) -> dict[str, object]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": []}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"auth": "bearer", "token": "abc"}, "Bearer abc"),
        ({"auth": "basic", "username": "u", "password": "p"}, "Basic dTpw"),
        ({}, None),
    ],
)
def test_auth_header_follows_settings(settings: dict[str, str], expected: str | None) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_page())

    with _client(httpx.MockTransport(handler), **settings) as client:
        list(client.pages(Search("Patient")))
    assert seen[0].headers.get("Authorization") == expected
    assert seen[0].headers["Accept"] == "application/fhir+json"


def test_next_links_are_followed_as_given_but_never_off_the_server() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        if len(urls) == 1:
            return httpx.Response(200, json=_page(f"{BASE}?_getpages=abc&_getpagesoffset=2"))
        return httpx.Response(200, json=_page("http://elsewhere.test/fhir?_getpages=abc"))

    with _client(httpx.MockTransport(handler)) as client:
        pages = client.pages(Search("Observation").where("code", "777-3", "26515-7"))
        with pytest.raises(FatalFhirError, match="leaves the base URL"):
            list(pages)
    assert urls == [
        f"{BASE}/Observation?code=777-3%2C26515-7",
        f"{BASE}?_getpages=abc&_getpagesoffset=2",
    ]


def test_search_refinements_return_new_values() -> None:
    base = Search("Condition")
    refined = base.where("code", "D69.3").count(50).revinclude("Observation:patient")
    assert base.params == ()
    assert refined.params == (
        ("code", "D69.3"),
        ("_count", "50"),
        ("_revinclude", "Observation:patient"),
    )


def test_invalid_resources_are_named_without_their_values() -> None:
    secret_name = "Zhang Wei"
    with pytest.raises(DataError) as caught:
        parse_resource(
            {
                "resourceType": "Patient",
                "id": "p1",
                "birthDate": "31/02/1980",
                "name": [{"text": secret_name}],
                "gender": secret_name,
            }
        )
    message = str(caught.value)
    assert "Patient/p1" in message
    assert "birthDate" in message
    assert secret_name not in message
    assert "31/02/1980" not in message


@pytest.mark.parametrize(
    "data", [[], {"id": "x"}, {"resourceType": "NotAType"}, {"resourceType": "HumanName"}]
)
def test_non_resources_are_data_errors(data: object) -> None:
    with pytest.raises(DataError):
        parse_resource(data)
