"""SMART Backend Services without a server: the client assertion, checked with the public key;
token caching, renewal and the 401 retry, with a scripted authorization server at httpx's
handler seam (the real Keycloak is in tests/integration/test_smart_backend.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_match.cli import main
from fhir_match.config import BackendServices, load_settings
from fhir_match.errors import ConfigError, FatalFhirError, TransientFhirError
from fhir_match.fhir.auth import (
    RENEW_BEFORE_S,
    SmartBackendAuth,
    TokenSource,
    parse_token_response,
    token_endpoint,
)
from fhir_match.fhir.transport import RetryPolicy, send
from fhir_match.signing import (
    ASSERTION_LIFETIME_S,
    SigningKey,
    client_assertion,
    public_jwks,
    signing_key,
)

from .keys import key_file, pem

BASE = "http://fhir.test/fhir"
TOKEN_URL = "http://auth.test/token"
CLIENT = "fhir-match-backend"


def _published(key: SigningKey) -> KeySet:
    """The key set the EHR checks assertions with: only what :func:`public_jwks` publishes."""
    return KeySet.import_key_set(public_jwks(key))  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS384"), ("ec", "ES384")])
def test_the_assertion_is_signed_and_says_who_for_whom(kind: str, alg: str) -> None:
    key = signing_key(pem(kind))
    now = time.time()
    first = client_assertion(key, CLIENT, TOKEN_URL, now=now, jti="a1")
    second = client_assertion(key, CLIENT, TOKEN_URL, now=now, jti="a2")

    verified = jwt.decode(first, _published(key), algorithms=[alg])
    assert verified.header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    claims = verified.claims
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - now <= ASSERTION_LIFETIME_S <= 300
    again = jwt.decode(second, _published(key), algorithms=[alg])
    assert claims["jti"] != again.claims["jti"]


def test_the_published_key_set_holds_no_private_part() -> None:
    jwks = public_jwks(signing_key(pem("rsa"), "kid-1"))
    (published,) = jwks["keys"]
    assert published["kid"] == "kid-1"
    assert published["alg"] == "RS384"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published)


def test_a_token_is_renewed_shortly_before_it_expires() -> None:
    assert (
        parse_token_response(
            {"access_token": "t", "token_type": "Bearer", "expires_in": 300}, now=1000
        ).renew_at
        == 1000 + 300 - RENEW_BEFORE_S
    )
    # A short-lived token is kept for half its life, not thrown away at once.
    short = parse_token_response({"access_token": "t", "token_type": "bearer", "expires_in": 20}, 0)
    assert short.renew_at == 10
    assert "t" not in repr(short).replace("renew_at", "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"token_type": "bearer"}, "no access_token"),
        ({"access_token": "t", "token_type": "mac"}, "not bearer"),
        ({"access_token": "t", "token_type": "bearer", "expires_in": "soon"}, "expires_in"),
        ([], "not a JSON object"),
    ],
)
def test_unusable_token_responses_say_why(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_token_response(body, 0)


class AuthServer:
    """A scripted token endpoint (and smart-configuration) behind httpx.MockTransport."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.forms: list[dict[str, str]] = []
        self.issued = 0
        self.smart_configuration: dict[str, Any] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            if self.smart_configuration is None:
                return httpx.Response(404)
            return httpx.Response(200, json=self.smart_configuration)
        assert str(request.url) == TOKEN_URL
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        if self.answers:
            return self.answers.pop(0)
        self.issued += 1
        body = {"access_token": f"token-{self.issued}", "token_type": "Bearer", "expires_in": 300}
        return httpx.Response(200, json=body)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _backend(folder: Path, token_url: str = TOKEN_URL) -> BackendServices:
    env = {
        "FHIR_CLIENT_ID": CLIENT,
        "FHIR_PRIVATE_KEY_FILE": str(key_file(folder, "ec")),
        "FHIR_TOKEN_URL": token_url,
    }
    backend = load_settings(env).fhir.backend
    assert backend is not None
    return backend


def _source(
    folder: Path, server: AuthServer, clock: Clock, token_url: str = TOKEN_URL
) -> TokenSource:
    backend = _backend(folder, token_url)
    return TokenSource(BASE, backend, 5.0, transport=httpx.MockTransport(server), clock=clock)


FhirHandler = Callable[[httpx.Request], httpx.Response]


def _get(
    source: TokenSource, fhir: FhirHandler, waits: list[float] | None = None
) -> httpx.Response:
    """One FHIR read through the retry policy, authenticated by ``source``."""
    with httpx.Client(auth=SmartBackendAuth(source), transport=httpx.MockTransport(fhir)) as client:
        request = client.build_request("GET", f"{BASE}/Patient/1")
        return send(
            client,
            request,
            RetryPolicy(max_retries=2),
            sleep=(waits if waits is not None else []).append,
        )


def _ok(seen: list[str]) -> FhirHandler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={"resourceType": "Patient", "id": "1"})

    return handler


