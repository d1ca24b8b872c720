"""The review app's settings: built once from the environment, like the rest of fhir-match."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_match.config import (
    DEFAULT_FHIR_BASE_URL,
    DEFAULT_REDIS_URL,
    FhirSettings,
    load_write_store,
    research_study_ids,
    same_server,
)
from fhir_match.errors import ConfigError

__all__ = ["ReviewSettings", "load_review_settings"]

DEFAULT_PORT = 8765
SESSION_HOURS = 8.0
"""A working day: after it the coordinator launches the app again."""


@dataclass(frozen=True)
class ReviewSettings:
    """Where the app listens, which FHIR server it reviews and how users sign in.

    With a ``client_id`` the app is a SMART on FHIR app and every page needs a launch.
    Without one it reviews a FHIR server that has no authorization (the local stack), and
    then it only listens on loopback, so nobody else can reach the data without a login.
    """

    fhir_base_url: str = DEFAULT_FHIR_BASE_URL
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public_url: str = ""
    """The address users reach the app at (the redirect URL registered with the EHR)."""
    client_id: str = ""
    auth_server: str = ""
    """An OpenID Connect issuer, for FHIR servers that publish no smart-configuration."""
    redis_url: str = DEFAULT_REDIS_URL
    """Sessions live in Redis: the browser holds only an opaque session id."""
    session_hours: float = SESSION_HOURS
    tag: str = ""
    """Review only a tagged population (synthetic data on a shared server)."""
    research_studies: tuple[tuple[str, str], ...] = ()
    """FHIR_MATCH_RESEARCH_STUDY_<STUDY> settings, as discovery reads them."""
    store: FhirSettings | None = None
    """The write store discovery writes the lists to (FHIR_WRITE_URL), reached with its own
    settings, server-side; None: the lists are in the EHR, read with the user's token."""
    time_zone: str = "UTC"
    """The site's IANA time zone: every time on the pages is shown in it."""

    def __post_init__(self) -> None:
        for name, url in (("FHIR_BASE_URL", self.fhir_base_url), ("public URL", self.base)):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")
        if not self.smart and not _loopback(self.host):
            raise ConfigError(
                f"without SMART sign-in (FHIR_MATCH_REVIEW_CLIENT_ID) the review app serves "
                f"patient data to anyone who can reach it, so it listens on loopback only, "
                f"not {self.host!r}"
            )
        if self.session_hours <= 0:
            raise ConfigError("FHIR_MATCH_REVIEW_SESSION_HOURS must be a positive number")
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"FHIR_MATCH_TIME_ZONE must be an IANA time zone such as Asia/Shanghai, "
                f"got {self.time_zone!r}"
            ) from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def smart(self) -> bool:
        return bool(self.client_id)

    @property
    def base(self) -> str:
        """The app's own address, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    @property
    def ehr_base(self) -> str:
        """The EHR's base when the lists are in a store of another server (their references
        to the EHR are absolute), else empty."""
        if self.store is None or same_server(self.store.base_url, self.fhir_base_url):
            return ""
        return self.fhir_base_url

    @property
    def secure_cookies(self) -> bool:
        return self.base.startswith("https://")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_review_settings(
    env: Mapping[str, str] | None = None, *, host: str | None = None, port: int | None = None
) -> ReviewSettings:
    """From FHIR_BASE_URL, FHIR_WRITE_*, REDIS_URL, FHIR_MATCH_TAG and the
    FHIR_MATCH_REVIEW_* variables (the README lists them); ``host``/``port`` are the
    command line's."""
    env = os.environ if env is None else env
    raw_port = env.get("FHIR_MATCH_REVIEW_PORT") or str(DEFAULT_PORT)
    try:
        env_port = int(raw_port)
    except ValueError:
        raise ConfigError(
            f"FHIR_MATCH_REVIEW_PORT must be a port number, got {raw_port!r}"
        ) from None
    try:
        hours = float(env.get("FHIR_MATCH_REVIEW_SESSION_HOURS") or SESSION_HOURS)
    except ValueError:
        raise ConfigError("FHIR_MATCH_REVIEW_SESSION_HOURS must be a number") from None
    return ReviewSettings(
        fhir_base_url=(env.get("FHIR_BASE_URL") or DEFAULT_FHIR_BASE_URL).rstrip("/"),
        host=host or env.get("FHIR_MATCH_REVIEW_HOST") or "127.0.0.1",
        port=port or env_port,
        public_url=env.get("FHIR_MATCH_REVIEW_URL", ""),
        client_id=env.get("FHIR_MATCH_REVIEW_CLIENT_ID", ""),
        auth_server=env.get("FHIR_MATCH_REVIEW_AUTH_SERVER", "").rstrip("/"),
        redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
        session_hours=hours,
        tag=env.get("FHIR_MATCH_TAG", ""),
        research_studies=research_study_ids(env),
        store=load_write_store(env),
        time_zone=env.get("FHIR_MATCH_TIME_ZONE") or "UTC",
    )
