"""Settings: built once, at the edge, from the environment; passed down as plain frozen data."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fhir_match.errors import ConfigError
from fhir_match.records import RECORD_TYPES
from fhir_match.signing import signing_key

__all__ = [
    "COHORT_SOURCES",
    "DEFAULT_BACKEND_SCOPE",
    "DEFAULT_FHIR_BASE_URL",
    "DEFAULT_READ_SCOPE",
    "DEFAULT_REDIS_URL",
    "DEFAULT_WRITE_SCOPE",
    "PROJECT_DIR",
    "READ_PREFIX",
    "WRITE_PREFIX",
    "AuthMethod",
    "BackendServices",
    "CohortSetting",
    "FhirSettings",
    "ForeignLinks",
    "Settings",
    "load_settings",
    "load_write_store",
    "mask_url_password",
    "research_study_ids",
    "research_study_setting",
    "same_server",
    "url_setting",
]

PROJECT_DIR = Path(__file__).resolve().parents[2]
"""The checkout: cql/, mappings/ and node/ are read from here (fhir-match runs from source)."""

DEFAULT_FHIR_BASE_URL = "http://127.0.0.1:8080/fhir"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_SCHEDULE = "0 2 * * *"
"""Discovery runs nightly at 02:00 UTC unless FHIR_MATCH_SCHEDULE says otherwise."""
DEFAULT_FULL_EVERY_DAYS = 7.0
DEFAULT_MAX_WAIT_S = 120.0
"""Longest total time one request may spend waiting between retries."""
DEFAULT_MAX_CONCURRENCY = 4
"""Requests one client has in flight at once: the server answers them in parallel, and four
keep a shared server's load modest."""
DEFAULT_TASK_TIME_LIMIT_S = 1800.0
"""Half an hour: a cohort search or a run's finish on a large, slow server, with retries."""
DEFAULT_STALL_S = 120.0
"""Two minutes without a batch done before the watchdog looks closer: it then asks the
workers which batches they hold, so a batch running long, or queued behind another run,
is never taken for lost."""
DEFAULT_WATCH_EVERY_S = 60.0

AuthMethod = Literal["none", "basic", "bearer", "smart-backend"]
ForeignLinks = Literal["refuse", "rewrite"]
_FOREIGN_LINKS = ("refuse", "rewrite")
_AUTH_METHODS = ("none", "basic", "bearer", "smart-backend")
_MASK = "***"

_WRITE_TYPES = ("ResearchStudy", "ResearchSubject", "Provenance", "Group")
"""What discovery writes back, and reads again on the next run."""
_READ_TYPES = (*(kind for kind in RECORD_TYPES if kind not in _WRITE_TYPES), "Medication")
"""What a study's rules may read: the patient-compartment types of a record, and the
Medications they cite."""
DEFAULT_READ_SCOPE = " ".join(
    f"system/{kind}.rs" for kind in (*RECORD_TYPES, "Medication", "ResearchStudy")
)
"""SMART v2 scopes on an EHR that a separate write store spares all writing: read only (a
record's ResearchSubjects and their studies too: the rules may ask about other trials)."""
DEFAULT_WRITE_SCOPE = " ".join(f"system/{kind}.crus" for kind in _WRITE_TYPES)
"""SMART v2 scopes on the write store: create, read, update and search what discovery
writes (and reads on the next run); never delete."""
DEFAULT_BACKEND_SCOPE = " ".join(
    [f"system/{kind}.rs" for kind in _READ_TYPES] + [f"system/{kind}.crus" for kind in _WRITE_TYPES]
)
"""SMART v2 scopes for unattended discovery reading and writing one server: read and search
the record types, create, read, update and search what it writes; never delete."""

READ_PREFIX = "FHIR_"
WRITE_PREFIX = "FHIR_WRITE_"
"""The write store's settings: the read server's names with this prefix (FHIR_WRITE_TOKEN)."""