def test_the_token_request_is_a_client_credentials_grant_with_the_assertion(
    tmp_path: Path,
) -> None:
    server = AuthServer()
    source = _source(tmp_path, server, Clock())
    assert source.token() == "token-1"
    (form,) = server.forms
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"].split()[0] == "system/Patient.rs"
    claims = jwt.decode(
        form["client_assertion"],
        _published(signing_key(pem("ec"))),
        algorithms=["ES384"],
    ).claims
    assert claims["aud"] == TOKEN_URL


def test_the_token_is_reused_until_it_is_due_then_replaced(tmp_path: Path) -> None:
    server, clock, seen = AuthServer(), Clock(), list[str]()
    source = _source(tmp_path, server, clock)
    _get(source, _ok(seen))
    clock.now = 300 - RENEW_BEFORE_S - 1
    _get(source, _ok(seen))
    clock.now = 300 - RENEW_BEFORE_S
    _get(source, _ok(seen))
    assert seen == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]
    assert len(server.forms) == 2


def test_a_401_fetches_a_new_token_once_and_resends(tmp_path: Path) -> None:
    server, seen = AuthServer(), []

    def fhir(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(401)
        return httpx.Response(200, json={})

    assert _get(_source(tmp_path, server, Clock()), fhir).status_code == 200
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_a_second_401_is_fatal_and_not_tried_again(tmp_path: Path) -> None:
    server, seen = AuthServer(), []

    def fhir(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401)

    with pytest.raises(FatalFhirError, match="HTTP 401"):
        _get(_source(tmp_path, server, Clock()), fhir)
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_threads_share_one_token_and_one_renewal(tmp_path: Path) -> None:
    server = AuthServer()
    source = _source(tmp_path, server, Clock())
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(source.token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tokens == ["token-1"] * 8
    # Every thread refused token-1 asks for a renewal; only the first one fetches.
    renewed = [source.renew("token-1") for _ in range(3)]
    assert renewed == ["token-2"] * 3
    assert len(server.forms) == 2


def test_a_refused_client_names_the_token_url_and_the_oauth_error_only(tmp_path: Path) -> None:
    refusal = {"error": "invalid_client", "error_description": "Invalid client credentials"}
    server = AuthServer(httpx.Response(401, json=refusal))
    with pytest.raises(FatalFhirError) as caught:
        _get(_source(tmp_path, server, Clock()), _ok([]))
    message = str(caught.value)
    assert message == (
        f"POST {TOKEN_URL} failed (HTTP 401, Unauthorized): "
        "invalid_client: Invalid client credentials"
    )
    assert server.forms[0]["client_assertion"] not in message
    assert len(server.forms) == 1  # a refusal is not retried


def test_a_busy_token_endpoint_is_retried_with_the_fhir_request(tmp_path: Path) -> None:
    server, seen, waits = AuthServer(httpx.Response(503)), list[str](), list[float]()
    assert _get(_source(tmp_path, server, Clock()), _ok(seen), waits).status_code == 200
    assert seen == ["Bearer token-1"]
    assert len(server.forms) == 2
    assert waits == [1.0]


def test_a_token_endpoint_timeout_is_transient(tmp_path: Path) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    source = TokenSource(
        BASE, _backend(tmp_path), 5.0, transport=httpx.MockTransport(timeout), clock=Clock()
    )
    with pytest.raises(TransientFhirError, match=f"POST {TOKEN_URL} failed .*timed out"):
        source.token()


SMART_CONFIGURATION = {
    "token_endpoint": TOKEN_URL,
    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    "capabilities": ["client-confidential-asymmetric", "permission-v2"],
}


def test_the_token_endpoint_is_discovered_from_the_fhir_server(tmp_path: Path) -> None:
    server = AuthServer()
    server.smart_configuration = SMART_CONFIGURATION
    assert _source(tmp_path, server, Clock(), token_url="").token() == "token-1"


def test_a_server_without_smart_configuration_asks_for_the_token_url(tmp_path: Path) -> None:
    source = _source(tmp_path, AuthServer(), Clock(), token_url="")
    with pytest.raises(ConfigError, match=r"HTTP 404.*set FHIR_TOKEN_URL"):
        source.token()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"token_endpoint": None}, "names no token_endpoint"),
        ({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}, "private_key_jwt"),
        ({"capabilities": ["client-confidential-symmetric"]}, "client-confidential-asymmetric"),
        ({"token_endpoint_auth_signing_alg_values_supported": ["RS384"]}, "lacks ES384"),
    ],
)
def test_a_server_that_does_not_take_our_kind_of_client_is_named(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        token_endpoint({**SMART_CONFIGURATION, **change}, "ES384")
    assert token_endpoint({"token_endpoint": TOKEN_URL}, "ES384") == TOKEN_URL


def test_fhir_match_jwks_prints_what_to_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FHIR_CLIENT_ID", CLIENT)
    monkeypatch.setenv("FHIR_PRIVATE_KEY_FILE", str(key_file(tmp_path, "rsa")))
    monkeypatch.setenv("FHIR_KEY_ID", "fhir-match-2026")
    assert main(["jwks"]) == 0
    (published,) = json.loads(capsys.readouterr().out)["keys"]
    assert published["kid"] == "fhir-match-2026"
    assert published["alg"] == "RS384"
    assert "d" not in published
