"""A fault-injecting HTTP proxy in front of the real FHIR server: the faults suite's network.

The server stays real; only what travels between fhir-match and it goes wrong. The proxy
can fail a seeded share of requests the ways servers and gateways fail (503 and 429 with
Retry-After, 500, 502 with an HTML page, a connection closed without an answer, a 3 s
stall), refuse every connection for a while (the server gone), and rewrite chosen answers
into bad ones (a 200 that is not JSON, or is an OperationOutcome, a next link that loops,
a page of the wrong resource type, a Bundle.total that lies, JSON cut short).

The Host header the client sent is forwarded, so the server's next links name the proxy and
paging stays behind it. Loopback only; at most MAX_CONNECTIONS at once; it stops by itself
after ``lifetime_s`` if a test forgets to.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import SHUT_RDWR, socket
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from ..strict_ehr import HOP_BY_HOP

__all__ = [
    "MAX_CONNECTIONS",
    "TRANSIENT",
    "Fault",
    "FaultProxy",
    "Rewrite",
    "RewriteRule",
    "SeenRequest",
]

MAX_CONNECTIONS = 64
STALL_S = 3.0
RETRY_AFTER_S = 1


class Fault(StrEnum):
    """A transient failure, as servers and the gateways in front of them produce them."""

    UNAVAILABLE = "503 with Retry-After"
    RATE_LIMITED = "429 with Retry-After"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502 with an HTML page"
    CLOSED = "connection closed without an answer"
    STALL = "3 s stall"


TRANSIENT = tuple(Fault)


class Rewrite(StrEnum):
    """A bad answer to a request that the server answered well."""

    NOT_JSON = "200 with an HTML page"
    OUTCOME = "200 with an OperationOutcome"
    NEXT_LOOP = "a next link to the page itself"
    WRONG_TYPE = "a page of another resource type"
    TOTAL_LIES = "a Bundle.total that lies"
    TRUNCATED = "JSON cut short"


@dataclass(frozen=True)
class SeenRequest:
    """A request as the proxy saw it: method, path and decoded search parameters."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, method: str, target: str) -> SeenRequest:
        parts = urlsplit(target)
        return cls(method, parts.path, tuple(parse_qsl(parts.query, keep_blank_values=True)))

    def param(self, name: str) -> str:
        return ",".join(value for key, value in self.params if key == name)