@dataclass(frozen=True)
class BackendServices:
    """fhir-match registered with the EHR as a SMART Backend Services client
    (client_credentials with a ``private_key_jwt`` client assertion)."""

    client_id: str
    private_key: str = field(repr=False)
    """The PEM text; a secret, masked wherever settings are shown or recorded."""
    private_key_file: str
    key_id: str
    """The ``kid`` of every assertion: FHIR_KEY_ID, else the key's JWK thumbprint."""
    algorithm: str
    """RS384 (RSA key) or ES384 (EC P-384 key)."""
    scope: str = DEFAULT_BACKEND_SCOPE
    token_url: str = ""
    """Empty: found in the FHIR server's ``.well-known/smart-configuration``."""

    prefix: str = READ_PREFIX
    """Where these settings come from (FHIR_ or FHIR_WRITE_), to name them in messages."""

    def __post_init__(self) -> None:
        if self.token_url and not _is_http_url(self.token_url):
            raise ConfigError(
                f"{self.prefix}TOKEN_URL must be an http(s) URL, got {self.token_url!r}"
            )
        if not self.scope.strip():
            raise ConfigError(f"{self.prefix}SCOPE must name at least one scope")


@dataclass(frozen=True)
class FhirSettings:
    """How to reach one FHIR server."""

    base_url: str = DEFAULT_FHIR_BASE_URL
    auth: AuthMethod = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_rate: float = 0.0
    """Requests per second the process sends this server, retries included; 0: no limit.
    A hospital's API gateway counts a client's requests and answers 429 past its quota."""
    backend: BackendServices | None = None
    """The SMART Backend Services registration, when ``auth`` is ``smart-backend``."""
    foreign_links: ForeignLinks = "refuse"
    """What to do with a URL the server hands out (a next link, an export's status or file
    URL) on another scheme, host or port than ``base_url``: refuse it, or, for a server
    behind a gateway that names its internal address, send it to ``base_url`` instead."""
    prefix: str = READ_PREFIX
    """Where these settings come from (FHIR_ or FHIR_WRITE_), to name them in messages."""

    def __post_init__(self) -> None:
        p = self.prefix
        if self.foreign_links not in _FOREIGN_LINKS:
            raise ConfigError(
                f"{p}FOREIGN_LINKS must be one of {', '.join(_FOREIGN_LINKS)}, "
                f"got {self.foreign_links!r}"
            )
        if not _is_http_url(self.base_url):
            raise ConfigError(f"{url_setting(p)} must be an http(s) URL, got {self.base_url!r}")
        if self.auth == "basic" and not (self.username and self.password):
            raise ConfigError(f"{p}AUTH=basic needs {p}USERNAME and {p}PASSWORD")
        if self.auth == "bearer" and not self.token:
            raise ConfigError(f"{p}AUTH=bearer needs {p}TOKEN")
        if (self.auth == "smart-backend") != (self.backend is not None):
            raise ConfigError(f"{p}AUTH=smart-backend needs {p}CLIENT_ID and {p}PRIVATE_KEY_FILE")
        if self.timeout_s <= 0:
            raise ConfigError(f"{p}TIMEOUT must be a positive number of seconds")
        if self.max_retries < 0:
            raise ConfigError(f"{p}MAX_RETRIES must be 0 or more")
        if self.max_concurrency < 1:
            raise ConfigError(f"{p}MAX_CONCURRENCY must be 1 or more")
        if self.max_rate < 0:
            raise ConfigError(f"{p}MAX_RATE must be 0 (no limit) or a positive number")

    def with_base_url(self, base_url: str) -> FhirSettings:
        """The same settings for another server (a --fhir-url flag)."""
        return replace(self, base_url=base_url)


COHORT_SOURCES = ("auto", "search", "group-export", "patient-list")
"""How discovery finds a study's cohort (README, "Connecting to a hospital's EHR")."""


