"""How requests authenticate: none, HTTP basic, a bearer token, or SMART Backend Services.

SMART Backend Services (SMART App Launch 2.0) is how an EHR lets an unattended client in:
fhir-match posts a ``client_credentials`` grant to the EHR's token endpoint, authenticated by
a JWT it signs with its private key, and sends the access token it gets as a bearer token.
The token is kept per process and shared by every client and thread, renewed shortly before
it runs out, and once more when the FHIR server answers 401 (revoked, or clocks apart).

Token and discovery requests are sent once each (:func:`send_once`): they happen inside a
FHIR request, whose retry policy (``transport.send``) retries them with it. Neither the key,
the assertion nor a token is ever logged or put in an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from fhir_match.config import BackendServices, FhirSettings
from fhir_match.errors import ConfigError, FatalFhirError
from fhir_match.fhir.transport import USER_AGENT, outcome_text, send_once
from fhir_match.signing import CLIENT_ASSERTION_TYPE, client_assertion, signing_key

__all__ = [
    "AccessToken",
    "BearerAuth",
    "SmartBackendAuth",
    "TokenSource",
    "auth_for",
    "oauth_error_text",
    "parse_token_response",
    "token_endpoint",
]

log = logging.getLogger(__name__)

RENEW_BEFORE_S = 60.0
"""Renew a token this long before it expires (at most half its lifetime), so that no request
(up to FHIR_TIMEOUT long, retries apart) starts with a token about to die."""
DEFAULT_EXPIRES_IN_S = 300.0
"""SMART's recommended lifetime, assumed when a token response leaves out ``expires_in``."""
_ERROR_MAX_CHARS = 500


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; the token is never logged or put in a URL."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    renew_at: float
    """When to fetch the next one, on the token source's clock."""


def parse_token_response(body: object, now: float) -> AccessToken:
    """The access token in a token endpoint's JSON answer; ValueError says what is missing."""
    if not isinstance(body, dict):
        raise ValueError("the token response is not a JSON object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("the token response has no access_token")
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ValueError(f"the token is of type {token_type!r}, not bearer")
    expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN_S)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise ValueError(f"the token response's expires_in is {expires_in!r}")
    lifetime = float(expires_in)
    return AccessToken(value, now + lifetime - min(RENEW_BEFORE_S, lifetime / 2))


def oauth_error_text(response: httpx.Response) -> str:
    """An OAuth 2.0 error answer (RFC 6749 5.2) as ``code: description``, for messages."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return outcome_text(response)
    description = body.get("error_description")
    text = f"{body['error']}: {description}" if isinstance(description, str) else body["error"]
    return str(text)[:_ERROR_MAX_CHARS]


def token_endpoint(configuration: object, algorithm: str) -> str:
    """The token endpoint a ``.well-known/smart-configuration`` names, once it is clear the
    server takes our kind of client; ValueError says why not.

    Only what the server advertises is checked: a field it leaves out is no refusal.
    """
    if not isinstance(configuration, dict):
        raise ValueError("the SMART configuration is not a JSON object")
    endpoint = configuration.get("token_endpoint")
    parts = urlsplit(endpoint if isinstance(endpoint, str) else "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the SMART configuration names no token_endpoint URL")
    wanted = {
        "token_endpoint_auth_methods_supported": "private_key_jwt",
        "capabilities": "client-confidential-asymmetric",
        "token_endpoint_auth_signing_alg_values_supported": algorithm,
    }
    for name, value in wanted.items():
        advertised = configuration.get(name)
        if isinstance(advertised, list) and value not in advertised:
            listed = ", ".join(map(str, advertised))
            raise ValueError(f"its {name} lacks {value} (it lists {listed})")
    return str(endpoint)


class TokenSource:
    """One backend client's access token for one FHIR server, shared by threads.

    ``clock`` (monotonic seconds) decides when a token is due for renewal; assertions are
    dated by the wall clock, as the authorization server reads them.
    """

    def __init__(
        self,
        base_url: str,
        backend: BackendServices,
        timeout_s: float,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._backend = backend
        self._key = signing_key(backend.private_key, backend.key_id)
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._token_url = backend.token_url

    def token(self) -> str:
        """A token that is not about to expire: the kept one, or a new one."""
        with self._lock:
            if self._token is None or self._clock() >= self._token.renew_at:
                self._token = self._fetch()
            return self._token.value

    def renew(self, rejected: str) -> str:
        """A token other than ``rejected``, which the FHIR server refused. Threads that were
        refused the same token get one new token between them."""
        with self._lock:
            if self._token is None or self._token.value == rejected:
                self._token = self._fetch()
            return self._token.value

    def _fetch(self) -> AccessToken:
        with httpx.Client(
            timeout=self._timeout, transport=self._transport, headers={"User-Agent": USER_AGENT}
        ) as http:
            if not self._token_url:
                self._token_url = self._discover(http)
            assertion = client_assertion(
                self._key,
                self._backend.client_id,
                self._token_url,
                now=time.time(),
                jti=uuid.uuid4().hex,
            )
            form = {
                "grant_type": "client_credentials",
                "scope": self._backend.scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            request = http.build_request(
                "POST", self._token_url, data=form, headers={"Accept": "application/json"}
            )
            asked = self._clock()  # the token's lifetime runs from here, not from the answer
            response = send_once(http, request, oauth_error_text)
        try:
            body = response.json()
        except ValueError:
            body = None
        try:
            token = parse_token_response(body, asked)
        except ValueError as exc:
            raise FatalFhirError(
                "POST", self._token_url, response.status_code, "no usable token", str(exc)
            ) from None
        log.info("access token for client %s from %s", self._backend.client_id, self._token_url)
        return token

    def _discover(self, http: httpx.Client) -> str:
        url = f"{self._base_url}/.well-known/smart-configuration"
        request = http.build_request("GET", url, headers={"Accept": "application/json"})
        try:
            response = send_once(http, request)
        except FatalFhirError as exc:
            raise ConfigError(f"{exc}; set FHIR_TOKEN_URL to the token endpoint") from exc
        try:
            configuration = response.json()
        except ValueError:
            configuration = None
        try:
            return token_endpoint(configuration, self._key.alg)
        except ValueError as exc:
            raise ConfigError(f"{url}: {exc}; set FHIR_TOKEN_URL if it is wrong") from None


class SmartBackendAuth(httpx.Auth):
    """Adds the token source's bearer token; on a 401, sends once more with a new token."""

    requires_request_body = True
    """The request may be sent twice, so its body must be at hand."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self._source.renew(token)}"
            yield request


_shared: dict[tuple[str, BackendServices, float], TokenSource] = {}
_shared_lock = threading.Lock()


def _shared_source(settings: FhirSettings, backend: BackendServices) -> TokenSource:
    """The process's token source for these settings: every client of a worker process (one
    per task) uses the same token until it is due."""
    key = (settings.base_url, backend, settings.timeout_s)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = TokenSource(settings.base_url, backend, settings.timeout_s)
        return _shared[key]


def auth_for(settings: FhirSettings) -> httpx.Auth | None:
    """The httpx auth object for the configured method (None: no authentication)."""
    if settings.auth == "basic":
        return httpx.BasicAuth(settings.username, settings.password)
    if settings.auth == "bearer":
        return BearerAuth(settings.token)
    if settings.backend is not None:
        return SmartBackendAuth(_shared_source(settings, settings.backend))
    return None
