"""The review app: routes, sessions and the security headers around the pages.

Sessions are server-side (starsessions, in Redis): the browser holds an HttpOnly, SameSite
cookie with an opaque id and nothing else, the token stays on the server. Every state
change is a POST carrying the session's CSRF token. Pages carry a content security policy
that allows nothing but this app's own stylesheet: no scripts at all.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.redis import RedisStore

from fhir_match.errors import ConfigError, FhirError
from fhir_match.evaluate.engine import retrieved_types, translate_cql
from fhir_match.evaluate.study import configured_studies, load_study
from fhir_match.review.config import ReviewSettings
from fhir_match.review.pages import Pages, review_templates
from fhir_match.review.smart import LaunchError, Smart, current_user
from fhir_match.screen import load_normaliser

__all__ = ["create_app"]

HERE = Path(__file__).parent
log = logging.getLogger(__name__)

_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


async def _security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.url.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def create_app(settings: ReviewSettings) -> Starlette:
    """The ASGI app for ``settings``; ``fhir-match review`` serves it with uvicorn."""
    studies = {s: load_study(s) for s in configured_studies()}
    translate_cql()
    evidence_types = frozenset(
        t
        for study in studies.values()
        for t in retrieved_types(study.library, study.library_version)
    )
    smart = Smart(settings, evidence_types) if settings.smart else None
    templates = review_templates(settings.zone)
    normalisers = {s: load_normaliser(study) for s, study in studies.items()}
    pages = Pages(settings, studies, templates, lambda r: current_user(r, settings), normalisers)

    def failure(request: Request, message: str, status: int) -> Response:
        return pages.render(request, "error.html", status=status, message=message, user=None)

    async def launch(request: Request) -> Response:
        if smart is None:
            return RedirectResponse(settings.base + "/", status_code=303)
        return await smart.launch(request)

    async def callback(request: Request) -> Response:
        if smart is None:
            return RedirectResponse(settings.base + "/", status_code=303)
        return await smart.callback(request)

    async def sign_out(request: Request) -> Response:
        async with request.form() as form:
            sent = str(form.get("csrf") or "")
        if not pages.csrf_ok(request, sent):
            return failure(request, "This form has expired. Reload the page and try again.", 403)
        request.session.clear()
        return pages.render(request, "signin.html", user=None, signed_out=True)

    async def launch_failed(request: Request, exc: Exception) -> Response:
        return failure(request, str(exc), 400)

    async def server_failed(request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, FhirError) else None
        log.warning("FHIR server error on %s: HTTP %s", request.url.path.split("/")[1], status)
        return failure(
            request, "The FHIR server did not answer as expected. Try again shortly.", 502
        )

    async def misconfigured(request: Request, exc: Exception) -> Response:
        # ConfigError texts name settings and resource ids, never patient data
        return failure(request, f"fhir-match is not configured for this server: {exc}", 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return failure(request, f"Not found: {detail}", 404)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("review app error (%s)", type(exc).__name__)
        return failure(request, "Something went wrong on our side. It has been logged.", 500)

    async def fresh_token(request: Request, call_next: RequestResponseEndpoint) -> Response:
        if smart is not None and not request.url.path.startswith("/static/"):
            await smart.keep_fresh(request)
        return await call_next(request)

    store = RedisStore(connection=Redis.from_url(settings.redis_url), prefix="fhir-match:review:")
    return Starlette(
        routes=[
            Route("/", pages.home),
            Route("/launch", launch),
            Route("/callback", callback),
            Route("/signout", sign_out, methods=["POST"]),
            Route("/studies/{study}", pages.study),
            Route("/studies/{study}/funnel", pages.funnel),
            Route("/studies/{study}/funnel.csv", pages.funnel_csv),
            Route("/studies/{study}/patients/{patient}", pages.patient),
            Route("/studies/{study}/patients/{patient}/decision", pages.decide, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(BaseHTTPMiddleware, dispatch=_security_headers),
            Middleware(
                SessionMiddleware,
                store=store,
                cookie_name="fhir_match_review",
                cookie_same_site="lax",
                cookie_https_only=settings.secure_cookies,
                lifetime=timedelta(hours=settings.session_hours),
            ),
            Middleware(SessionAutoloadMiddleware),
            Middleware(BaseHTTPMiddleware, dispatch=fresh_token),
        ],
        exception_handlers={
            LaunchError: launch_failed,
            ConfigError: misconfigured,
            FhirError: server_failed,
            LookupError: not_found,
            404: not_found,
            Exception: crashed,
        },
    )
