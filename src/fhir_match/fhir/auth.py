"""How requests authenticate: none, HTTP basic, or a bearer token, chosen by the settings."""

from __future__ import annotations

from collections.abc import Generator

import httpx

from fhir_match.config import FhirSettings

__all__ = ["BearerAuth", "auth_for"]


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; the token is never logged or put in a URL."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def auth_for(settings: FhirSettings) -> httpx.Auth | None:
    """The httpx auth object for the configured method (None: no authentication)."""
    if settings.auth == "basic":
        return httpx.BasicAuth(settings.username, settings.password)
    if settings.auth == "bearer":
        return BearerAuth(settings.token)
    return None
