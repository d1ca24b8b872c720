"""Bulk Data export without a server: kick-off, polling by Retry-After, downloads, guards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_match.config import FhirSettings
from fhir_match.errors import FatalFhirError, TransientFhirError
from fhir_match.fhir import FhirClient
from fhir_match.fhir.bulk import BulkExport, export

BASE = "http://fhir.test/fhir"
STATUS_PATH = f"{BASE}/$export-poll-status"
STATUS = f"{STATUS_PATH}?_jobId=job-1"
KICK_OFF = f"{BASE}/Patient/$export"
NDJSON = "application/fhir+ndjson"


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class Server:
    """Answers by method and URL; records every request."""

    def __init__(self, routes: dict[tuple[str, str], list[httpx.Response]]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answers = self.routes[(request.method, str(request.url).split("?")[0])]
        # The last answer repeats, so a job can stay "in progress" for ever.
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, str(r.url)) for r in self.seen]


def _accepted(retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(202, headers=headers)


def _kicked_off() -> httpx.Response:
    return httpx.Response(202, headers={"Content-Location": STATUS})


def _manifest(
    output: list[dict[str, Any]], error: list[dict[str, Any]] | None = None
) -> httpx.Response:
    body = {
        "transactionTime": "2026-06-01T10:00:00.000+00:00",
        "request": KICK_OFF,
        "requiresAccessToken": True,
        "output": output,
        "error": error or [],
    }
    return httpx.Response(200, json=body)


def _ndjson(*resources: Any) -> httpx.Response:
    text = "".join(json.dumps(r) + "\n" for r in resources)
    return httpx.Response(200, text=text, headers={"Content-Type": NDJSON})


def _outcome(status: int, diagnostics: str) -> httpx.Response:
    issue = {"severity": "error", "code": "processing", "diagnostics": diagnostics}
    return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": [issue]})


def _run(
    server: Server,
    tmp_path: Path,
    time: FakeTime,
    types: Sequence[str] = ("Patient", "Observation"),
    **options: Any,
) -> BulkExport:
    client = FhirClient(
        FhirSettings(base_url=BASE), transport=httpx.MockTransport(server), sleep=time.sleep
    )
    with client:
        return export(client, tmp_path, types=types, sleep=time.sleep, clock=time.clock, **options)


def test_export_polls_as_told_then_downloads_and_cleans_up(tmp_path: Path) -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    observations = [{"resourceType": "Observation", "id": f"o{i}"} for i in range(3)]
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [
                _accepted("5"),
                _accepted("120"),
                _accepted("0"),
                _accepted("Wed, 21 Oct 2015 07:28:00 GMT"),
                _accepted(),
                _manifest(
                    [
                        {"type": "Observation", "url": f"{BASE}/Binary/a", "count": 2},
                        {"type": "Observation", "url": f"{BASE}/Binary/b"},
                        {"type": "Patient", "url": f"{BASE}/Binary/c"},
                    ]
                ),
            ],
            ("GET", f"{BASE}/Binary/a"): [_ndjson(*observations[:2])],
            ("GET", f"{BASE}/Binary/b"): [_ndjson(observations[2])],
            ("GET", f"{BASE}/Binary/c"): [_ndjson(patient)],
            ("DELETE", STATUS_PATH): [_outcome(404, "already completed")],
        }
    )
    time = FakeTime()

    result = _run(
        server,
        tmp_path,
        time,
        type_filters=["Observation?code=777-3,26515-7", "Patient?active=true"],
        since="2026-05-01T00:00:00Z",
    )

    # No Retry-After on the kick-off: 2 s; then 5, 120 capped to 60, 0 raised to 1,
    # a date in the past raised to 1, none given: 2.
    assert time.sleeps == [2.0, 5.0, 60.0, 1.0, 1.0, 2.0]
    kick_off = server.seen[0]
    assert kick_off.headers["Prefer"] == "respond-async"
    assert kick_off.headers["Accept"] == "application/fhir+json"
    assert kick_off.url.params.multi_items() == [
        ("_outputFormat", NDJSON),
        ("_type", "Patient,Observation"),
        ("_typeFilter", "Observation?code=777-3,26515-7"),
        ("_typeFilter", "Patient?active=true"),
        ("_since", "2026-05-01T00:00:00Z"),
    ]
    downloads = [r for r in server.seen if "/Binary/" in str(r.url)]
    assert {r.headers["Accept"] for r in downloads} == {NDJSON}
    assert server.calls()[-1] == ("DELETE", STATUS)

    assert result.files == [
        tmp_path / "Observation-1.ndjson",
        tmp_path / "Observation-2.ndjson",
        tmp_path / "Patient-1.ndjson",
    ]
    read = [[json.loads(line) for line in f.read_text().splitlines()] for f in result.files]
    assert read == [observations[:2], observations[2:], [patient]]
    assert result.errors == ()
    assert result.requests == len(server.seen) == 1 + 6 + 3 + 1
    assert result.transaction_time == "2026-06-01T10:00:00.000+00:00"


def test_patients_are_named_in_a_posted_parameters_resource(tmp_path: Path) -> None:
    server = Server(
        {
            ("POST", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [_manifest([])],
            ("DELETE", STATUS_PATH): [httpx.Response(202)],
        }
    )
    result = _run(
        server,
        tmp_path,
        FakeTime(),
        type_filters=["Observation?code=777-3"],
        patients=["Patient/1", "Patient/2"],
        since="2026-05-01T00:00:00Z",
    )
    kick_off = server.seen[0]
    assert kick_off.url.params.multi_items() == []
    assert kick_off.headers["Content-Type"] == "application/fhir+json"
    assert json.loads(kick_off.content) == {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_outputFormat", "valueString": NDJSON},
            {"name": "_type", "valueString": "Patient,Observation"},
            {"name": "_typeFilter", "valueString": "Observation?code=777-3"},
            {"name": "_since", "valueInstant": "2026-05-01T00:00:00Z"},
            {"name": "patient", "valueReference": {"reference": "Patient/1"}},
            {"name": "patient", "valueReference": {"reference": "Patient/2"}},
        ],
    }
    assert result.files == []
    assert result.requests == 3


def test_the_deadline_stops_polling_and_cancels_the_job(tmp_path: Path) -> None:
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [_accepted("30")],
            ("DELETE", STATUS_PATH): [httpx.Response(202)],
        }
    )
    time = FakeTime()
    with pytest.raises(TransientFhirError, match="not finished within the 100 s deadline") as err:
        _run(server, tmp_path, time, deadline_s=100.0)
    assert err.value.url == STATUS
    # 2 + 30 + 30 + 30 = 92 s waited; another 30 would pass 100.
    assert time.sleeps == [2.0, 30.0, 30.0, 30.0]
    assert server.calls()[-1] == ("DELETE", STATUS)
    assert list(tmp_path.iterdir()) == []


def test_error_files_are_reported_by_their_text(tmp_path: Path) -> None:
    outcomes = [
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "diagnostics": "Observation/9 could not be read"},
                {"severity": "warning", "details": {"text": "truncated"}},
            ],
        },
        {"resourceType": "Patient", "id": "not-an-outcome"},
    ]
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [
                _manifest(
                    [{"type": "Patient", "url": f"{BASE}/Binary/p"}],
                    [{"type": "OperationOutcome", "url": f"{BASE}/Binary/e"}],
                )
            ],
            ("GET", f"{BASE}/Binary/p"): [_ndjson({"resourceType": "Patient", "id": "p1"})],
            ("GET", f"{BASE}/Binary/e"): [_ndjson(*outcomes)],
            ("DELETE", STATUS_PATH): [httpx.Response(202)],
        }
    )
    result = _run(server, tmp_path, FakeTime())
    assert result.errors == (
        "error: Observation/9 could not be read",
        "warning: truncated",
        "error file line 2 is not an OperationOutcome",
    )
    assert result.files == [tmp_path / "Patient-1.ndjson"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Patient-1.ndjson"]


def test_an_output_url_off_the_server_is_refused(tmp_path: Path) -> None:
    elsewhere = "http://elsewhere.test/fhir/Binary/x"
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [_manifest([{"type": "Patient", "url": elsewhere}])],
            ("DELETE", STATUS_PATH): [httpx.Response(202)],
        }
    )
    with pytest.raises(FatalFhirError, match="leaves the base URL") as err:
        _run(server, tmp_path, FakeTime())
    assert err.value.url == elsewhere
    assert all(r.url.host == "fhir.test" for r in server.seen)
    assert server.calls()[-1] == ("DELETE", STATUS)


def test_a_status_url_off_the_server_is_never_polled(tmp_path: Path) -> None:
    server = Server(
        {
            ("GET", KICK_OFF): [
                httpx.Response(202, headers={"Content-Location": "http://elsewhere.test/status"})
            ]
        }
    )
    with pytest.raises(FatalFhirError, match="leaves the base URL"):
        _run(server, tmp_path, FakeTime())
    assert [r.url.host for r in server.seen] == ["fhir.test"]


def test_a_binary_resource_instead_of_ndjson_is_refused(tmp_path: Path) -> None:
    binary = {"resourceType": "Binary", "contentType": NDJSON, "data": "e30K"}
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [_manifest([{"type": "Patient", "url": f"{BASE}/Binary/p"}])],
            ("GET", f"{BASE}/Binary/p"): [
                httpx.Response(200, json=binary, headers={"Content-Type": "application/fhir+json"})
            ],
            ("DELETE", STATUS_PATH): [httpx.Response(202)],
        }
    )
    with pytest.raises(FatalFhirError, match="not NDJSON"):
        _run(server, tmp_path, FakeTime())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("answer", "status", "outcome"),
    [
        (_outcome(400, "HAPI-0512: Resource types [Foo] are invalid"), 400, "HAPI-0512"),
        (httpx.Response(200, json={"resourceType": "Bundle"}), 200, ""),
        (httpx.Response(202), 202, ""),
    ],
    ids=["rejected", "answered-at-once", "no-content-location"],
)
def test_a_kick_off_without_202_and_status_url_is_a_clear_error(
    tmp_path: Path, answer: httpx.Response, status: int, outcome: str
) -> None:
    server = Server({("POST", KICK_OFF): [answer]})
    with pytest.raises(FatalFhirError) as err:
        _run(server, tmp_path, FakeTime(), patients=["Patient/1"])
    assert (err.value.method, err.value.url, err.value.status) == ("POST", KICK_OFF, status)
    assert outcome in err.value.outcome
    assert len(server.seen) == 1


def test_a_failed_status_answer_is_an_error(tmp_path: Path) -> None:
    server = Server(
        {
            ("GET", KICK_OFF): [_kicked_off()],
            ("GET", STATUS_PATH): [_accepted("3"), _outcome(404, "job unknown")],
            ("DELETE", STATUS_PATH): [_outcome(404, "job unknown")],
        }
    )
    with pytest.raises(FatalFhirError, match="job unknown") as err:
        _run(server, tmp_path, FakeTime())
    assert err.value.status == 404
