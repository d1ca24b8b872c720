"""The faults suite's proxy (tests/integration/faults.py) in front of a small loopback
upstream that answers every GET with a one-entry searchset naming the Host it was sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ..integration.faults import Fault, FaultProxy, Rewrite, RewriteRule, SeenRequest

POLL_S = 10


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        here = f"http://{self.headers['Host']}{self.path}"
        kind = self.path.split("?")[0].rsplit("/", 1)[1]
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "link": [{"relation": "self", "url": here}],
            "entry": [{"resource": {"resourceType": kind, "id": "1"}, "search": {"mode": "match"}}],
        }
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def _get(proxy: FaultProxy, path: str = "/Condition?patient=Patient/1") -> httpx.Response:
    return httpx.get(proxy.base_url + path, timeout=10)


def test_answers_are_forwarded_with_the_clients_host(upstream: str) -> None:
    with FaultProxy(upstream) as proxy:
        page = _get(proxy).json()
    assert page["link"][0]["url"] == f"{proxy.base_url}/Condition?patient=Patient/1"
    assert proxy.requests == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.UNAVAILABLE, 503),
        (Fault.RATE_LIMITED, 429),
        (Fault.SERVER_ERROR, 500),
        (Fault.BAD_GATEWAY, 502),
    ],
)
def test_each_failing_answer(upstream: str, fault: Fault, status: int) -> None:
    with FaultProxy(upstream, fault_rate=1.0, faults=(fault,)) as proxy:
        response = _get(proxy)
    assert response.status_code == status
    assert ("Retry-After" in response.headers) == (status in (429, 503))
    assert response.headers["Content-Type"].startswith("text/html") == (status == 502)
    assert proxy.faults_injected == {fault: 1}


def test_a_closed_connection_and_a_stall(upstream: str) -> None:
    with (
        FaultProxy(upstream, fault_rate=1.0, faults=(Fault.CLOSED,)) as proxy,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        _get(proxy)
    with FaultProxy(upstream, fault_rate=1.0, faults=(Fault.STALL,)) as proxy:
        started = time.monotonic()
        assert _get(proxy).status_code == 200
        assert time.monotonic() - started >= 3


def test_a_seeded_share_of_requests_fails(upstream: str) -> None:
    with (
        FaultProxy(upstream, fault_rate=0.2, faults=(Fault.SERVER_ERROR,), seed=7) as proxy,
        httpx.Client() as client,
    ):
        statuses = [client.get(f"{proxy.base_url}/Patient").status_code for _ in range(100)]
    assert 10 <= statuses.count(500) <= 30
    assert statuses.count(500) + statuses.count(200) == 100


def _rewritten(upstream: str, rewrite: Rewrite) -> tuple[httpx.Response, httpx.Response]:
    """The first answer to a matching request, rewritten, and the next one (times=1)."""
    with FaultProxy(upstream) as proxy:
        rule = proxy.rewrite(RewriteRule(rewrite, lambda r: r.path.endswith("/Condition")))
        first, second = _get(proxy), _get(proxy)
    assert rule.applied == [SeenRequest("GET", "/fhir/Condition", (("patient", "Patient/1"),))]
    assert second.json()["entry"][0]["resource"]["resourceType"] == "Condition"
    return first, second


def test_rewrites_of_chosen_answers(upstream: str) -> None:
    for rewrite in (Rewrite.NOT_JSON, Rewrite.TRUNCATED):
        first, _ = _rewritten(upstream, rewrite)
        assert first.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            first.json()
    first, _ = _rewritten(upstream, Rewrite.OUTCOME)
    assert first.json()["resourceType"] == "OperationOutcome"
    first, second = _rewritten(upstream, Rewrite.NEXT_LOOP)
    assert first.json()["link"][-1] == {
        "relation": "next",
        "url": second.json()["link"][0]["url"],  # the request itself, through the proxy
    }
    first, _ = _rewritten(upstream, Rewrite.WRONG_TYPE)
    assert first.json()["entry"][0]["resource"]["resourceType"] == "Observation"
    first, _ = _rewritten(upstream, Rewrite.TOTAL_LIES)
    assert first.json()["total"] == 0


def test_down_refuses_connections_then_serves_again(upstream: str) -> None:
    with FaultProxy(upstream) as proxy:
        proxy.after(
            lambda request: request.param("patient") == "Patient/1", lambda: proxy.go_down(1)
        )
        assert _get(proxy).status_code == 200  # answered, then the proxy goes down
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline and not proxy.down:
            time.sleep(0.01)  # polling for the outage's start
        assert proxy.down
        with pytest.raises(httpx.ConnectError):
            httpx.get(proxy.base_url + "/metadata", timeout=5)
        while time.monotonic() < deadline and proxy.down:
            time.sleep(0.05)  # polling the outage's end
        assert _get(proxy).status_code == 200
    ((went, came),) = proxy.outages
    assert came - went >= 1.0
