"""Send one FHIR request: timeouts, the retry policy, and httpx failures turned into our errors.

The whole retry policy lives in :func:`send`: which failures are retried, how long to wait,
and when to give up. Nothing else in fhir-match sleeps between attempts.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from fhir_match.errors import FatalFhirError, FhirError, TransientFhirError

__all__ = [
    "USER_AGENT",
    "RateLimit",
    "RetryPolicy",
    "error_for",
    "outcome_text",
    "parse_retry_after",
    "public_url",
    "send",
    "send_once",
    "transport_errors",
]

log = logging.getLogger(__name__)

USER_AGENT = "fhir-match"

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Waits between attempts; the last one repeats. Retry-After overrides, up to the cap."""
RETRY_AFTER_CAP_S = 60.0
"""A server asking for a longer pause than this is treated as down for this request."""
_OUTCOME_MAX_CHARS = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries: attempts after the first, and total waiting allowed."""

    max_retries: int = 5
    max_wait_s: float = 120.0


class RateLimit:
    """At most ``per_second`` requests a second, evenly spaced, from every thread that shares
    it: an EHR's gateway counts a client's requests and answers 429 past its quota, so
    staying under it costs less than being told to wait. ``per_second`` 0: no limit."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Return when the next request may go: each takes the next free slot, so threads
        never send two at once past the limit."""
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if usable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def outcome_text(response: httpx.Response) -> str:
    """The server's OperationOutcome issues as one line, or "" if the body is not one."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in body.get("issue") or []:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        parts.append(f"{issue.get('severity', '?')}: {text}".strip())
    return "; ".join(parts)[:_OUTCOME_MAX_CHARS]


_SHOWN_PARAMS = frozenset(
    {"_count", "_elements", "_include", "_revinclude", "_summary", "_getpages", "_getpagesoffset"}
)


def public_url(url: httpx.URL) -> str:
    """The URL as errors and logs show it: search values can name patients (``patient=``,
    ``_id=``, ``identifier=``), so only the values of paging and shaping parameters are kept."""
    if not url.query:
        return str(url)
    shown = [
        f"{name}={value}" if name in _SHOWN_PARAMS else f"{name}=..."
        for name, value in url.params.multi_items()
    ]
    return f"{url.copy_with(query=None)}?{'&'.join(shown)}"


def error_for(
    request: httpx.Request,
    response: httpx.Response,
    explain: Callable[[httpx.Response], str] = outcome_text,
) -> FhirError:
    """The error for a non-2xx response; ``explain`` reads the server's words from the body."""
    kind = TransientFhirError if response.status_code in RETRYABLE_STATUSES else FatalFhirError
    return kind(
        request.method,
        public_url(request.url),
        response.status_code,
        response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code),
        explain(response),
    )


@contextmanager
def transport_errors(request: httpx.Request, *, repeatable: bool = False) -> Iterator[None]:
    """Only here do httpx exceptions exist; above this line they are FhirErrors."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # The request never reached the server: always safe to send again.
        raise TransientFhirError(
            request.method, public_url(request.url), None, f"{type(exc).__name__}: {exc}"
        ) from exc
    except httpx.TransportError as exc:
        # The server may have acted on it: only a request that does the same thing twice
        # (a read, a PUT or DELETE, a conditional create) may be sent again.
        kind = TransientFhirError if repeatable or _idempotent(request) else FatalFhirError
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        raise kind(
            request.method, public_url(request.url), None, f"{what} ({type(exc).__name__})"
        ) from exc


def _idempotent(request: httpx.Request) -> bool:
    return request.method in ("GET", "HEAD", "PUT", "DELETE") or "If-None-Exist" in request.headers


def send_once(
    client: httpx.Client,
    request: httpx.Request,
    explain: Callable[[httpx.Response], str] = outcome_text,
) -> httpx.Response:
    """Send a request that may safely be repeated, once: a 2xx response or a FhirError.

    For the requests authorization makes inside a FHIR request (discovery, a token): they
    are retried as part of that request, by :func:`send`, so a transient failure here
    must stay transient and must not be retried twice over.
    """
    with transport_errors(request, repeatable=True):
        response = client.send(request)
        response.read()
    if not response.is_success:
        raise error_for(request, response, explain)
    return response


def _delay(attempt: int, response: httpx.Response | None) -> float:
    backoff = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
    if response is None:
        return backoff
    asked = parse_retry_after(response.headers.get("Retry-After"))
    return backoff if asked is None else asked


def send(
    client: httpx.Client,
    request: httpx.Request,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    *,
    repeatable: bool = False,
) -> httpx.Response:
    """Send ``request``, retrying transient failures; return a 2xx response or raise.

    Retried: 408, 429, 500, 502, 503, 504 and connection errors; a timeout or a dropped
    connection only for requests that are safe to repeat (reads, PUT, DELETE, conditional
    creates, or a bundle the caller says is ``repeatable``), since the server may have acted
    on the first one. A Retry-After
    header is obeyed; a request whose next wait would pass ``policy.max_wait_s`` in total, or
    whose server asks for more than RETRY_AFTER_CAP_S, fails with the last error.
    """
    waited = 0.0
    attempt = 0
    while True:
        response: httpx.Response | None = None
        try:
            with transport_errors(request, repeatable=repeatable):
                response = client.send(request)
                response.read()
            if response.is_success:
                return response
            error: FhirError = error_for(request, response)
        except TransientFhirError as exc:
            error = exc
        if not isinstance(error, TransientFhirError) or attempt >= policy.max_retries:
            raise error
        delay = _delay(attempt, response)
        if delay > RETRY_AFTER_CAP_S or waited + delay > policy.max_wait_s:
            raise error
        log.warning("retrying in %.1fs after %s", delay, error)
        sleep(delay)
        waited += delay
        attempt += 1
