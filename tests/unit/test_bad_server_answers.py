"""Bad answers to searches, through the transport seam: each fails the request with an error
naming it (method, URL without search values) or is ignored, and paging always ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fhir_match.config import FhirSettings
from fhir_match.errors import FatalFhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir import client as client_module

BASE = "http://fhir.test/fhir"
SEARCH = Search("Condition").where("patient", "Patient/secret-1", "Patient/secret-2")
SHOWN = f"GET {BASE}/Condition?patient=..."


def _bundle(*entries: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": list(entries)}


def _entry(kind: str, mode: str = "match") -> dict[str, Any]:
    return {"resource": {"resourceType": kind, "id": "1"}, "search": {"mode": mode}}


def _pages(answer: Callable[[httpx.Request], httpx.Response]) -> list[dict[str, Any]]:
    transport = httpx.MockTransport(answer)
    with FhirClient(FhirSettings(base_url=BASE), transport=transport) as client:
        return list(client.pages(SEARCH))


def _failure(answer: Callable[[httpx.Request], httpx.Response]) -> str:
    with pytest.raises(FatalFhirError) as caught:
        _pages(answer)
    message = str(caught.value)
    assert message.startswith(SHOWN)
    assert "secret" not in message
    return message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>maintenance</html>", "not FHIR JSON"),
        (json.dumps(_bundle(_entry("Condition")))[:40].encode(), "not FHIR JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not FHIR JSON"),
        (b'["a Bundle?"]', "not FHIR JSON"),
        (b'{"resourceType": "Patient", "id": "secret-1"}', "not a Bundle"),
        (json.dumps({**_bundle(), "entry": {"resource": {}}}).encode(), "malformed"),
        (json.dumps(_bundle({"resource": "Condition"})).encode(), "malformed"),
    ],
    ids=["html", "truncated", "deep", "list", "patient", "entry-object", "resource-text"],
)
def test_a_200_that_is_no_bundle_fails_the_request(body: bytes, reason: str) -> None:
    message = _failure(lambda request: httpx.Response(200, content=body))
    assert "HTTP 200" in message
    assert reason in message


def test_an_operation_outcome_with_200_fails_the_request_with_its_text() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "search failed"}],
    }
    message = _failure(lambda request: httpx.Response(200, json=outcome))
    assert "OperationOutcome where a Bundle was expected" in message
    assert message.endswith("error: search failed")


def test_a_page_of_another_type_fails_the_request_but_includes_and_notes_pass() -> None:
    message = _failure(lambda request: httpx.Response(200, json=_bundle(_entry("Observation"))))
    assert "page holds Observation entries, not asked for (Condition)" in message

    fine = _bundle(
        _entry("Condition"), _entry("Medication", "include"), _entry("OperationOutcome", "outcome")
    )
    assert len(_pages(lambda request: httpx.Response(200, json=fine))[0]["entry"]) == 3


def test_a_next_link_back_to_a_page_already_read_ends_the_search() -> None:
    second = f"{BASE}?_getpages=abc&_getpagesoffset=500"
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        # page 2 links back to page 1, the request itself
        return httpx.Response(200, json=_bundle(next_url=second if len(seen) == 1 else seen[0]))

    with pytest.raises(FatalFhirError, match="next link goes back to a page already read") as e:
        _pages(answer)
    assert len(seen) == 2
    assert str(e.value).startswith(f"GET {BASE}?_getpages=abc&_getpagesoffset=500 failed")


def test_paging_stops_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_PAGES", 5)
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=_bundle(next_url=f"{BASE}?_getpages=a&n={len(seen)}"))

    with pytest.raises(FatalFhirError, match="next link past 5 pages"):
        _pages(answer)
    assert len(seen) == 5


def test_a_total_that_lies_changes_nothing() -> None:
    pages = [
        {**_bundle(_entry("Condition"), next_url=f"{BASE}?_getpages=a"), "total": 0},
        {**_bundle(_entry("Condition")), "total": 1_000_000},
    ]
    got = _pages(lambda request: httpx.Response(200, json=pages.pop(0)))
    assert [len(page["entry"]) for page in got] == [1, 1]


def test_a_next_link_off_the_server_is_named_without_its_search_values() -> None:
    elsewhere = "http://elsewhere.test/fhir/Condition?patient=Patient/secret-1"
    with pytest.raises(FatalFhirError) as caught:
        _pages(lambda request: httpx.Response(200, json=_bundle(next_url=elsewhere)))
    assert "secret" not in str(caught.value)
    assert "leaves the base URL" in str(caught.value)


def _bundle_sent_over_a_dropped_connection(*requests: dict[str, str]) -> int:
    """How many times a transaction of entries with ``requests`` is sent when the first
    attempt's connection closes without an answer."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"})

    entries = [{"resource": {"resourceType": "Basic"}, "request": r} for r in requests]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    settings = FhirSettings(base_url=BASE)
    transport = httpx.MockTransport(answer)
    with (
        FhirClient(settings, transport=transport, sleep=lambda s: None) as client,
        contextlib.suppress(FatalFhirError),  # the plain create's: counted below
    ):
        client.transaction(bundle)
    return len(sent)


def test_a_transaction_that_does_nothing_more_twice_is_sent_again_after_a_dropped_answer() -> None:
    conditional = {"method": "POST", "url": "Basic", "ifNoneExist": "identifier=a|b"}
    update = {"method": "PUT", "url": "Basic/1", "ifMatch": 'W/"1"'}
    assert _bundle_sent_over_a_dropped_connection(conditional, update) == 2
    # a plain create might be made twice: the error goes to the caller instead
    assert (
        _bundle_sent_over_a_dropped_connection(conditional, {"method": "POST", "url": "Basic"}) == 1
    )
