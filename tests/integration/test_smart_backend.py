"""SMART Backend Services against the real Keycloak (scripts/keycloak, realm client
``fhir-match-backend``, the test keys in tests/fixtures/smart-backend/) and the real HAPI.

HAPI checks no token, so a loopback proxy in front of it records the Authorization header of
every request; it also plays the parts of an EHR's FHIR server that HAPI lacks: it publishes
a ``.well-known/smart-configuration`` naming Keycloak's token endpoint, and answers 401 to a
token it is told was revoked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from fhir_match.config import DEFAULT_BACKEND_SCOPE, FhirSettings, Settings, load_settings
from fhir_match.errors import ConfigError, FatalFhirError
from fhir_match.fhir import FhirClient
from fhir_match.fhir.auth import SmartBackendAuth, TokenSource
from fhir_match.fhir.transport import RetryPolicy, send

from ..conftest import ROOT
from .conftest import KEYCLOAK_URL

REALM = f"{KEYCLOAK_URL}/realms/fhir-match"
TOKEN_URL = f"{REALM}/protocol/openid-connect/token"
CLIENT_ID = "fhir-match-backend"
KEYS = ROOT / "tests" / "fixtures" / "smart-backend"


class FhirProxy:
    """A loopback HTTP server in front of the FHIR server: it records each request's bearer
    token, forwards GETs, serves ``smart_configuration`` when set, and answers 401 to the
    tokens in ``revoked``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tokens: list[str] = []
        self.revoked: set[str] = set()
        self.smart_configuration: dict[str, Any] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FhirProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, authorization: str) -> tuple[int, str, bytes]:
        if path == "/fhir/.well-known/smart-configuration":
            if self.smart_configuration is None:
                return 404, "text/plain", b"no SMART configuration"
            return 200, "application/json", json.dumps(self.smart_configuration).encode()
        token = authorization.removeprefix("Bearer ")
        self.tokens.append(token)
        if token in self.revoked:
            return 401, "text/plain", b"token revoked"
        upstream = httpx.get(
            self.upstream + path.removeprefix("/fhir"),
            headers={"Accept": "application/fhir+json"},
            timeout=30,
        )
        return upstream.status_code, upstream.headers["Content-Type"], upstream.content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = proxy._answer(
                    self.path, self.headers.get("Authorization", "")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass  # the tests read what they need from the proxy itself

        return Handler


@pytest.fixture(scope="module")
def keycloak_keys() -> KeySet:
    """Keycloak's realm keys, to check the tokens it issued are its own."""
    try:
        response = httpx.get(f"{REALM}/protocol/openid-connect/certs", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"no Keycloak realm at {REALM} (scripts/keycloak start): {exc}")
    return KeySet.import_key_set(response.json())


@pytest.fixture
def proxy(settings: Settings) -> Iterator[FhirProxy]:
    with FhirProxy(settings.fhir.base_url) as proxy:
        yield proxy


def _backend_settings(proxy: FhirProxy, key: Path, **env: str) -> FhirSettings:
    """The settings a user would set for this client, read as the product reads them."""
    return load_settings(
        {
            "FHIR_BASE_URL": proxy.base_url,
            "FHIR_CLIENT_ID": CLIENT_ID,
            "FHIR_PRIVATE_KEY_FILE": str(key),
            "FHIR_TOKEN_URL": TOKEN_URL,
            **env,
        }
    ).fhir


def _claims(token: str, keycloak_keys: KeySet) -> dict[str, Any]:
    return dict(jwt.decode(token, keycloak_keys, algorithms=["RS256"]).claims)


@pytest.mark.parametrize("key", ["rsa.pem", "ec.pem"])
def test_a_keycloak_token_is_sent_to_the_fhir_server_and_kept_for_the_next_client(
    proxy: FhirProxy, keycloak_keys: KeySet, key: str
) -> None:
    settings = _backend_settings(proxy, KEYS / key)
    with FhirClient(settings) as client:
        assert client.capabilities().fhirVersion == "4.0.1"  # HAPI answered through the proxy
    with FhirClient(settings) as another:  # a worker's next task: a new client, same process
        another.capabilities()

    first, second = proxy.tokens
    assert first == second
    claims = _claims(first, keycloak_keys)
    assert claims["iss"] == REALM
    assert claims["azp"] == CLIENT_ID
    assert set(claims["scope"].split()) == set(DEFAULT_BACKEND_SCOPE.split())


def test_the_token_endpoint_is_found_in_the_smart_configuration(
    proxy: FhirProxy, keycloak_keys: KeySet
) -> None:
    oidc = httpx.get(f"{REALM}/.well-known/openid-configuration", timeout=10).json()
    # What an EHR publishes, with Keycloak's own endpoint, methods and algorithms.
    proxy.smart_configuration = {
        "token_endpoint": oidc["token_endpoint"],
        "token_endpoint_auth_methods_supported": oidc["token_endpoint_auth_methods_supported"],
        "token_endpoint_auth_signing_alg_values_supported": oidc[
            "token_endpoint_auth_signing_alg_values_supported"
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }
    settings = _backend_settings(proxy, KEYS / "ec.pem", FHIR_TOKEN_URL="")
    with FhirClient(settings) as client:
        client.capabilities()
    assert _claims(proxy.tokens[0], keycloak_keys)["azp"] == CLIENT_ID


def test_a_fhir_server_without_smart_configuration_asks_for_the_token_url(
    proxy: FhirProxy,
) -> None:
    settings = _backend_settings(proxy, KEYS / "rsa.pem", FHIR_TOKEN_URL="")
    with FhirClient(settings) as client, pytest.raises(ConfigError, match="FHIR_TOKEN_URL"):
        client.capabilities()
    assert proxy.tokens == []


def test_a_key_keycloak_does_not_know_is_refused_with_its_reason(
    proxy: FhirProxy, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    registered_kid = _backend_settings(proxy, KEYS / "rsa.pem").backend.key_id
    settings = _backend_settings(proxy, wrong, FHIR_KEY_ID=registered_kid)

    with FhirClient(settings) as client, pytest.raises(FatalFhirError) as caught:
        client.capabilities()
    message = str(caught.value)
    assert message.startswith(f"POST {TOKEN_URL} failed (HTTP 400")
    assert "invalid_client" in message
    assert "eyJ" not in message  # no JWT (assertion or token) in the message
    assert proxy.tokens == []  # nothing reached the FHIR server


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_expired_token_is_replaced_and_a_revoked_one_renewed(
    proxy: FhirProxy, keycloak_keys: KeySet
) -> None:
    settings = _backend_settings(proxy, KEYS / "rsa.pem")
    assert settings.backend is not None
    clock = Clock()
    source = TokenSource(proxy.base_url, settings.backend, settings.timeout_s, clock=clock)

    def read_metadata() -> None:
        with httpx.Client(auth=SmartBackendAuth(source), timeout=30) as http:
            request = http.build_request("GET", f"{proxy.base_url}/metadata")
            send(http, request, RetryPolicy(max_retries=0))

    read_metadata()
    read_metadata()
    clock.now = 3600.0  # an hour on: Keycloak's 300 s token is long due
    read_metadata()
    proxy.revoked.add(proxy.tokens[-1])  # the server stops taking the current token
    read_metadata()

    first, kept, replaced, refused, renewed = proxy.tokens
    assert first == kept
    assert replaced != first
    assert refused == replaced
    assert renewed not in (first, replaced)
    for token in (first, replaced, renewed):
        assert _claims(token, keycloak_keys)["azp"] == CLIENT_ID
