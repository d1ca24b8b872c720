"""The error tree: every exception fhir-match raises is defined here.

Split by what the caller does next::

    FhirMatchError
    ├── ConfigError            stop before starting: settings are missing or wrong
    │   └── TranslationError   CQL did not translate to ELM; one file:line:col message per error
    ├── FhirError              a FHIR request failed; carries method, URL, status, outcome
    │   ├── TransientFhirError retry later: 408/429/5xx, timeouts, connection failures
    │   └── FatalFhirError     give up on this request: 4xx, a response that is not FHIR
    ├── DataError              skip this resource or file and record it; the run goes on
    └── EngineError            the CQL engine failed or could not start

Messages never carry resource content: patient data is PHI. A FhirError names the request
and the server's OperationOutcome text (diagnostics are the server's words about the request,
not the patient), and a DataError names where the bad input was and what rule it broke.
When a FHIR request needed a token first (SMART Backend Services), a failed token request is
a FhirError of its own, naming the token URL and the OAuth error; never a key or a token.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "DataError",
    "EngineError",
    "FatalFhirError",
    "FhirError",
    "FhirMatchError",
    "TransientFhirError",
    "TranslationError",
]


class FhirMatchError(Exception):
    """Base of every error fhir-match raises on purpose."""


class ConfigError(FhirMatchError):
    """The configuration cannot work; nothing was started."""


class TranslationError(ConfigError):
    """The CQL libraries do not translate; nothing can be evaluated until they are fixed.

    ``messages`` holds one ``path/to/File.cql:LINE:COL: message`` per translation error.
    """

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = tuple(messages)
        lines = "\n".join(f"  {m}" for m in self.messages)
        super().__init__(f"CQL translation failed ({len(self.messages)} error(s)):\n{lines}")


class FhirError(FhirMatchError):
    """A FHIR request failed.

    ``status`` is None when no HTTP response came back (timeout, refused connection).
    """

    def __init__(
        self, method: str, url: str, status: int | None, reason: str, outcome: str = ""
    ) -> None:
        # All fields in args, so the error survives pickling and Celery's result round trip.
        super().__init__(method, url, status, reason, outcome)
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.outcome = outcome

    def __str__(self) -> str:
        status_text = f"HTTP {self.status}" if self.status is not None else "no response"
        detail = f": {self.outcome}" if self.outcome else ""
        return f"{self.method} {self.url} failed ({status_text}, {self.reason}){detail}"


class TransientFhirError(FhirError):
    """Worth retrying: the server is busy, rate-limiting, or briefly unreachable."""


class FatalFhirError(FhirError):
    """Retrying the same request will not help."""


class DataError(FhirMatchError):
    """One piece of input is unusable; record it, skip it, and carry on."""


class EngineError(FhirMatchError):
    """The CQL engine process failed, could not start, or did not answer in time.

    One patient's evaluation error is not an EngineError: it comes back as data for that patient.
    """
