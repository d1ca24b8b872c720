"""SMART App Launch 2.0 for the review app: EHR launch and standalone launch, authorization
code with PKCE, by Authlib; the session (server-side, in Redis) keeps the token.

The FHIR server names its authorization server in ``.well-known/smart-configuration``; a
server that publishes none (the local HAPI) is paired with an OpenID Connect issuer from the
settings. A launch from any other FHIR server than the configured one is refused: the app
would otherwise hand an authorization code to whoever names themselves ``iss``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starsessions import regenerate_session_id

from fhir_match.config import FhirSettings
from fhir_match.errors import ConfigError, FhirError
from fhir_match.fhir import FhirClient
from fhir_match.review.config import ReviewSettings
from fhir_match.review.grants import Grant, requested_scopes

__all__ = ["LaunchError", "Smart", "User", "current_user", "metadata_url"]

CLIENT_NAME = "smart"
REFRESH_BEFORE_S = 30
"""Renew the access token this long before it expires, so no page is read with a dead one."""


class LaunchError(Exception):
    """A launch that cannot go on; its message is shown to the user as it is."""


@dataclass(frozen=True)
class User:
    fhir_user: str
    """A reference (``Practitioner/123``) or an absolute URL; empty without sign-in."""
    name: str
    grant: Grant
    access_token: str
    patient: str
    """The launch's patient context, if the EHR gave one."""


def metadata_url(settings: ReviewSettings) -> str:
    """Where the authorization server's endpoints are published."""
    smart = f"{settings.fhir_base_url}/.well-known/smart-configuration"
    try:
        with FhirClient(FhirSettings(settings.fhir_base_url, max_retries=1)) as client:
            client.request("GET", smart)
        return smart
    except FhirError as exc:
        if settings.auth_server:
            return f"{settings.auth_server}/.well-known/openid-configuration"
        raise ConfigError(
            f"{settings.fhir_base_url} publishes no SMART configuration ({exc}); "
            f"set FHIR_MATCH_REVIEW_AUTH_SERVER to its OpenID Connect issuer"
        ) from None


class Smart:
    """The OAuth client for the one FHIR server the app reviews."""

    def __init__(self, settings: ReviewSettings, evidence_types: frozenset[str]) -> None:
        self.settings = settings
        self.evidence_types = evidence_types
        self.oauth = OAuth()
        self.oauth.register(
            CLIENT_NAME,
            client_id=settings.client_id,
            server_metadata_url=metadata_url(settings),
            client_kwargs={"code_challenge_method": "S256", "token_endpoint_auth_method": "none"},
        )

    async def launch(self, request: Request) -> Response:
        """``/launch``: with ``iss`` and ``launch`` from the EHR, or alone (standalone)."""
        iss = request.query_params.get("iss", "").rstrip("/")
        launch = request.query_params.get("launch", "")
        if iss and iss != self.settings.fhir_base_url:
            raise LaunchError(
                "This app was launched from a FHIR server it is not registered with. "
                "Ask your EHR administrator to check the app's registration."
            )
        if launch and not iss:
            raise LaunchError("The EHR's launch is missing its FHIR server (iss).")
        params = {"aud": self.settings.fhir_base_url}
        if launch:
            params["launch"] = launch
        request.session.clear()
        client = self.oauth.create_client(CLIENT_NAME)
        try:
            response: Response = await client.authorize_redirect(
                request,
                f"{self.settings.base}/callback",
                scope=requested_scopes(
                    self.evidence_types, ehr_launch=bool(launch), store=bool(self.settings.store)
                ),
                **params,
            )
        except (OAuthError, OSError, ValueError) as exc:
            raise LaunchError(
                f"The sign-in server could not be reached ({type(exc).__name__})."
            ) from None
        return response

    async def callback(self, request: Request) -> Response:
        """``/callback``: the authorization server's answer; the code becomes a token."""
        client = self.oauth.create_client(CLIENT_NAME)
        try:
            token: dict[str, Any] = await client.authorize_access_token(request)
        except OAuthError as exc:
            reason = exc.description or exc.error or "the sign-in was not completed"
            raise LaunchError(f"Sign-in failed: {reason}. Launch the app again.") from None
        claims = token.get("userinfo") or {}
        regenerate_session_id(request)
        request.session.clear()
        request.session.update(
            {
                "user": {
                    "fhir_user": str(claims.get("fhirUser") or ""),
                    "name": str(claims.get("name") or claims.get("preferred_username") or ""),
                    "patient": str(token.get("patient") or ""),
                },
                "token": _kept(token),
                "csrf": secrets.token_urlsafe(32),
            }
        )
        return RedirectResponse(self.settings.base + "/", status_code=303)

    async def keep_fresh(self, request: Request) -> None:
        """Renew a session's access token with its refresh token shortly before it expires;
        a refresh the server refuses ends the session (the user launches again)."""
        token = request.session.get("token")
        if not token or float(token["expires_at"]) - time.time() > REFRESH_BEFORE_S:
            return
        if not token.get("refresh_token"):
            return
        metadata = await self.oauth.create_client(CLIENT_NAME).load_server_metadata()
        try:
            # A public client (PKCE, no secret): nothing to authenticate with.
            async with AsyncOAuth2Client(
                client_id=self.settings.client_id,
                token_endpoint_auth_method="none",  # noqa: S106
            ) as oauth:
                renewed = await oauth.refresh_token(
                    metadata["token_endpoint"], refresh_token=token["refresh_token"]
                )
        except (OAuthError, OSError, ValueError):
            request.session.clear()
            return
        request.session["token"] = _kept({"scope": token["scope"], **renewed})


def _kept(token: dict[str, Any]) -> dict[str, Any]:
    """What the session keeps of a token response (never sent to the browser)."""
    return {
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token") or "",
        "scope": str(token.get("scope") or ""),
        "expires_at": float(token.get("expires_at") or time.time() + 300),
    }


def current_user(request: Request, settings: ReviewSettings) -> User | None:
    """The signed-in user, or None when there is no valid session (or its token expired).

    Without SMART (a FHIR server with no authorization, on loopback) everyone is the local
    user and sees everything the server serves.
    """
    if not settings.smart:
        request.session.setdefault("csrf", secrets.token_urlsafe(32))
        return User("", "local user (no sign-in)", Grant(unrestricted=True), "", "")
    user, token = request.session.get("user"), request.session.get("token")
    if not user or not token or float(token.get("expires_at", 0)) <= time.time():
        return None
    grant = Grant.from_scope(token["scope"])
    return User(
        fhir_user=user["fhir_user"],
        name=user["name"] or user["fhir_user"],
        grant=grant.with_store() if settings.store else grant,
        access_token=token["access_token"],
        patient=user.get("patient", ""),
    )