@dataclass
class RewriteRule:
    """Rewrite the answers to requests ``matches`` accepts, ``times`` of them (None: all)."""

    rewrite: Rewrite
    matches: Callable[[SeenRequest], bool]
    times: int | None = 1
    applied: list[SeenRequest] = field(default_factory=list)

    def take(self, request: SeenRequest) -> bool:
        if self.times is not None and len(self.applied) >= self.times:
            return False
        if not self.matches(request):
            return False
        self.applied.append(request)
        return True


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.open: set[socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the connection is dropped
            return
        self.open.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open.discard(request)
            self.slots.release()

    def close_all(self) -> None:
        """Stop listening and close every open connection, as a stopping server does."""
        self.shutdown()
        self.server_close()
        for connection in list(self.open):
            with contextlib.suppress(OSError):
                connection.shutdown(SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, without a 40 ms stall
    server: _Server

    def do_GET(self) -> None:
        self._relay()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, *_: object) -> None:
        pass  # the proxy's counters say what happened; request lines would name patients

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        proxy = self.server.proxy
        answer = proxy.answer(self.command, self.path, headers, body)
        if answer is None:
            self.close_connection = True  # no answer at all
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()
        proxy.answered(SeenRequest.of(self.command, self.path))


def _outcome(severity: str, code: str, text: str) -> bytes:
    issue = {"severity": severity, "code": code, "diagnostics": text}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


_FHIR_JSON = {"Content-Type": "application/fhir+json;charset=utf-8"}
_HTML = {"Content-Type": "text/html"}
_BAD_GATEWAY_PAGE = b"<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
_MAINTENANCE_PAGE = b"<html><body>The service is down for maintenance.</body></html>"


class FaultProxy:
    """Forwards to ``upstream`` (a FHIR base URL) from ``base_url`` on a free loopback port.

    ``fault_rate`` of the requests (seeded by ``seed``) fail with one of ``faults``, chosen
    at random; :meth:`rewrite` adds a rule for bad answers; :meth:`go_down` takes the server
    away, and :meth:`after` does it (or anything) at a chosen request. ``faults_injected``
    counts what was done.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fault_rate: float = 0.0,
        faults: tuple[Fault, ...] = TRANSIENT,
        seed: int = 0,
        lifetime_s: float = 900,
    ) -> None:
        target = urlsplit(upstream.rstrip("/"))
        self._origin = f"{target.scheme}://{target.netloc}"
        self._base_path = target.path
        self.fault_rate = fault_rate
        self.faults = faults
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.rules: list[RewriteRule] = []
        self.faults_injected: Counter[str] = Counter()
        self.requests = 0
        self.unreachable = 0
        """Requests answered 502 because the server could not be reached."""
        self._trigger: tuple[Callable[[SeenRequest], bool], Callable[[], None]] | None = None
        self.outages: list[tuple[float, float]] = []
        """(went down, came back) as time.monotonic() readings."""
        self._upstream = httpx.Client(timeout=120)
        self._server: _Server | None = None
        self._stopped = threading.Event()
        self._dropping = threading.Event()
        self._passing = threading.Event()
        self._passing.set()
        self._lifetime = threading.Timer(lifetime_s, self.stop)
        self._lifetime.daemon = True
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._base_path}"

    @property
    def down(self) -> bool:
        """True while connections are refused (the listening socket is closed)."""
        return self._server is None and not self._stopped.is_set()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        self._lifetime.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._lifetime.cancel()
        self._close()
        self._upstream.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = _Server(self.port, self)
        self.port = server.server_address[1]
        serve = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        serve.start()
        self._server = server

    def _close(self) -> None:
        server = self._server
        if server is not None:
            server.close_all()
            self._server = None

    # -- what goes wrong ------------------------------------------------------------------

    def rewrite(self, rule: RewriteRule) -> RewriteRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def go_down(self, seconds: float) -> None:
        """Refuse connections (and drop open ones) for ``seconds``, then serve again."""
        with self._lock:
            if self._server is None:
                return
            self.outages.append((time.monotonic(), 0.0))
            self._dropping.set()
        threading.Thread(target=self._outage, args=(seconds,), daemon=True).start()

    def after(self, matches: Callable[[SeenRequest], bool], action: Callable[[], None]) -> None:
        """Run ``action`` (in a thread of its own) once a request ``matches`` has been
        answered: a fault at a known point of a run, without watching the clock."""
        with self._lock:
            self._trigger = (matches, action)

    def _outage(self, seconds: float) -> None:
        self._close()
        if self._stopped.wait(seconds):
            return
        self._listen()
        with self._lock:
            went, _ = self.outages[-1]
            self.outages[-1] = (went, time.monotonic())
            self._dropping.clear()

    def _fault(self) -> Fault | None:
        with self._lock:
            self.requests += 1
            if self._random.random() >= self.fault_rate:
                return None
            fault = self._random.choice(self.faults)
            self.faults_injected[fault] += 1
            return fault

    def _rule_for(self, request: SeenRequest) -> Rewrite | None:
        with self._lock:
            for rule in self.rules:
                if rule.take(request):
                    self.faults_injected[rule.rewrite] += 1
                    return rule.rewrite
        return None

    def answered(self, request: SeenRequest) -> None:
        """After an answer went out: the moment an :meth:`after` action starts."""
        with self._lock:
            trigger = self._trigger
            if trigger is None or not trigger[0](request):
                return
            self._trigger = None
        threading.Thread(target=trigger[1], daemon=True).start()

    # -- answering ------------------------------------------------------------------------

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Answer | None:
        """The answer to one request, or None to close the connection without one."""
        if self._dropping.is_set():
            return None  # a connection opened before the outage: dropped
        request = SeenRequest.of(method, target)
        fault = self._fault()
        if fault is Fault.CLOSED:
            return None
        if fault is Fault.STALL:
            time.sleep(STALL_S)  # the fault itself: a server that takes its time
        elif fault is not None:
            return _failure(fault)
        return self._rewritten(self._rule_for(request), method, target, headers, body)

    def _rewritten(
        self,
        rewrite: Rewrite | None,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> _Answer:
        if rewrite is Rewrite.NOT_JSON:
            return _Answer(200, _HTML, _MAINTENANCE_PAGE)
        if rewrite is Rewrite.OUTCOME:
            return _Answer(200, _FHIR_JSON, _outcome("error", "exception", "search failed"))
        if rewrite is Rewrite.WRONG_TYPE:
            target = _other_type(target)
        answer = self._forward(method, target, headers, body)
        if rewrite is Rewrite.TRUNCATED:
            answer.body = answer.body[: len(answer.body) // 2]
        elif rewrite is Rewrite.NEXT_LOOP or rewrite is Rewrite.TOTAL_LIES:
            page = json.loads(answer.body)
            if rewrite is Rewrite.TOTAL_LIES:
                page["total"] = 0 if page.get("entry") else 1_000_000
            else:
                itself = f"http://{headers.get('Host', '')}{target}"
                links = [k for k in page.get("link", []) if k.get("relation") != "next"]
                page["link"] = [*links, {"relation": "next", "url": itself}]
            answer.body = json.dumps(page).encode()
        return answer

    def hold(self) -> None:
        """Keep new requests waiting (as a gateway queues them) until :meth:`release`:
        what the server does meanwhile (a restart) is sure to meet the run."""
        self._passing.clear()

    def release(self) -> None:
        self._passing.set()

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        self._passing.wait(HOLD_LIMIT_S)
        try:
            response = self._upstream.request(
                method, self._origin + target, headers=headers, content=body
            )
        except httpx.TransportError:
            with self._lock:
                self.unreachable += 1
            return _failure(Fault.BAD_GATEWAY)  # the server is down: what a gateway says
        kept = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return _Answer(response.status_code, kept, response.content)


HOLD_LIMIT_S = 120.0
"""The longest a held request waits: a test that forgets to release still ends."""


def _failure(fault: Fault) -> _Answer:
    if fault is Fault.BAD_GATEWAY:
        return _Answer(502, _HTML, _BAD_GATEWAY_PAGE)
    if fault is Fault.SERVER_ERROR:
        return _Answer(500, _FHIR_JSON, _outcome("error", "exception", "internal error"))
    status = 503 if fault is Fault.UNAVAILABLE else 429
    retry = {**_FHIR_JSON, "Retry-After": str(RETRY_AFTER_S)}
    return _Answer(status, retry, _outcome("error", "transient", "try again later"))


def _other_type(target: str) -> str:
    """The same search on another resource type: Observations for anything else, and
    Conditions for Observations."""
    parts = urlsplit(target)
    head, _, kind = parts.path.rpartition("/")
    other = "Condition" if kind == "Observation" else "Observation"
    return f"{head}/{other}" + (f"?{parts.query}" if parts.query else "")
