"""Fixtures for tests against the real FHIR server, Redis and Celery worker processes.

Nothing here is skipped when a service is missing: the tests fail and say which service to
start. Everything a test creates on the FHIR server carries a run tag and is deleted by it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from fhir_match.config import FhirSettings, Settings
from fhir_match.errors import FhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.seed import TAG_SYSTEM
from worker.process import WorkerNotReady, WorkerProcess, start_worker

from ..conftest import ROOT, VAR_LOG

READY_TIMEOUT_S = 60
KEYCLOAK_URL = os.environ.get("KEYCLOAK_URL") or (
    f"http://127.0.0.1:{os.environ.get('KEYCLOAK_PORT') or 8180}"
)
"""The local Keycloak of the SMART tests, where scripts/keycloak starts it."""


@pytest.fixture(scope="session")
def fhir(settings: Settings) -> Iterator[FhirClient]:
    with FhirClient(settings.fhir) as client:
        try:
            client.capabilities()
        except FhirError as exc:
            pytest.fail(f"no FHIR server at {client.base_url} (scripts/stack start): {exc}")
        yield client


@dataclass
class RunTag:
    """A meta.tag unique to one test; cleanup deletes what carries it, type by type."""

    code: str
    types: set[str] = field(default_factory=set)

    @property
    def coding(self) -> dict[str, str]:
        return {"system": TAG_SYSTEM, "code": self.code}

    @property
    def token(self) -> str:
        return f"{TAG_SYSTEM}|{self.code}"

    def mark(self, resource: dict[str, object]) -> dict[str, object]:
        """Tag a resource's JSON in place and remember its type for cleanup."""
        self.types.add(str(resource["resourceType"]))
        meta = resource.setdefault("meta", {})
        assert isinstance(meta, dict)
        meta.setdefault("tag", []).append(self.coding)
        return resource


@pytest.fixture
def run_tag(fhir: FhirClient) -> Iterator[RunTag]:
    tag = RunTag(f"test-{uuid.uuid4().hex[:12]}")
    yield tag
    for resource_type in sorted(tag.types):
        fhir.delete_matching(Search(resource_type).where("_tag", tag.token), cascade=True)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> redis.Redis:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {settings.redis_url} (scripts/stack start): {exc}")
    return client


@pytest.fixture(scope="session")
def celery_worker(redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    """A real Celery worker in its own process, on a queue of its own so no other worker
    (the stack's, say) can take these tests' tasks. Its log goes to var/log/, where the log
    scan (tests/conftest.py) reads it."""
    VAR_LOG.mkdir(parents=True, exist_ok=True)
    with (VAR_LOG / "test-worker.log").open("ab") as log:
        try:
            worker = start_worker("test", stderr=log, ready_timeout_s=READY_TIMEOUT_S)
        except WorkerNotReady as exc:
            pytest.fail(f"the test worker: {exc} (its log: var/log/test-worker.log)")
        try:
            yield worker
        finally:
            worker.stop(timeout_s=30)


@pytest.fixture(scope="session")
def write_store() -> Iterator[FhirClient]:
    """A second HAPI FHIR server of the tests' own, as a hospital's write store: the stack's
    launcher on a free port, accepting references to the EHR's resources, its database in a
    folder under var/ that goes with it. Started once (40-75 s) and stopped at the end; the
    shared server is never touched."""
    from .test_restart import OwnHapi, _free_port

    port = _free_port()
    data = ROOT / "var" / f"test-write-store-{port}"
    data.mkdir(parents=True)
    server = OwnHapi(port, data, env={"FHIR_ALLOW_EXTERNAL_REFERENCES": "true"})
    try:
        server.start()
        with FhirClient(FhirSettings(base_url=server.base_url)) as client:
            yield client
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
