"""The retry policy and error translation, driven through httpx's handler seam (no server)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from fhir_match.errors import FatalFhirError, TransientFhirError
from fhir_match.fhir.transport import RetryPolicy, parse_retry_after, public_url, send

Handler = Callable[[httpx.Request], httpx.Response]


def _scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


DEFAULT_POLICY = RetryPolicy()


def _run(
    handler: Handler, policy: RetryPolicy = DEFAULT_POLICY
) -> tuple[httpx.Response, list[float]]:
    waits: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("GET", "http://fhir.test/fhir/Patient")
        return send(client, request, policy, sleep=waits.append), waits


OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Unknown search parameter"}],
}


def test_success_needs_no_retry() -> None:
    handler, seen = _scripted(httpx.Response(200, json={"resourceType": "Bundle"}))
    response, waits = _run(handler)
    assert response.status_code == 200
    assert len(seen) == 1
    assert waits == []


def test_retry_after_is_obeyed_on_429() -> None:
    handler, seen = _scripted(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(200, json={}),
    )
    response, waits = _run(handler)
    assert response.status_code == 200
    assert waits == [7.0]
    assert len(seen) == 2


def test_server_errors_back_off_then_succeed() -> None:
    handler, _ = _scripted(
        httpx.Response(503), httpx.Response(502), httpx.ConnectError("refused"), httpx.Response(200)
    )
    response, waits = _run(handler)
    assert response.status_code == 200
    assert waits == [1.0, 2.0, 4.0]


def test_client_error_is_fatal_and_names_request_and_outcome() -> None:
    handler, seen = _scripted(httpx.Response(400, json=OUTCOME))
    with pytest.raises(FatalFhirError) as caught:
        _run(handler)
    assert len(seen) == 1
    message = str(caught.value)
    assert "GET http://fhir.test/fhir/Patient" in message
    assert "HTTP 400" in message
    assert "Unknown search parameter" in message


def test_retries_stop_at_the_limit() -> None:
    handler, seen = _scripted(*(httpx.Response(500) for _ in range(3)))
    with pytest.raises(TransientFhirError, match="HTTP 500"):
        _run(handler, RetryPolicy(max_retries=2))
    assert len(seen) == 3


def test_total_wait_is_capped() -> None:
    handler, seen = _scripted(
        httpx.Response(503, headers={"Retry-After": "50"}), httpx.Response(200)
    )
    with pytest.raises(TransientFhirError):
        _run(handler, RetryPolicy(max_retries=5, max_wait_s=30))
    assert len(seen) == 1


def test_timeouts_are_transient_and_name_the_request() -> None:
    handler, _ = _scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(TransientFhirError, match="no response, timed out"):
        _run(handler, RetryPolicy(max_retries=0))


def test_a_post_that_timed_out_is_not_sent_twice() -> None:
    handler, seen = _scripted(httpx.ReadTimeout("slow"), httpx.Response(201))
    waits: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("POST", "http://fhir.test/fhir/Patient", json={})
        with pytest.raises(FatalFhirError, match="timed out"):
            send(client, request, DEFAULT_POLICY, sleep=waits.append)
    assert len(seen) == 1


def test_a_refused_connection_is_retried_for_any_method() -> None:
    handler, seen = _scripted(httpx.ConnectError("refused"), httpx.Response(201))
    waits: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("POST", "http://fhir.test/fhir/Patient", json={})
        assert send(client, request, DEFAULT_POLICY, sleep=waits.append).status_code == 201
    assert len(seen) == 2


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_errors_show_search_parameters_but_not_the_patients_they_name() -> None:
    url = httpx.URL(
        "http://fhir.example/r4/Observation",
        params={"patient": "Patient/123,Patient/456", "_count": "500", "code": "777-3"},
    )

    shown = public_url(url)

    assert shown == "http://fhir.example/r4/Observation?patient=...&_count=500&code=..."
    assert "123" not in shown