@dataclass(frozen=True)
class CohortSetting:
    """How one study's cohort is found on the server: FHIR_MATCH_COHORT_SOURCE,
    FHIR_MATCH_COHORT_GROUP and FHIR_MATCH_PATIENT_LIST, each also per study with a
    ``_<STUDY>`` suffix (FHIR_MATCH_COHORT_GROUP_KN5501)."""

    source: str = "auto"
    """auto: group-export when a group is named and the server exports groups, patient-list
    when a group or list is named, else search."""
    group: str = ""
    """The population Group the hospital provisions (an id): exported, or read as a registry."""
    patient_list: str = ""
    """A registry: ``Group/<id>``, ``List/<id>``, or a file of patient ids."""

    def __post_init__(self) -> None:
        _check_cohort_value("FHIR_MATCH_COHORT_SOURCE", self.source)
        _check_cohort_value("FHIR_MATCH_COHORT_GROUP", self.group)
        if self.source == "group-export" and not self.group:
            raise ConfigError("FHIR_MATCH_COHORT_SOURCE=group-export needs FHIR_MATCH_COHORT_GROUP")
        if self.source == "patient-list" and not self.registry:
            raise ConfigError(
                "FHIR_MATCH_COHORT_SOURCE=patient-list needs FHIR_MATCH_PATIENT_LIST "
                "(Group/<id>, List/<id> or a file) or FHIR_MATCH_COHORT_GROUP"
            )

    @property
    def registry(self) -> str:
        """The registry a patient-list run reads: the list named, else the population group."""
        return self.patient_list or (f"Group/{self.group}" if self.group else "")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, recorded with each run (secrets masked)."""

    fhir: FhirSettings = field(default_factory=FhirSettings)
    """The EHR: the server discovery reads."""
    write_store: FhirSettings | None = None
    """Where discovery writes its list (FHIR_WRITE_URL and its own FHIR_WRITE_ credentials),
    when not the server it reads; use :attr:`store`."""
    redis_url: str = DEFAULT_REDIS_URL
    studies: tuple[str, ...] = ()
    """Studies the schedule runs; empty: every study configured in studies/."""
    schedule: str = DEFAULT_SCHEDULE
    """When scheduled discovery runs: a cron expression (minute hour day month weekday), UTC."""
    full_every_days: float = DEFAULT_FULL_EVERY_DAYS
    """A scheduled run is full when the last full one is older than this, else incremental."""
    queue: str = "celery"
    """The Celery queue runs are sent to and workers take them from."""
    tag: str = ""
    """Scheduled runs only look at resources with this run tag (test data on a shared
    server, such as the public sandbox); empty: the whole server."""
    task_time_limit_s: float = DEFAULT_TASK_TIME_LIMIT_S
    """The longest one task may run (a batch gets a third): past it the task is stopped,
    and the broker hands a task whose worker died to another worker a little after it."""
    stall_s: float = DEFAULT_STALL_S
    """A run with no progress for this long is taken up by the watchdog."""
    watch_every_s: float = DEFAULT_WATCH_EVERY_S
    """How often beat sends the watchdog."""
    research_studies: tuple[tuple[str, str], ...] = ()
    """(setting name, ResearchStudy id) from FHIR_MATCH_RESEARCH_STUDY_<STUDY>: the study
    resource to use when several on the server carry the study's registry identifier."""

    cohort_settings: tuple[tuple[str, str], ...] = ()
    """Every FHIR_MATCH_COHORT_SOURCE, _COHORT_GROUP and _PATIENT_LIST set, as (name, value),
    with or without a study suffix: :meth:`cohort` resolves them for a study."""

    def cohort(self, study_id: str) -> CohortSetting:
        """How the study's cohort is found: its own settings, else the deployment's."""
        given = dict(self.cohort_settings)
        suffix = _study_suffix(study_id)

        def value(name: str) -> str:
            return given.get(f"{name}_{suffix}") or given.get(name, "")

        return CohortSetting(
            source=value("FHIR_MATCH_COHORT_SOURCE") or "auto",
            group=value("FHIR_MATCH_COHORT_GROUP").removeprefix("Group/"),
            patient_list=value("FHIR_MATCH_PATIENT_LIST"),
        )

    @property
    def store(self) -> FhirSettings:
        """The server fhir-match writes to and reads its list from: the write store, else
        the read server itself (whatever base URL a flag gave it)."""
        return self.write_store or self.fhir

    @property
    def ehr_base(self) -> str:
        """The EHR's base URL when the store is another server (references written there
        to the EHR's resources are absolute), else empty (relative, as on one server)."""
        return "" if same_server(self.store.base_url, self.fhir.base_url) else self.fhir.base_url

    def research_study(self, study_id: str) -> str:
        """The ResearchStudy id configured for a study, or empty: find it on the server."""
        return dict(self.research_studies).get(research_study_setting(study_id), "")

    def __post_init__(self) -> None:
        if len(self.schedule.split()) != 5:
            raise ConfigError(
                f"FHIR_MATCH_SCHEDULE must be a cron expression of 5 fields, got {self.schedule!r}"
            )
        if self.full_every_days <= 0:
            raise ConfigError("FHIR_MATCH_FULL_EVERY_DAYS must be a positive number of days")
        for name, value in (
            ("FHIR_MATCH_TASK_TIME_LIMIT", self.task_time_limit_s),
            ("FHIR_MATCH_STALL_SECONDS", self.stall_s),
            ("FHIR_MATCH_WATCH_SECONDS", self.watch_every_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")

    def as_json(self) -> dict[str, object]:
        """A JSON-ready copy with every secret masked, fit to log or store with a run."""
        data = asdict(self)
        for server in (data["fhir"], data["write_store"]):
            if server is None:
                continue
            for secret in ("password", "token"):
                if server[secret]:
                    server[secret] = _MASK
            if server["backend"]:
                server["backend"]["private_key"] = _MASK
        data["redis_url"] = mask_url_password(self.redis_url)
        return data


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def same_server(one: str, other: str) -> bool:
    """Two base URLs name the same FHIR server (a trailing slash aside)."""
    return one.rstrip("/") == other.rstrip("/")


def url_setting(prefix: str) -> str:
    """The name of the setting holding a server's base URL: FHIR_BASE_URL, FHIR_WRITE_URL."""
    return "FHIR_BASE_URL" if prefix == READ_PREFIX else f"{prefix}URL"


def mask_url_password(url: str) -> str:
    """The URL with its password (if any) masked, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", f":{_MASK}@", 1)


_RESEARCH_STUDY = "FHIR_MATCH_RESEARCH_STUDY_"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _study_suffix(study_id: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", study_id.upper())


def research_study_setting(study_id: str) -> str:
    """The environment variable naming a study's ResearchStudy id (kn5501:
    FHIR_MATCH_RESEARCH_STUDY_KN5501)."""
    return _RESEARCH_STUDY + _study_suffix(study_id)


_COHORT_SETTINGS = (
    "FHIR_MATCH_COHORT_SOURCE",
    "FHIR_MATCH_COHORT_GROUP",
    "FHIR_MATCH_PATIENT_LIST",
)


def cohort_settings(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The cohort settings set in ``env``, checked as far as they can be without a study."""
    found = tuple(
        (name, value.strip())
        for name, value in sorted(env.items())
        if name.startswith(_COHORT_SETTINGS) and value.strip()
    )
    for name, value in found:
        _check_cohort_value(name, value)
    return found


def _check_cohort_value(name: str, value: str) -> None:
    if name.startswith("FHIR_MATCH_COHORT_SOURCE") and value not in COHORT_SOURCES:
        raise ConfigError(f"{name} must be one of {', '.join(COHORT_SOURCES)}, got {value!r}")
    group = value.removeprefix("Group/")
    if name.startswith("FHIR_MATCH_COHORT_GROUP") and group and not _FHIR_ID.fullmatch(group):
        raise ConfigError(f"{name} must be a Group id, got {value!r}")


def research_study_ids(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Every FHIR_MATCH_RESEARCH_STUDY_<STUDY> set, as (name, id); a value may be the id or
    ``ResearchStudy/<id>``."""
    found = []
    for name, raw in sorted(env.items()):
        if not name.startswith(_RESEARCH_STUDY) or not raw.strip():
            continue
        value = raw.strip().removeprefix("ResearchStudy/")
        if not _FHIR_ID.fullmatch(value):
            raise ConfigError(f"{name} must be a ResearchStudy id, got {raw!r}")
        found.append((name, value))
    return tuple(found)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _auth(env: Mapping[str, str], p: str) -> AuthMethod:
    raw = env.get(f"{p}AUTH", "").strip().lower()
    if raw:
        if raw not in _AUTH_METHODS:
            raise ConfigError(f"{p}AUTH must be one of {', '.join(_AUTH_METHODS)}, got {raw!r}")
        return raw  # type: ignore[return-value]
    # No explicit method: infer it from which secret is present, if only one method's is.
    present: list[AuthMethod] = []
    if env.get(f"{p}TOKEN"):
        present.append("bearer")
    if env.get(f"{p}USERNAME"):
        present.append("basic")
    if env.get(f"{p}CLIENT_ID") or env.get(f"{p}PRIVATE_KEY_FILE"):
        # Either one: a missing other half is then named, not silently no authentication.
        present.append("smart-backend")
    if len(present) > 1:
        raise ConfigError(
            f"credentials for {' and '.join(present)} are set: say which to use with {p}AUTH"
        )
    return present[0] if present else "none"


def _backend(env: Mapping[str, str], p: str, default_scope: str) -> BackendServices:
    client_id = env.get(f"{p}CLIENT_ID", "").strip()
    if not client_id:
        raise ConfigError(f"SMART Backend Services ({p}AUTH=smart-backend) needs {p}CLIENT_ID")
    path = env.get(f"{p}PRIVATE_KEY_FILE", "").strip()
    if not path:
        raise ConfigError(
            f"SMART Backend Services ({p}AUTH=smart-backend) needs {p}PRIVATE_KEY_FILE, "
            "a PEM private key"
        )
    try:
        pem = Path(path).read_text(encoding="ascii")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{p}PRIVATE_KEY_FILE {path!r} cannot be read: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}PRIVATE_KEY_FILE {path!r} is not a PEM file") from None
    try:
        key = signing_key(pem, env.get(f"{p}KEY_ID", "").strip())
    except ValueError as exc:
        raise ConfigError(f"{p}PRIVATE_KEY_FILE {path!r}: {exc}") from None
    return BackendServices(
        client_id=client_id,
        private_key=pem,
        private_key_file=path,
        key_id=key.kid,
        algorithm=key.alg,
        scope=" ".join((env.get(f"{p}SCOPE") or default_scope).split()),
        token_url=env.get(f"{p}TOKEN_URL", "").strip(),
        prefix=p,
    )


def _fhir_settings(env: Mapping[str, str], p: str, base_url: str, scope: str) -> FhirSettings:
    """One server's settings, from the variables under prefix ``p`` (FHIR_, FHIR_WRITE_)."""
    auth = _auth(env, p)
    return FhirSettings(
        base_url=base_url,
        auth=auth,
        username=env.get(f"{p}USERNAME", ""),
        password=env.get(f"{p}PASSWORD", ""),
        token=env.get(f"{p}TOKEN", ""),
        timeout_s=_number(env, f"{p}TIMEOUT", DEFAULT_TIMEOUT_S),
        max_retries=int(_number(env, f"{p}MAX_RETRIES", DEFAULT_MAX_RETRIES)),
        max_wait_s=_number(env, f"{p}MAX_WAIT", DEFAULT_MAX_WAIT_S),
        max_concurrency=int(_number(env, f"{p}MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY)),
        max_rate=_number(env, f"{p}MAX_RATE", 0.0),
        backend=_backend(env, p, scope) if auth == "smart-backend" else None,
        foreign_links=env.get(f"{p}FOREIGN_LINKS", "").strip().lower() or "refuse",  # type: ignore[arg-type]
        prefix=p,
    )


def load_write_store(env: Mapping[str, str]) -> FhirSettings | None:
    """The write store's settings (FHIR_WRITE_URL and the FHIR_WRITE_ credentials), or None
    when FHIR_WRITE_URL is unset: the read server is then the store, with its settings."""
    url = env.get(url_setting(WRITE_PREFIX), "").strip()
    return _fhir_settings(env, WRITE_PREFIX, url, DEFAULT_WRITE_SCOPE) if url else None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from environment variables (the README lists them)."""
    env = os.environ if env is None else env
    store = load_write_store(env)
    fhir = _fhir_settings(
        env,
        READ_PREFIX,
        env.get("FHIR_BASE_URL") or DEFAULT_FHIR_BASE_URL,
        DEFAULT_READ_SCOPE if store else DEFAULT_BACKEND_SCOPE,
    )
    studies = tuple(s.strip() for s in env.get("FHIR_MATCH_STUDIES", "").split(",") if s.strip())
    return Settings(
        fhir=fhir,
        write_store=store,
        redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
        studies=studies,
        schedule=env.get("FHIR_MATCH_SCHEDULE") or DEFAULT_SCHEDULE,
        full_every_days=_number(env, "FHIR_MATCH_FULL_EVERY_DAYS", DEFAULT_FULL_EVERY_DAYS),
        queue=env.get("FHIR_MATCH_QUEUE") or "celery",
        tag=env.get("FHIR_MATCH_TAG", ""),
        task_time_limit_s=_number(env, "FHIR_MATCH_TASK_TIME_LIMIT", DEFAULT_TASK_TIME_LIMIT_S),
        stall_s=_number(env, "FHIR_MATCH_STALL_SECONDS", DEFAULT_STALL_S),
        watch_every_s=_number(env, "FHIR_MATCH_WATCH_SECONDS", DEFAULT_WATCH_EVERY_S),
        research_studies=research_study_ids(env),
        cohort_settings=cohort_settings(env),
    )
